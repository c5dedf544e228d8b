"""Non-stationary environments: physical parameters driven along schedules by a step clock.

Usage::

    import gymnasium as gym
    from hybrid_pg_envs import NonStationaryWrapper

    env = NonStationaryWrapper(
        gym.make("Pendulum-v1"),
        {"g": {"kind": "switch", "values": [10.0, 14.0], "every": 50000},
         "m": {"kind": "sinusoid", "base": 1.0, "amplitude": 0.2, "period": 20000}},
    )
    obs, info = env.reset(seed=0)       # info["env_params"] == {"g": 10.0, "m": 1.0}
    obs, r, term, trunc, info = env.step(env.action_space.sample())
    info["env_params"], info["env_clock"]  # the parameters this transition used, and their clock

The clock
---------
The wrapper owns a clock. Each ``step`` of this env advances it by ``steps_per_tick`` (default 1);
``reset`` does not touch it, so the drift continues across episodes. Invariant: between calls the
simulator holds ``schedule(clock)``, i.e. the parameters the *next* transition will use. The
parameters a transition used are reported in its ``info["env_params"]`` (and the initial ones in the
reset info); the algorithm logs them as ``env/<name>``.

Per-env or global steps? The schedule is in units of the wrapper's clock, and each sub-env of a
VecEnv has its own wrapper. The sub-envs of a VecEnv step in lockstep, so with the default
``steps_per_tick=1`` every clock counts *per-env* steps (SB3's ``num_timesteps / n_envs``); with
``steps_per_tick=n_envs`` every clock counts *global* steps (SB3's ``num_timesteps``), and a
schedule written as "switch every 50k timesteps" means the same whatever n_envs is. Either way all
sub-envs see the same parameters at the same moment (so their differentiable models agree).
``steps_per_tick=0`` freezes the clock: the env is then stationary at the parameters of
``clock_start`` (evaluation at a fixed moment; gymnasium's checker, whose determinism check
replays a seed and expects the same transition).

The clock must reach this wrapper from outside the whole stack: in gymnasium 1.x ``setattr`` and
SB3's ``VecEnv.set_attr`` stop at the outermost wrapper, so the clock is read and written through
*methods* (``get_clock``, ``set_clock``, ``state_dict``, ``load_state_dict``), which
``Wrapper.get_wrapper_attr`` and hence SB3's ``env_method`` find however deep the wrapper sits,
including in SubprocVecEnv workers. :func:`sync_clock`, :func:`get_clocks`, :func:`vec_state_dicts`
and :func:`load_vec_state_dicts` are the VecEnv helpers.

Differentiable models
---------------------
If the base env follows the differentiable protocol (:mod:`hybrid_pg_envs.differentiable`), the
wrapper exposes ``get_differentiable_model()`` (found through wrappers and VecEnvs by
``find_differentiable_model``):

* ``model_mode="live"``: one persistent model whose buffers are updated every time the parameters
  change, so a holder of it in the same process follows the env (a SubprocVecEnv returns a pickled
  copy, i.e. a snapshot at the time of the call);
* ``model_mode="stale"``: the model of the env as constructed (parameters at ``clock_start``),
  never updated: a deliberately mis-specified pathwise source, to study that failure mode.

``differentiable_model_at(step)`` returns the model at an earlier (or later) clock without moving
the env: HybridPG trains on a rollout after it was collected, when the clock has moved on, and uses
the model at the rollout's midpoint (exact when the parameters are constant within the rollout).

``find_differentiable_model`` uses the wrapper's model, on the gymnasium env as through any VecEnv
(what SB3 algorithms hold).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import gymnasium as gym
import numpy as np
import torch as th

from .adapters import ParameterAdapter, make_adapter
from .clock import get_clocks, load_vec_state_dicts, sync_clock, vec_state_dicts  # noqa: F401  (re-exported)
from .differentiable import MODEL_METHOD, DifferentiableModel
from .schedules import Schedule, ScheduleConfig, make_schedules

MODEL_MODES = ("live", "stale")
INFO_KEY = "env_params"
CLOCK_INFO_KEY = "env_clock"
STATE_KEYS = ("clock", "steps_per_tick", "model_mode", "schedules", "stale_model")

AdapterLike = Union[None, ParameterAdapter, Callable[[gym.Env], ParameterAdapter]]


def _check_int(name: str, value: Any, minimum: int) -> int:
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer, float, np.floating))
    if ok:
        ok = math.isfinite(float(value)) and float(value) == int(value) and int(value) >= minimum
    if not ok:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class NonStationaryWrapper(gym.Wrapper):
    """Drives named physical parameters of ``env`` along schedules (see the module docstring).

    :param env: any gymnasium env (wrapped or not); the parameters are set on ``env.unwrapped``.
    :param schedules: ``{parameter: schedule config}`` (see :mod:`hybrid_pg_envs.schedules`;
        a bare number is a constant).
    :param adapter: how to set the parameters: None picks one by env type
        (:func:`hybrid_pg_envs.adapters.make_adapter`), or an adapter instance, or a callable
        ``env -> adapter``.
    :param clock_start: the clock at construction.
    :param steps_per_tick: clock increment per step of this env (``n_envs`` for global steps, 0
        to freeze the clock).
    :param model_mode: ``"live"`` or ``"stale"`` (differentiable base envs only).
    """

    def __init__(
        self,
        env: gym.Env,
        schedules: Mapping[str, ScheduleConfig],
        adapter: AdapterLike = None,
        clock_start: int = 0,
        steps_per_tick: int = 1,
        model_mode: str = "live",
    ):
        super().__init__(env)
        if model_mode not in MODEL_MODES:
            raise ValueError(f"model_mode must be one of {MODEL_MODES}, got {model_mode!r}")
        self.model_mode = model_mode
        self.steps_per_tick = _check_int("steps_per_tick", steps_per_tick, 0)
        if adapter is None:
            adapter = make_adapter(env)
        elif not isinstance(adapter, ParameterAdapter):
            adapter = adapter(env)
        if not isinstance(adapter, ParameterAdapter):
            raise TypeError(f"adapter must be a ParameterAdapter or a callable returning one, got {type(adapter).__name__}")
        if adapter.env is not env.unwrapped:
            raise ValueError("the adapter is bound to a different env than the one wrapped")
        self.adapter = adapter
        self.schedules: Dict[str, Schedule] = {}
        self._set_schedules(schedules)
        self.clock = _check_int("clock_start", clock_start, 0)
        # where a seeded reset puts the clock back to (see reset): the last clock set explicitly
        self._seed_clock = self.clock
        self._applied: Optional[Dict[str, float]] = None
        self._live_model: Optional[DifferentiableModel] = None
        self._mirrored: Optional[List[Any]] = None  # (buffer name, buffer, last value) per buffer
        self._mirror_noise = False
        self._stale_model: Optional[DifferentiableModel] = None
        self._apply()
        if self._base_has_model() and model_mode == "stale":
            self._stale_model = self._base_model()

    # ------------------------------------------------------------------------------------------
    # parameters
    # ------------------------------------------------------------------------------------------

    def _set_schedules(self, configs: Mapping[str, ScheduleConfig]) -> None:
        schedules = make_schedules(configs)
        self.adapter.validate(schedules)
        self.schedules = schedules

    def params_at(self, step: int) -> Dict[str, float]:
        """The scheduled parameter values at clock ``step``."""
        return {name: schedule.value(step) for name, schedule in self.schedules.items()}

    @property
    def current_params(self) -> Dict[str, float]:
        """The values the simulator holds now (those of the next transition)."""
        return dict(self._applied or {})

    def _apply(self) -> None:
        values = self.params_at(self.clock)
        if values != self._applied:
            if values:
                self.adapter.set(values)
            self._applied = values
            self._sync_live_model()

    # ------------------------------------------------------------------------------------------
    # clock and state
    # ------------------------------------------------------------------------------------------

    def get_clock(self) -> int:
        return self.clock

    def set_clock(self, step: int, steps_per_tick: Optional[int] = None) -> None:
        """Move the clock (and the simulator's parameters) to ``step``; optionally change
        ``steps_per_tick`` too (0 holds the parameters still, e.g. for a diagnostic batch drawn
        at one moment of the schedule)."""
        step = _check_int("clock", step, 0)
        tick = self.steps_per_tick if steps_per_tick is None else _check_int("steps_per_tick", steps_per_tick, 0)
        previous, self.clock = self.clock, step
        try:
            self._apply()
        except Exception:
            self.clock = previous  # e.g. an invalid parameter value at that step: change nothing
            raise
        self.steps_per_tick = tick
        self._seed_clock = step

    def state_dict(self) -> Dict[str, Any]:
        """Plain (JSON/YAML-serialisable) state: the clock, the settings and the schedules' configs,
        and the stale model's parameters. ``load_state_dict`` on a fresh wrapper resumes exactly."""
        return {
            "clock": self.clock,
            "steps_per_tick": self.steps_per_tick,
            "model_mode": self.model_mode,
            "schedules": {name: s.to_config() for name, s in self.schedules.items()},
            "stale_model": None if self._stale_model is None else self._stale_model.parameters_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping):
            raise ValueError(f"state must be a mapping, got {type(state).__name__}")
        unknown = sorted(set(state) - set(STATE_KEYS))
        if unknown or "clock" not in state:
            raise ValueError(f"not a NonStationaryWrapper state: unknown keys {unknown}, expected {list(STATE_KEYS)}")
        if "model_mode" in state and state["model_mode"] not in MODEL_MODES:
            raise ValueError(f"state['model_mode'] must be one of {MODEL_MODES}, got {state['model_mode']!r}")
        clock = _check_int("state['clock']", state["clock"], 0)
        steps_per_tick = _check_int("state['steps_per_tick']", state.get("steps_per_tick", self.steps_per_tick), 0)
        if "schedules" in state:
            self._set_schedules(state["schedules"])
        self.steps_per_tick = steps_per_tick
        self.model_mode = state.get("model_mode", self.model_mode)
        self.clock = self._seed_clock = clock
        self._applied = None  # force: the schedules may have changed
        self._apply()
        stale = state.get("stale_model")
        if self.model_mode == "stale" and self._base_has_model():
            if self._stale_model is None:
                self._stale_model = self._base_model()
            if stale is not None:
                self._stale_model.set_parameters(**stale)
        elif self.model_mode == "live":
            self._stale_model = None

    # ------------------------------------------------------------------------------------------
    # gymnasium API
    # ------------------------------------------------------------------------------------------

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        """A *seeded* reset also puts the clock back to where it was last set explicitly (construction,
        ``set_clock``, ``load_state_dict``), so ``reset(seed=s)`` twice gives the same steps (gymnasium's
        determinism contract, checked by ``check_env``). Unseeded resets (SB3's auto-resets between
        episodes) leave the clock running: the schedule is a function of global env steps."""
        if seed is not None:
            self.clock = self._seed_clock
        return reset_between_applies(self, seed, options)

    def step(self, action):
        used, used_clock = self.current_params, self.clock
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.clock += self.steps_per_tick
        self._apply()
        info = dict(info)
        info[INFO_KEY] = used
        info[CLOCK_INFO_KEY] = used_clock
        return obs, reward, terminated, truncated, info

    # ------------------------------------------------------------------------------------------
    # differentiable model
    # ------------------------------------------------------------------------------------------

    def _base_has_model(self) -> bool:
        return callable(getattr(self.env.unwrapped, MODEL_METHOD, None))

    def _base_model(self) -> DifferentiableModel:
        model = getattr(self.env.unwrapped, MODEL_METHOD)()
        if not isinstance(model, DifferentiableModel):
            raise TypeError(f"{MODEL_METHOD}() must return a DifferentiableModel, got {type(model).__name__}")
        return model

    def _sync_live_model(self) -> None:
        """Bring the live model's buffers (and ``noise_std``) to the env's current parameters."""
        model = self._live_model
        if model is None:
            return
        base: Any = self.env.unwrapped  # any env: the mirrored attributes (and noise_std) are found by name
        if self._mirrored is None:  # slow path: rebuild and copy every buffer
            fresh = self._base_model()
            model.set_parameters(**dict(fresh.named_buffers()))
            model.noise_std = fresh.noise_std
            return
        # fast path: the buffers mirror same-named env attributes; copy only those that changed
        for i, (name, buf, last) in enumerate(self._mirrored):
            value = getattr(base, name)
            if isinstance(last, float):
                value = float(value)
                if value != last:
                    buf.fill_(value)
                    self._mirrored[i] = (name, buf, value)
            elif not np.array_equal(value, last):
                buf.copy_(th.as_tensor(np.asarray(value), dtype=buf.dtype))
                self._mirrored[i] = (name, buf, np.array(value, dtype=np.float64, copy=True))
        if self._mirror_noise:
            model.noise_std = float(base.noise_std)

    def _make_live_model(self) -> DifferentiableModel:
        """The persistent live model; decides once whether its buffers mirror env attributes (true
        for every env in this package: then a step costs a few microseconds, not a model rebuild)."""
        model = self._base_model()
        base = self.env.unwrapped
        mirrored: List[Any] = []
        for name, buf in model.named_buffers():
            value = getattr(base, name, None)
            try:
                arr = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):
                arr = None
            if arr is None or arr.shape != tuple(buf.shape) or not np.array_equal(arr, buf.detach().cpu().numpy()):
                self._mirrored = None
                break
            mirrored.append((name, buf, float(arr) if arr.ndim == 0 else arr.copy()))
        else:
            self._mirrored = mirrored
        noise = getattr(base, "noise_std", None)
        self._mirror_noise = isinstance(noise, (int, float)) and float(noise) == float(model.noise_std)
        return model

    def _differentiable_model(self) -> DifferentiableModel:
        if self.model_mode == "stale":
            if self._stale_model is None:
                self._stale_model = self._base_model()
            return self._stale_model
        if self._live_model is None:
            self._live_model = self._make_live_model()
        return self._live_model

    def differentiable_model_at(self, step: int) -> DifferentiableModel:
        """A copy of the model at the parameters of clock ``step`` (live mode; the stale model as
        is): what a learner needs for transitions collected at ``step`` when the clock has moved on.
        The env itself is left exactly as it was."""
        if not self._base_has_model():
            raise AttributeError(f"{type(self.env.unwrapped).__name__} has no differentiable model")
        if self.model_mode == "stale":
            return self._differentiable_model()
        now = self.clock
        self.set_clock(step)
        try:
            return copy.deepcopy(self._differentiable_model())
        finally:
            self.set_clock(now)

    @property
    def get_differentiable_model(self) -> Callable[[], DifferentiableModel]:
        """The model (see the module docstring). An attribute only when the base env has one, so
        ``hasattr``/``has_attr`` report the protocol truthfully through the wrapper."""
        if not self._base_has_model():
            raise AttributeError(f"{type(self.env.unwrapped).__name__} has no differentiable model")
        return self._differentiable_model


