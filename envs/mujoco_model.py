"""Differentiable one-step models of gymnasium's MuJoCo locomotion envs (v5).

Supported: HalfCheetah-v5, Hopper-v5, Walker2d-v5 and Swimmer-v5 (planar robots with hinge and
slide joints only, ``nq == nv``)::

    import gymnasium as gym
    from hybrid_pg_envs.mujoco_model import MujocoDifferentiableWrapper
    from hybrid_pg_envs.differentiable import find_differentiable_model

    env = MujocoDifferentiableWrapper(gym.make("HalfCheetah-v5"))
    model = find_differentiable_model(env)            # also through Monitor and SB3 VecEnvs
    next_obs, reward = model.step(obs, action)        # (B, obs_dim), (B, act_dim) -> (B, obs_dim), (B,)

Forward pass: the real simulator. Each sample's MuJoCo state is rebuilt from its observation
(:meth:`MujocoStepModel.obs_to_state`), ``ctrl`` is set to the action and the model steps
``frame_skip`` times, exactly as ``MujocoEnv.do_simulation``. Backward pass: the exact local
Jacobians ``d(next_obs, dx)/d(obs, action)`` of that frame-skipped step, computed in the forward and
applied to the cotangent by a ``torch.autograd.Function`` (so gradients flow w.r.t. both the action
and the observation, as k-step model returns need). Jacobians come from

* ``"transition"``: ``mujoco.mjd_transitionFD`` at every sub-step, chained over ``frame_skip``
  (``A = A_f ... A_1``, ``B = sum_k A_f ... A_{k+1} B_k``); Euler/implicit integrators only (MuJoCo
  refuses RK4), i.e. HalfCheetah;
* ``"rollout"``: central finite differences of the whole frame-skipped step, all ``B * (1 + 2 *
  (2 nv + nu))`` perturbed initial states stepped in C by one ``mujoco.rollout.rollout`` call; any
  integrator (Hopper, Walker2d and Swimmer use RK4).

``"auto"`` picks ``"transition"`` where MuJoCo allows it, else ``"rollout"``. Positions are
perturbed in the tangent space; with hinge and slide joints only (checked) ``mj_integratePos`` is a
plain addition, so the perturbation is added directly.

Observation <-> state. These envs leave the root position out of the observation
(``exclude_current_positions_from_observation``: x, and y for Swimmer). Their dynamics and rewards
are translation-invariant along those axes, so the model sets them to 0 and reports the x
displacement ``dx`` instead. Hopper and Walker2d clip the *observed* ``qvel`` to [-10, 10]: the model
takes an observed velocity at the bound as the true velocity (it cannot know more), so its
prediction for such a sample is that of a different state; and a clipped component of ``next_obs``
has a zero derivative (as ``env.step`` has). :meth:`MujocoStepModel.clipped` flags both cases per
sample and ``step`` stores the flags of its last call in ``last_clipped``. The solver warm-start is
not part of the observation: the model starts every step from a zero warm-start, which changes the
result only within the constraint solver's tolerance (exactly nothing without contacts).

Reward (torch, differentiable): ``forward_reward_weight * dx / dt - ctrl_cost_weight * |action|^2 +
healthy_reward * is_healthy(next state)``, with the health indicator held constant locally (it is a
0/1 step function). ``terminal(next_obs)`` is the env's unhealthy test as 0/1 when
``terminate_when_unhealthy`` (never for HalfCheetah and Swimmer); from an observation it sees
clipped velocities, so Hopper's ``healthy_state_range`` check on |qvel| > 100 cannot fire there
(the reward's health test in ``step`` uses the true, unclipped next state).

All reward weights, ranges and ``frame_skip`` are read from the *unwrapped env* (its actual
constructor kwargs) and the ``MjModel`` is copied, so the model is a snapshot of the env's physics
(the protocol's convention; see :mod:`.differentiable`).

Units: the model works in raw env units (observations, actions, rewards as ``env.step`` returns
them). Under SB3's ``VecNormalize`` the training data are normalised; un-normalising observations
and rescaling rewards around the model is the library's job, not this file's.

Limitations: contacts make the step only piecewise smooth (soft, but stiff): the Jacobian is the
exact local one of the simulator, which can change quickly across contact events, and finite
differences of width ``fd_eps`` smooth over features narrower than that. Costs per sample are
``(1 + 2 (2 nv + nu)) * frame_skip`` simulator sub-steps with central differences (``1 + 2 nu`` of
them for the action columns alone, all a one-step pathwise gradient needs), about half with forward
differences (``fd_centered=False``); :func:`jacobian_cost` measures them (``python -m
hybrid_pg_envs.mujoco_model`` prints them for every supported env).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import gymnasium as gym
import mujoco
import numpy as np
import torch as th
from mujoco import rollout as mj_rollout

from .differentiable import DifferentiableModel

JACOBIAN_METHODS = ("auto", "transition", "rollout")


@dataclass(frozen=True)
class _EnvSpec:
    """What differs between the supported envs: the class name, how many leading qpos entries the
    observation drops, and whether it clips the observed qvel."""

    skipped: int
    qvel_clip: Optional[float]


_SUPPORTED: Dict[str, _EnvSpec] = {
    "HalfCheetahEnv": _EnvSpec(skipped=1, qvel_clip=None),
    "HopperEnv": _EnvSpec(skipped=1, qvel_clip=10.0),
    "Walker2dEnv": _EnvSpec(skipped=1, qvel_clip=10.0),
    "SwimmerEnv": _EnvSpec(skipped=2, qvel_clip=None),
}


def _env_spec(env: gym.Env) -> _EnvSpec:
    base = env.unwrapped
    name = type(base).__name__
    module = type(base).__module__
    if name not in _SUPPORTED or not module.endswith("_v5"):
        raise TypeError(f"no differentiable MuJoCo model for {name} ({module}); supported: the v5 envs {sorted(_SUPPORTED)}")
    return _SUPPORTED[name]


def _fullphysics_offsets(model: mujoco.MjModel) -> Tuple[int, int, int]:
    """(size, qpos offset, qvel offset) of an ``mjSTATE_FULLPHYSICS`` state vector (components are
    stored in the order of their bits)."""
    full = int(mujoco.mjtState.mjSTATE_FULLPHYSICS)
    below_qpos = full & (int(mujoco.mjtState.mjSTATE_QPOS) - 1)
    below_qvel = full & (int(mujoco.mjtState.mjSTATE_QVEL) - 1)
    size = mujoco.mj_stateSize(model, full)
    return size, mujoco.mj_stateSize(model, below_qpos), mujoco.mj_stateSize(model, below_qvel)


class MujocoStepModel(DifferentiableModel):
    """One ``env.step`` of a MuJoCo locomotion env as a differentiable torch model (see the module
    docstring). Build it with :meth:`from_env` (or ``MujocoDifferentiableWrapper``).

    :param mj_model: the simulator (copied).
    :param frame_skip: simulator steps per env step.
    :param skipped: leading qpos entries left out of the observation (0 if the env includes them).
    :param qvel_clip: bound of the observed |qvel| (None: not clipped).
    :param healthy_z_range, healthy_angle_range, healthy_state_range: the env's health test (None:
        no test; the health indicator is then 1).
    :param jacobian: ``"auto"``, ``"transition"`` (``mjd_transitionFD``, not RK4) or ``"rollout"``.
    :param fd_eps: finite-difference step of the Jacobians.
    :param fd_centered: central differences (error O(fd_eps^2); ``1 + 2 d`` perturbed steps for ``d``
        columns) or forward differences (error O(fd_eps), ``1 + d`` steps: about half the cost).
    :param nthread: threads of ``mujoco.rollout`` (1: no thread pool).
    """

    #: the forward runs the simulator in numpy, so ``torch.func.vmap`` cannot trace it (the library's
    #: per-sample statistics then use their outer-product path, exact because future actions of a
    #: k-step return carry no policy gradient)
    supports_vmap = False
    #: not an unbiased pathwise source: the local Jacobian of a step through contacts is not the
    #: gradient of the expected return (the simulator's step is non-smooth there; Suh et al. 2022),
    #: so the weight rule treats this model like a learned source and backs off when it disagrees
    #: with the score gradient
    exact = False

    def __init__(
        self,
        mj_model: mujoco.MjModel,
        *,
        frame_skip: int,
        forward_reward_weight: float,
        ctrl_cost_weight: float,
        healthy_reward: float = 0.0,
        terminate_when_unhealthy: bool = False,
        healthy_z_range: Optional[Tuple[float, float]] = None,
        healthy_angle_range: Optional[Tuple[float, float]] = None,
        healthy_state_range: Optional[Tuple[float, float]] = None,
        skipped: int = 1,
        qvel_clip: Optional[float] = None,
        jacobian: str = "auto",
        fd_eps: float = 1e-6,
        fd_centered: bool = True,
        nthread: int = 1,
    ):
        super().__init__()
        if mj_model.nq != mj_model.nv or mj_model.na != 0:
            raise ValueError("MujocoStepModel needs hinge/slide joints only (nq == nv) and no actuator activations")
        if jacobian not in JACOBIAN_METHODS:
            raise ValueError(f"jacobian must be one of {JACOBIAN_METHODS}, got {jacobian!r}")
        rk4 = mj_model.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4
        if jacobian == "auto":
            jacobian = "rollout" if rk4 else "transition"
        elif jacobian == "transition" and rk4:
            raise ValueError("mjd_transitionFD does not support the RK4 integrator; use jacobian='rollout'")
        self.mj_model = copy.copy(mj_model)
        self.frame_skip = int(frame_skip)
        self.skipped = int(skipped)
        self.qvel_clip = None if qvel_clip is None else float(qvel_clip)
        self.healthy_z_range = healthy_z_range
        self.healthy_angle_range = healthy_angle_range
        self.healthy_state_range = healthy_state_range
        self.terminate_when_unhealthy = bool(terminate_when_unhealthy)
        self.jacobian_method = jacobian
        self.fd_eps = float(fd_eps)
        self.fd_centered = bool(fd_centered)
        self.nthread = int(nthread)
        dt = mj_model.opt.timestep * self.frame_skip
        for name, value in dict(
            forward_reward_weight=forward_reward_weight,
            ctrl_cost_weight=ctrl_cost_weight,
            healthy_reward=healthy_reward,
            dt=dt,
        ).items():
            self.register_buffer(name, th.tensor(float(value), dtype=th.float64))
        self.nq, self.nv, self.nu = mj_model.nq, mj_model.nv, mj_model.nu
        self.obs_dim = self.nq - self.skipped + self.nv
        self.last_clipped: Optional[th.Tensor] = None
        self._datas: List[mujoco.MjData] = []
        self._last_state: Tuple[np.ndarray, np.ndarray] = (np.zeros((0, self.nq)), np.zeros((0, self.nv)))

    # ------------------------------------------------------------------------------------------
    # construction, pickling, parameters
    # ------------------------------------------------------------------------------------------

    @classmethod
    def from_env(cls, env: gym.Env, **options: Any) -> "MujocoStepModel":
        """The model of ``env`` (wrapped or not) with the unwrapped env's own kwargs; ``options``:
        ``jacobian``, ``fd_eps``, ``fd_centered``, ``nthread``."""
        spec = _env_spec(env)
        # a gymnasium MujocoEnv subclass: its model, frame_skip and reward weights are not on gym.Env's type
        base: Any = env.unwrapped
        if not getattr(base, "_exclude_current_positions_from_observation", True):
            spec = _EnvSpec(skipped=0, qvel_clip=spec.qvel_clip)
        return cls(
            base.model,
            frame_skip=base.frame_skip,
            forward_reward_weight=base._forward_reward_weight,
            ctrl_cost_weight=base._ctrl_cost_weight,
            healthy_reward=getattr(base, "_healthy_reward", 0.0),
            terminate_when_unhealthy=getattr(base, "_terminate_when_unhealthy", False),
            healthy_z_range=getattr(base, "_healthy_z_range", None),
            healthy_angle_range=getattr(base, "_healthy_angle_range", None),
            healthy_state_range=getattr(base, "_healthy_state_range", None),
            skipped=spec.skipped,
            qvel_clip=spec.qvel_clip,
            **options,
        )

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_datas"] = []  # MjData is scratch space; rebuilt on demand
        return state

    def parameters_dict(self) -> Dict[str, Any]:
        """Reward weights plus the simulator fields a parameter adapter may change (gravity, masses,
        friction, gears), so sub-envs with different physics do not pass for one model."""
        values = super().parameters_dict()
        m = self.mj_model
        values.update(
            gravity=m.opt.gravity.tolist(),
            body_mass=m.body_mass.tolist(),
            geom_friction=m.geom_friction.tolist(),
            actuator_gear=m.actuator_gear.tolist(),
            frame_skip=self.frame_skip,
        )
        return values

    def _data(self, n: int) -> List[mujoco.MjData]:
        while len(self._datas) < n:
            self._datas.append(mujoco.MjData(self.mj_model))
        return self._datas[:n]

    # ------------------------------------------------------------------------------------------
    # observation <-> state
    # ------------------------------------------------------------------------------------------

    def obs_to_state(self, obs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(qpos, qvel) of observations (B, obs_dim), float64; the skipped root coordinates are 0."""
        obs = np.asarray(obs, dtype=np.float64).reshape(-1, self.obs_dim)
        qpos = np.zeros((obs.shape[0], self.nq))
        qpos[:, self.skipped :] = obs[:, : self.nq - self.skipped]
        return qpos, obs[:, self.nq - self.skipped :].copy()

    def state_to_obs(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """The env's ``_get_obs`` for states (B, nq), (B, nv)."""
        if self.qvel_clip is not None:
            qvel = np.clip(qvel, -self.qvel_clip, self.qvel_clip)
        return np.concatenate([qpos[:, self.skipped :], qvel], axis=1)

    def clipped(self, obs: th.Tensor) -> th.Tensor:
        """True where an observation's qvel sits at the clip bound (its true velocity is unknown)."""
        if self.qvel_clip is None:
            return th.zeros(obs.shape[:-1], dtype=th.bool, device=obs.device)
        return (obs[..., self.nq - self.skipped :].abs() >= self.qvel_clip).any(dim=-1)

    # ------------------------------------------------------------------------------------------
    # simulation and Jacobians (numpy, float64)
    # ------------------------------------------------------------------------------------------

    def _rollout(self, qpos: np.ndarray, qvel: np.ndarray, ctrl: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Final (qpos, qvel) after ``frame_skip`` steps from each row, zero warm-start, in C."""
        size, oq, ov = _fullphysics_offsets(self.mj_model)
        n = qpos.shape[0]
        init = np.zeros((n, size))
        init[:, oq : oq + self.nq] = qpos
        init[:, ov : ov + self.nv] = qvel
        control = np.ascontiguousarray(np.broadcast_to(ctrl[:, None, :], (n, self.frame_skip, self.nu)))
        datas = self._data(max(1, self.nthread))
        state, _ = mj_rollout.rollout(
            self.mj_model,
            datas if self.nthread > 1 else datas[0],
            init,
            control,
            nstep=self.frame_skip,
            initial_warmstart=np.zeros((n, self.nv)),
        )
        last = state[:, -1]
        return last[:, oq : oq + self.nq].copy(), last[:, ov : ov + self.nv].copy()

    def _ctrl_steps(self, ctrl: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Upper and lower ctrl values of the differences, kept inside ``ctrlrange`` where the actuator
        is ctrl-limited (one-sided at a bound, as ``mjd_transitionFD`` does). Forward differences
        (``fd_centered=False``): (the perturbed ctrl, ``ctrl``), the perturbed one ``ctrl - fd_eps``
        where ``ctrl + fd_eps`` would leave the range (a backward difference: the width is signed)."""
        up, down = ctrl + self.fd_eps, ctrl - self.fd_eps
        m = self.mj_model
        limited = m.actuator_ctrllimited.astype(bool)
        lo = np.where(limited, m.actuator_ctrlrange[:, 0], -np.inf)
        hi = np.where(limited, m.actuator_ctrlrange[:, 1], np.inf)
        inside = (ctrl >= lo) & (ctrl <= hi)
        if not self.fd_centered:
            return np.where(inside & (up > hi), down, up), ctrl
        up = np.where(inside, np.minimum(up, hi), up)
        down = np.where(inside, np.maximum(down, lo), down)
        return up, down

    def _jacobian_rollout(self, qpos: np.ndarray, qvel: np.ndarray, ctrl: np.ndarray, with_state: bool = True):
        """Nominal next state and its finite-difference Jacobian (B, nq + nv, 2 nv + nu) w.r.t.
        (qpos, qvel, ctrl), all perturbed states in one rollout. ``with_state=False`` perturbs the
        ctrl only and leaves the state columns 0. Per sample ``1 + 2 d`` rollouts for ``d`` perturbed
        columns with central differences, ``1 + d`` with forward ones."""
        b, nq, nv, nu = qpos.shape[0], self.nq, self.nv, self.nu
        ds = 2 * nv if with_state else 0
        d = ds + nu
        h = self.fd_eps
        sides = 2 if self.fd_centered else 1
        # per sample: [nominal, upper e_1 .. e_d, (lower e_1 .. e_d)]; positions in the tangent space = qpos here
        x = np.concatenate([qpos, qvel], axis=1)[:, None, :]  # (B, 1, nq + nv)
        dx = np.zeros((1, sides * d + 1, nq + nv))
        dx[0, 1 : ds + 1, : 2 * nv] = h * np.eye(ds, 2 * nv)
        if self.fd_centered:
            dx[0, d + 1 : d + 1 + ds, : 2 * nv] = -h * np.eye(ds, 2 * nv)
        xs = (x + dx).reshape(-1, nq + nv)
        up, down = self._ctrl_steps(ctrl)
        cs = np.repeat(ctrl[:, None, :], sides * d + 1, axis=1)
        idx = np.arange(nu)
        cs[:, 1 + ds + idx, idx] = up
        if self.fd_centered:
            cs[:, d + 1 + ds + idx, idx] = down
        qp, qv = self._rollout(xs[:, :nq], xs[:, nq:], cs.reshape(-1, nu))
        y = np.concatenate([qp, qv], axis=1).reshape(b, sides * d + 1, nq + nv)
        width = np.full((b, d), 2 * h if self.fd_centered else h)
        width[:, ds:] = up - down
        if self.fd_centered:
            diff = y[:, 1 : d + 1] - y[:, d + 1 :]
        else:  # against the nominal; a ctrl column's width is negative where it stepped down
            diff = y[:, 1 : d + 1] - y[:, :1]
        jac = np.zeros((b, nq + nv, 2 * nv + nu))
        jac[:, :, 2 * nv - ds :] = diff.transpose(0, 2, 1) / width[:, None, :]
        return y[:, 0, :nq], y[:, 0, nq:], jac

    def _jacobian_transition(self, qpos: np.ndarray, qvel: np.ndarray, ctrl: np.ndarray):
        """As :meth:`_jacobian_rollout`, from ``mjd_transitionFD`` chained over the sub-steps."""
        m = self.mj_model
        (data,) = self._data(1)
        b, nv, nu = qpos.shape[0], self.nv, self.nu
        a_k, b_k = np.zeros((2 * nv, 2 * nv)), np.zeros((2 * nv, nu))
        jac = np.zeros((b, 2 * nv, 2 * nv + nu))
        qp, qv = np.zeros_like(qpos), np.zeros_like(qvel)
        for i in range(b):
            mujoco.mj_resetData(m, data)
            data.qpos[:], data.qvel[:], data.ctrl[:] = qpos[i], qvel[i], ctrl[i]
            a_tot, b_tot = np.eye(2 * nv), np.zeros((2 * nv, nu))
            for _ in range(self.frame_skip):
                mujoco.mjd_transitionFD(m, data, self.fd_eps, self.fd_centered, a_k, b_k, None, None)
                mujoco.mj_step(m, data)
                a_tot, b_tot = a_k @ a_tot, a_k @ b_tot + b_k
            jac[i, :, : 2 * nv], jac[i, :, 2 * nv :] = a_tot, b_tot
            qp[i], qv[i] = data.qpos, data.qvel
        return qp, qv, jac

    def contact_counts(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """The number of active contacts at each state (B,): the contacts ``mj_forward`` detects there
        (what ``data.ncon`` holds for the env's next step from that state)."""
        (data,) = self._data(1)
        counts = np.zeros(qpos.shape[0], dtype=np.int64)
        for i in range(qpos.shape[0]):
            data.qpos[:], data.qvel[:] = qpos[i], qvel[i]
            mujoco.mj_forward(self.mj_model, data)
            counts[i] = data.ncon
        return counts

    def simulate(
        self, obs: np.ndarray, action: np.ndarray, jacobian: bool = False, wrt_obs: bool = True, contacts: bool = False
    ) -> Dict[str, np.ndarray]:
        """The frame-skipped step for a batch (numpy, float64): ``next_obs``, ``dx`` (root x
        displacement), ``qpos``/``qvel`` (true next state) and, with ``jacobian``, ``jac_obs`` (B,
        obs_dim + 1, obs_dim) and ``jac_act`` (B, obs_dim + 1, act_dim): rows ``next_obs`` then ``dx``.
        ``wrt_obs=False`` skips ``jac_obs`` (absent from the result): the action columns alone cost
        ``1 + 2 nu`` perturbed rollouts, whatever the Jacobian method (a one-step pathwise gradient
        needs no more). With ``contacts``: ``contact_change`` (B,) bool, whether the step changes the
        number of active contacts (:meth:`contact_counts` at the state and at the next state): there
        the local Jacobian is least to be trusted (the gradient audit measured its bias several times
        larger on such steps of Hopper)."""
        qpos, qvel = self.obs_to_state(obs)
        ctrl = np.asarray(action, dtype=np.float64).reshape(-1, self.nu)
        out: Dict[str, np.ndarray] = {}
        if jacobian:
            if wrt_obs and self.jacobian_method == "transition":
                qp, qv, jac = self._jacobian_transition(qpos, qvel, ctrl)
            else:
                qp, qv, jac = self._jacobian_rollout(qpos, qvel, ctrl, with_state=wrt_obs)
            s, nq, nv = self.skipped, self.nq, self.nv
            rows = np.r_[np.arange(s, nq), nq + np.arange(nv), 0]  # next_obs, then dx = d qpos[0]
            cols = np.r_[np.arange(s, nq), nq + np.arange(nv)]  # obs columns; the root x stays 0
            j = jac[:, rows]
            if self.qvel_clip is not None:  # a clipped next velocity does not move
                j[:, nq - s : nq - s + nv][np.abs(qv) > self.qvel_clip] = 0.0
            out["jac_act"] = j[:, :, 2 * nv :]
            if wrt_obs:
                out["jac_obs"] = j[:, :, cols]
        else:
            qp, qv = self._rollout(qpos, qvel, ctrl)
        out.update(next_obs=self.state_to_obs(qp, qv), dx=qp[:, 0] - qpos[:, 0], qpos=qp, qvel=qv)
        if contacts:
            out["contact_change"] = self.contact_counts(qpos, qvel) != self.contact_counts(qp, qv)
        return out

    # ------------------------------------------------------------------------------------------
    # health, reward, torch interface
    # ------------------------------------------------------------------------------------------

    def _healthy(self, z: th.Tensor, angle: th.Tensor, rest: th.Tensor) -> th.Tensor:
        ok = th.ones_like(z, dtype=th.bool)
        for value, bounds in ((z, self.healthy_z_range), (angle, self.healthy_angle_range)):
            if bounds is not None:
                ok = ok & (value > bounds[0]) & (value < bounds[1])
        if self.healthy_state_range is not None:
            lo, hi = self.healthy_state_range
            ok = ok & ((rest > lo) & (rest < hi)).all(dim=-1)
        return ok

    def _healthy_obs(self, obs: th.Tensor) -> th.Tensor:
        """The env's ``is_healthy`` from observations: z = qpos[1], angle = qpos[2] and the
        state range over ``state_vector()[2:]`` = qpos[2:], qvel."""
        o = 2 - self.skipped  # obs index of qpos[2]
        return self._healthy(obs[..., 1 - self.skipped], obs[..., o], obs[..., o:])

    def terminal(self, next_obs: th.Tensor) -> th.Tensor:
        if not self.terminate_when_unhealthy:
            return super().terminal(next_obs)
        return (~self._healthy_obs(next_obs)).to(next_obs.dtype)

    def step(self, obs: th.Tensor, action: th.Tensor) -> Tuple[th.Tensor, th.Tensor]:
        batch = obs.shape[:-1]
        flat_obs, flat_act = obs.reshape(-1, self.obs_dim), action.reshape(-1, self.nu).to(obs)
        next_obs, dx = _SimulatorStep.apply(flat_obs, flat_act, self)
        healthy = self._healthy_last_state(dx)
        reward = self._reward(dx, flat_act, healthy)
        self.last_clipped = (self.clipped(flat_obs) | self.clipped(next_obs.detach())).reshape(batch)
        return next_obs.reshape(*batch, self.obs_dim), reward.reshape(batch)

    def _healthy_last_state(self, like: th.Tensor) -> th.Tensor:
        """The health indicator (0/1, as ``like``) of the true next states of the last simulation."""
        if self.healthy_z_range is None and self.healthy_state_range is None:
            return th.ones_like(like)
        q = th.as_tensor(np.concatenate(self._last_state, axis=1), device=like.device)
        return self._healthy(q[:, 1], q[:, 2], q[:, 2:]).to(like)

    def _reward(self, dx: th.Tensor, action: th.Tensor, healthy: th.Tensor) -> th.Tensor:
        p = {name: buf.to(dx) for name, buf in self.named_buffers()}
        return p["forward_reward_weight"] * dx / p["dt"] - p["ctrl_cost_weight"] * (action**2).sum(dim=-1) + p["healthy_reward"] * healthy

    # ------------------------------------------------------------------------------------------
    # first-order model around fixed actions (one simulation per rollout, see ``linearize``)
    # ------------------------------------------------------------------------------------------

    def linearize(self, obs: th.Tensor, action: th.Tensor, wrt_obs: bool = False, contacts: bool = False) -> Dict[str, th.Tensor]:
        """The step at ``(obs, action)`` (B, obs_dim), (B, act_dim) and its exact local action
        Jacobian, as per-sample tensors (leading dimension B) for :meth:`step_linear`:

        * ``lin_action``: the expansion point a0 (B, act_dim);
        * ``lin_next`` (B, obs_dim), ``lin_dx`` (B,): the simulator's next observation and root x
          displacement at a0;
        * ``lin_jac`` (B, obs_dim + 1, act_dim): d(next_obs, dx)/da at a0 (``1 + 2 nu`` perturbed
          rollouts per sample, whatever the Jacobian method; the state columns are not needed);
        * ``lin_healthy`` (B,): the health indicator of the true next state at a0;
        * with ``wrt_obs``: ``lin_obs`` (B, obs_dim), the expansion point s0, and ``lin_jac_obs``
          (B, obs_dim + 1, obs_dim), d(next_obs, dx)/ds at (s0, a0) (all state perturbations: the later
          steps of a k-step return, whose state depends on the first action).

        * with ``contacts``: ``lin_contact_change`` (B,), 1.0 where the step at a0 changes the number of
          active contacts (:meth:`simulate`), else 0.0.

        Without ``wrt_obs`` the first-order model is in the action only."""
        out = self.simulate(obs.detach().cpu().numpy(), action.detach().cpu().numpy(), jacobian=True, wrt_obs=wrt_obs, contacts=contacts)
        as_t = lambda a: th.as_tensor(a, device=obs.device).to(obs.dtype)  # noqa: E731
        self._last_state = (out["qpos"], out["qvel"])
        lin = {
            "lin_action": action.detach().reshape(-1, self.nu).to(obs.dtype),
            "lin_next": as_t(out["next_obs"]),
            "lin_dx": as_t(out["dx"]),
            "lin_jac": as_t(out["jac_act"]),
        }
        lin["lin_healthy"] = self._healthy_last_state(lin["lin_dx"])
        if wrt_obs:
            lin.update(lin_obs=obs.detach().reshape(-1, self.obs_dim), lin_jac_obs=as_t(out["jac_obs"]))
        if contacts:
            lin["lin_contact_change"] = as_t(out["contact_change"].astype(np.float64))
        return lin

    def step_linear(self, action: th.Tensor, lin: Dict[str, th.Tensor], obs: Optional[th.Tensor] = None) -> Tuple[th.Tensor, th.Tensor]:
        """(next_obs, reward) of the first-order model around ``lin`` (:meth:`linearize`) at
        ``action`` (B, act_dim), differentiable in the action: ``next = next0 + J_next (a - a0)``,
        ``dx = dx0 + J_dx (a - a0)`` (plus ``J_s (obs - s0)`` when ``obs`` is given, which needs a
        ``lin`` made ``wrt_obs``); the control cost is the exact quadratic of ``action``, the health
        indicator that of a0's next state. At ``action == a0`` (and ``obs == s0``) value and gradients
        are the simulator's (:meth:`step`); no simulator call."""
        delta = th.einsum("boa,ba->bo", lin["lin_jac"], action - lin["lin_action"])
        if obs is not None:
            delta = delta + th.einsum("bos,bs->bo", lin["lin_jac_obs"], obs - lin["lin_obs"])
        next_obs = lin["lin_next"] + delta[:, :-1]
        dx = lin["lin_dx"] + delta[:, -1]
        self.last_clipped = self.clipped(lin["lin_next"])
        return next_obs, self._reward(dx, action, lin["lin_healthy"])


class _SimulatorStep(th.autograd.Function):
    """(obs, action) -> (next_obs, dx): the simulator forward, its Jacobians backward."""

    @staticmethod
    def forward(ctx, obs: th.Tensor, action: th.Tensor, model: MujocoStepModel):
        wrt_obs, wrt_act = ctx.needs_input_grad[:2]
        out = model.simulate(obs.detach().cpu().numpy(), action.detach().cpu().numpy(), jacobian=wrt_obs or wrt_act, wrt_obs=wrt_obs)
        as_t = lambda a: th.as_tensor(a, device=obs.device).to(obs.dtype)  # noqa: E731
        if wrt_obs or wrt_act:
            ctx.save_for_backward(as_t(out["jac_obs"]) if wrt_obs else None, as_t(out["jac_act"]))
        model._last_state = (out["qpos"], out["qvel"])  # the true next state, for the health test
        return as_t(out["next_obs"]), as_t(out["dx"])

    @staticmethod
    def backward(ctx, grad_next: th.Tensor, grad_dx: th.Tensor):
        jac_obs, jac_act = ctx.saved_tensors
        g = th.cat([grad_next, grad_dx[:, None]], dim=1)  # (B, obs_dim + 1)
        grad_obs = None if jac_obs is None else th.einsum("bo,boi->bi", g, jac_obs)
        return grad_obs, th.einsum("bo,boa->ba", g, jac_act), None


class MujocoDifferentiableWrapper(gym.Wrapper):
    """A gymnasium MuJoCo env (v5 HalfCheetah, Hopper, Walker2d, Swimmer) plus
    ``get_differentiable_model()``; the env itself is unchanged. ``options`` go to the model
    (``jacobian``, ``fd_eps``, ``fd_centered``, ``nthread``)."""

    def __init__(self, env: gym.Env, **options: Any):
        super().__init__(env)
        _env_spec(env)  # fail early on an unsupported env
        self.model_options = options

    def get_differentiable_model(self) -> MujocoStepModel:
        return MujocoStepModel.from_env(self.env, **self.model_options)


def make_mujoco_env(env_id: str, model_options: Optional[Dict[str, Any]] = None, **kwargs: Any) -> MujocoDifferentiableWrapper:
    """``gym.make(env_id, **kwargs)`` wrapped in :class:`MujocoDifferentiableWrapper` (``model_options``:
    ``jacobian``, ``fd_eps``, ``fd_centered``, ``nthread``). Also a ``make_vec_env`` entry point, which works with
    ``SubprocVecEnv`` too::

        make_vec_env(make_mujoco_env, n_envs=8, env_kwargs=dict(env_id="HalfCheetah-v5"), vec_env_cls=SubprocVecEnv)
    """
    return MujocoDifferentiableWrapper(gym.make(env_id, **kwargs), **(model_options or {}))


def jacobian_cost(env_id: str, batch: int = 64, repeats: int = 3, seed: int = 0, **options: Any) -> Dict[str, float]:
    """Seconds per sample of the model's forward alone (``forward_s``), of forward + all Jacobians
    (``jacobian_s``), of forward + the action Jacobian only (``jacobian_action_s``) and of one plain
    ``env.step`` (``env_step_s``), measured on ``batch`` states visited by random actions (best of
    ``repeats``)."""
    env = gym.make(env_id)
    model = MujocoStepModel.from_env(env, **options)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    states, actions = [], []
    t0 = time.perf_counter()
    for _ in range(batch):
        a = env.action_space.sample()
        states.append(obs)
        actions.append(a)
        obs, _, term, trunc, _ = env.step(a)
        if term or trunc:
            obs, _ = env.reset(seed=int(rng.integers(1 << 30)))
    env_step = (time.perf_counter() - t0) / batch
    o, a = np.array(states), np.array(actions)
    best: Dict[str, Any] = {"env_step_s": env_step, "method": model.jacobian_method}
    for key, jac, wrt_obs in (("forward_s", False, True), ("jacobian_s", True, True), ("jacobian_action_s", True, False)):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.simulate(o, a, jacobian=jac, wrt_obs=wrt_obs)
            times.append(time.perf_counter() - t0)
        best[key] = min(times) / batch
    env.close()
    return best


if __name__ == "__main__":  # cost per sample of every supported env and Jacobian method
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--nthread", type=int, default=1)
    args = parser.parse_args()
    th.set_num_threads(1)
    for env_id in ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Swimmer-v5"):
        methods = ("transition", "rollout") if env_id == "HalfCheetah-v5" else ("rollout",)
        for method in methods:
            c = jacobian_cost(env_id, batch=args.batch, jacobian=method, nthread=args.nthread)
            print(
                f"{env_id:15s} {method:10s} env.step {c['env_step_s'] * 1e6:7.1f} us | model forward "
                f"{c['forward_s'] * 1e6:6.1f} us | + Jacobian {c['jacobian_s'] * 1e3:5.2f} ms "
                f"({c['jacobian_s'] / c['env_step_s']:.0f} env steps) | + action Jacobian only "
                f"{c['jacobian_action_s'] * 1e3:5.2f} ms ({c['jacobian_action_s'] / c['env_step_s']:.0f}) per sample"
            )