def reset_between_applies(wrapper: Any, seed: Optional[int], options: Optional[dict]) -> Tuple[Any, Dict[str, Any]]:
    """The reset every clock-driven wrapper shares: the clock's parameters are applied before the base
    env's reset (it may read them, e.g. a goal in the first observation) and after it (a base env's
    reset may re-initialise its attributes); ``info`` reports them and the clock."""
    wrapper._applied = None
    wrapper._apply()
    obs, info = wrapper.env.reset(seed=seed, options=options)
    wrapper._applied = None
    wrapper._apply()
    info = dict(info)
    info[INFO_KEY] = wrapper.current_params
    info[CLOCK_INFO_KEY] = wrapper.clock
    return obs, info


# ---------------------------------------------------------------------------------------------
# finding the wrapper; VecEnv helpers
# ---------------------------------------------------------------------------------------------


def find_nonstationary_wrapper(env: gym.Env) -> Optional[NonStationaryWrapper]:
    """The outermost :class:`NonStationaryWrapper` in a gymnasium wrapper stack, or None."""
    while isinstance(env, gym.Wrapper):
        if isinstance(env, NonStationaryWrapper):
            return env
        env = env.env
    return None


# ---------------------------------------------------------------------------------------------
# entry points of the registered ids
# ---------------------------------------------------------------------------------------------

SWITCHING_PENDULUM_SCHEDULES = {"g": {"kind": "switch", "values": [10.0, 14.0], "every": 50_000}}
# the goal moves round the unit circle once every 20k steps
DRIFTING_GOAL_SCHEDULES = {
    "goal_x": {"kind": "sinusoid", "base": 0.0, "amplitude": 1.0, "period": 20_000, "phase": 0.25},
    "goal_y": {"kind": "sinusoid", "base": 0.0, "amplitude": 1.0, "period": 20_000, "phase": 0.0},
}
# the goal jumps round the corners of the square [-1, 1]^2 every 10k steps
SWITCHING_GOAL_SCHEDULES = {
    "goal_x": {"kind": "switch", "values": [1.0, -1.0, -1.0, 1.0], "every": 10_000},
    "goal_y": {"kind": "switch", "values": [1.0, 1.0, -1.0, -1.0], "every": 10_000},
}
DRIFTING_BANDIT_SCHEDULES = {"m": {"kind": "sinusoid", "base": 0.0, "amplitude": 2.0, "period": 20_000}}


def _wrapped(
    base: gym.Env,
    schedules: Optional[Mapping[str, ScheduleConfig]],
    default: Mapping[str, ScheduleConfig],
    clock_start: int,
    steps_per_tick: int,
    model_mode: str,
) -> NonStationaryWrapper:
    return NonStationaryWrapper(
        base,
        copy.deepcopy(dict(default)) if schedules is None else schedules,
        clock_start=clock_start,
        steps_per_tick=steps_per_tick,
        model_mode=model_mode,
    )


def make_switching_pendulum(schedules=None, clock_start=0, steps_per_tick=1, model_mode="live", **env_kwargs) -> gym.Env:
    """``hybrid_pg/SwitchingPendulum-v0``: DiffPendulumEnv, g switching 10 <-> 14 every 50k clock steps."""
    from .pendulum import DiffPendulumEnv

    return _wrapped(DiffPendulumEnv(**env_kwargs), schedules, SWITCHING_PENDULUM_SCHEDULES, clock_start, steps_per_tick, model_mode)


def make_drifting_goal(schedules=None, clock_start=0, steps_per_tick=1, model_mode="live", **env_kwargs) -> gym.Env:
    """``hybrid_pg/DriftingGoal-v0``: PointMassGoalEnv, the goal circling the unit circle (20k-step period)."""
    from .goal import PointMassGoalEnv

    return _wrapped(PointMassGoalEnv(**env_kwargs), schedules, DRIFTING_GOAL_SCHEDULES, clock_start, steps_per_tick, model_mode)


def make_switching_goal(schedules=None, clock_start=0, steps_per_tick=1, model_mode="live", **env_kwargs) -> gym.Env:
    """``hybrid_pg/SwitchingGoal-v0``: PointMassGoalEnv, the goal jumping between corners every 10k steps."""
    from .goal import PointMassGoalEnv

    return _wrapped(PointMassGoalEnv(**env_kwargs), schedules, SWITCHING_GOAL_SCHEDULES, clock_start, steps_per_tick, model_mode)


def make_drifting_coupled_bandit(schedules=None, clock_start=0, steps_per_tick=1, model_mode="live", **env_kwargs) -> gym.Env:
    """``hybrid_pg/DriftingCoupledBandit-v0``: CoupledBanditEnv, m = 2 sin(2 pi t / 20000)."""
    from .coupled_bandit import CoupledBanditEnv

    return _wrapped(CoupledBanditEnv(**env_kwargs), schedules, DRIFTING_BANDIT_SCHEDULES, clock_start, steps_per_tick, model_mode)


__all__ = [
    "CLOCK_INFO_KEY",
    "INFO_KEY",
    "MODEL_MODES",
    "NonStationaryWrapper",
    "find_nonstationary_wrapper",
    "get_clocks",
    "load_vec_state_dicts",
    "make_drifting_coupled_bandit",
    "make_drifting_goal",
    "make_switching_goal",
    "make_switching_pendulum",
    "sync_clock",
    "vec_state_dicts",
]
