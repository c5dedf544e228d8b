"""A true-gradient reference for a Gaussian policy: Monte Carlo returns, no learned value inside.

Which quantity. HybridPG's update at theta_old (like PPO's and A2C's: the gradient of the clipped
surrogate at ratio 1) estimates

    g(theta) = E_{s ~ d} [ grad_theta E_{a ~ pi_theta(.|s)} Q_gamma(s, a) ]

where Q_gamma is the gamma-discounted return of the current policy from (s, a), with the rewards the
update sees (VecNormalize's scaling and clipping at its frozen statistics), and d a distribution of
states. Two of them:

* **visitation** (the audit, :mod:`hybrid_pg.experiments.gradient_audit`): the states of the
  algorithm's own rollouts (continuing episodes, every step weighted alike). Returns continue
  through time-limit truncations, which SB3 bootstraps as if the episode went on, and end at
  terminations. This is the quantity both of the algorithm's estimators are unbiased for when
  their value (GAE's V, the critic Q~) is exact.
* **discounted** (:func:`reference_gradient`): the states of whole episodes from reset, each
  weighted by gamma^t, returns ending where the episode ends. Then g is the gradient of the expected
  discounted return from the start distribution (the policy-gradient theorem), which has closed
  forms on the LQR and the coupled bandit: the tests check the reference against them.

How, at one state s (a deep copy of the env there, the user's wrappers included, a non-stationary
env's clock held where it is): K >= 2 actions a_k ~ pi(.|s), each followed by a Monte Carlo
return G_k of the policy, and

    g_hat(s) = (1/K) sum_k (G_k - mean_{j != k} G_j) grad_theta log pi(a_k | s).

Unbiased: E[G_k | s, a_k] = Q(s, a_k), and the leave-one-out baseline does not depend on a_k. The
K continuations from one state share their random numbers (the policy's noise, the env's RNG,
copied with the env, and the tail length below): each G_k stays unbiased and the baseline stays
independent of a_k, while the continuation noise mostly cancels from the differences G_k - G_j.

No horizon bias. A return is summed exactly for H0 steps (gamma^H0 <= ``tail_weight``), then for
T ~ Geometric(1 - gamma) more steps (P(T > j) = gamma^j) with undiscounted rewards scaled by
gamma^H0: E sum_{j<T} r_{H0+j} = sum_j gamma^j r_{H0+j}, so the return is unbiased for the infinite
discounted sum ("Russian roulette") at an expected 1 / (1 - gamma) extra steps.

Precision. States come in independent *units* (a rollout from its own reset seed, an episode),
each unit's estimate is an average (or, for ``discounted``, a sum) over its states, and the unit
estimates are i.i.d.: the standard error comes from their spread, the split-half cosine
(Ilyas et al. 2020) from the means of two halves of the units, and the reliability of the full
estimate from that cosine (Spearman-Brown). A noisy reference pulls every cosine against it towards 0
by the same factor sqrt(reliability), which :func:`corrected_cosine` undoes.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import gymnasium as gym
import numpy as np
import torch as th
from torch import nn

from hybrid_pg.surrogates import gaussian_log_prob

#: the policy's parameter groups the reference reports (as the weight's statistics do): the mean
#: network (latent MLP and action layer) and log_std
GROUPS = ("mean", "log_std")

EnvSpec = Union[str, gym.Env, Callable[[], gym.Env]]


# ------------------------------------------------------------------------------------------------
# the policy: mean, log_std and parameter groups of any SB3 diagonal-Gaussian actor-critic policy
# ------------------------------------------------------------------------------------------------


def group_parameters(policy: Any) -> Dict[str, List[nn.Parameter]]:
    """The policy's parameters by group: ``mean`` (the actor's latent MLP and action layer) and
    ``log_std``. A features extractor is left out, as in the weight's statistics."""
    if not isinstance(getattr(policy, "log_std", None), nn.Parameter):
        raise TypeError(
            "the reference gradient needs a diagonal Gaussian policy with a state-independent log_std parameter "
            "(SB3's MlpPolicy for Box actions, HybridPG's policies); gSDE and squashed policies are not supported"
        )
    mean = [*policy.mlp_extractor.policy_net.parameters(), *policy.action_net.parameters()]
    return {"mean": mean, "log_std": [policy.log_std]}


def policy_mean_log_std(policy: Any, obs: th.Tensor) -> tuple:
    """(mean, log_std) of the policy at a batch of (normalised) observations."""
    if hasattr(policy, "actor_mean"):
        return policy.actor_mean(obs), policy.log_std
    features = policy.extract_features(obs, policy.pi_features_extractor)
    return policy.action_net(policy.mlp_extractor.forward_actor(features)), policy.log_std


def flat_group_gradients(scalar: th.Tensor, groups: Dict[str, List[nn.Parameter]], retain_graph: bool = False) -> Dict[str, th.Tensor]:
    """d scalar / d parameters, flattened per group (float64); parameters it does not reach give 0."""
    names = list(groups)
    params = [p for n in names for p in groups[n]]
    grads = th.autograd.grad(scalar, params, retain_graph=retain_graph, allow_unused=True)
    out, i = {}, 0
    for name in names:
        parts = []
        for p in groups[name]:
            g = grads[i]
            parts.append((th.zeros_like(p) if g is None else g).reshape(-1).double())
            i += 1
        out[name] = th.cat(parts) if parts else th.zeros(0, dtype=th.float64)
    return out


# ------------------------------------------------------------------------------------------------
# the env side: copies, the clock, normalisation
# ------------------------------------------------------------------------------------------------


def _restore_simulator(source: gym.Env, copy_: gym.Env) -> None:
    """Give ``copy_`` the simulator state of ``source`` where a deep copy does not carry it.

    gymnasium's MuJoCo envs pickle by their constructor arguments (``EzPickle``), so
    ``copy.deepcopy`` of one is a freshly built env at its initial state (its wrappers' own state,
    e.g. a time limit's step count or a clock, is copied as usual). The simulator's full state
    (``MjData``: positions, velocities, actuator states, time, warm start) is copied over, and so is
    every numeric array of the ``MjModel``, which a non-stationary wrapper may have changed (friction,
    masses) and would not re-apply while its parameters stay the same.
    """
    # gymnasium's MujocoEnv (its model and data attributes), found by duck typing
    src: Any = source.unwrapped
    dst: Any = copy_.unwrapped
    data = getattr(src, "data", None)
    if data is None or type(data).__name__ != "MjData":
        return
    import mujoco

    for name in dir(src.model):
        if name.startswith("_"):
            continue
        value = getattr(src.model, name, None)
        if isinstance(value, np.ndarray) and value.flags.writeable:
            target = getattr(dst.model, name)
            if target.shape == value.shape:
                target[...] = value
    mujoco.mj_copyData(dst.data, dst.model, src.data)


def clone_env(env: gym.Env, without_monitor: bool = False) -> gym.Env:
    """A copy of ``env`` in its current state, the user's wrappers included (SB3's Monitor spliced
    out with ``without_monitor``: it refuses steps after an episode ended, and the reference's
    returns continue through time limits); MuJoCo envs get their simulator state copied
    (:func:`_restore_simulator`)."""
    if without_monitor:
        from hybrid_pg.oracle import copy_env_without_monitor

        new = copy_env_without_monitor(env)
    else:
        new = copy.deepcopy(env)
    _restore_simulator(env, new)
    return new


def hold_clock(env: gym.Env) -> None:
    """Hold a non-stationary env's clock where it is (one moment's parameters); no-op otherwise."""
    try:
        get_clock = env.get_wrapper_attr("get_clock")
        set_clock = env.get_wrapper_attr("set_clock")
    except AttributeError:
        return
    set_clock(int(get_clock()), steps_per_tick=0)


@dataclass
class Normalisation:
    """The observation and reward transforms the update sees (VecNormalize at frozen statistics)."""

    vec_normalize: Any = None

    def obs(self, raw: np.ndarray) -> np.ndarray:
        vn = self.vec_normalize
        return raw if vn is None or not vn.norm_obs else vn.normalize_obs(raw)

    def reward(self, raw: np.ndarray) -> np.ndarray:
        vn = self.vec_normalize
        return raw if vn is None or not vn.norm_reward else vn.normalize_reward(raw)


def make_env(env: EnvSpec) -> gym.Env:
    """A fresh env from an env id, a factory, or (deep-copied, Monitor spliced out) an env."""
    if isinstance(env, str):
        return gym.make(env)
    if isinstance(env, gym.Env):
        return clone_env(env, without_monitor=True)
    if callable(env):
        return env()
    raise TypeError(f"env must be an env id, a gymnasium env or an env factory; got {type(env).__name__}")


def tail_horizon(gamma: float, tail_weight: float) -> int:
    """H0: the first step whose discount gamma^H0 is at most ``tail_weight`` (0 for gamma = 0)."""
    if not 0.0 < tail_weight < 1.0:
        raise ValueError(f"tail_weight must be in (0, 1), got {tail_weight}")
    if gamma <= 0.0:
        return 1
    if gamma >= 1.0:
        raise ValueError("the reference's unbiased tail needs gamma < 1 (an undiscounted return has no geometric tail)")
    return max(1, math.ceil(math.log(tail_weight) / math.log(gamma)))


# ------------------------------------------------------------------------------------------------
# Monte Carlo returns from saved states
# ------------------------------------------------------------------------------------------------


@dataclass
class Returns:
    """Monte Carlo returns G[i, k] of action k at state i, and what they cost."""

    values: np.ndarray
    env_steps: int
    #: states whose K returns all ended by termination (else by truncation or the tail)
    terminated: np.ndarray


@th.no_grad()
def monte_carlo_returns(
    policy: nn.Module,
    snapshots: Sequence[gym.Env],
    first_actions: np.ndarray,
    normalisation: Normalisation,
    gamma: float,
    rng: np.random.Generator,
    tail_weight: float = 0.05,
    through_truncation: bool = True,
    max_steps: int = 1_000_000,
) -> Returns:
    """The discounted return of ``first_actions[i, k]`` taken at the state of ``snapshots[i]`` and
    the policy afterwards (module docstring: unbiased tail, common random numbers per state).

    The snapshots are not modified: each return runs on its own deep copy. ``first_actions`` has
    shape (N, K, action_dim); actions are clipped to the env's bounds as SB3 does.
    """
    n, k = first_actions.shape[:2]
    low, high = _box_bounds(snapshots[0].action_space)
    h0 = tail_horizon(gamma, tail_weight)
    stop = h0 + np.asarray(rng.geometric(1.0 - gamma, size=n) if gamma > 0 else np.zeros(n, dtype=int))
    envs = [[clone_env(snapshots[i]) for _ in range(k)] for i in range(n)]
    values = np.zeros((n, k))
    ended_by_termination = np.zeros((n, k), dtype=bool)
    alive = [(i, j) for i in range(n) for j in range(k)]
    actions = {(i, j): first_actions[i, j] for i, j in alive}
    device = next(policy.parameters()).device
    steps, t = 0, 0
    while alive:
        if t >= max_steps:
            raise RuntimeError(f"a reference return ran {max_steps} steps without ending (gamma {gamma}): raise max_steps")
        weight = gamma**t if t < h0 else gamma**h0
        still, raw_obs = [], []
        for i, j in alive:
            obs, reward, terminated, truncated, _ = envs[i][j].step(np.clip(actions[(i, j)], low, high))
            steps += 1
            values[i, j] += weight * float(normalisation.reward(np.asarray([reward], dtype=np.float64))[0])
            if terminated:
                ended_by_termination[i, j] = True
            elif (truncated and not through_truncation) or t + 1 >= stop[i]:
                pass
            else:
                still.append((i, j))
                raw_obs.append(obs)
        alive, t = still, t + 1
        if not alive:
            break
        # the policy's next actions, one noise draw per state shared by its K continuations
        noise = rng.standard_normal((n, low.shape[0]))
        obs_t = th.as_tensor(normalisation.obs(np.asarray(raw_obs)), dtype=th.float32, device=device)
        mean, log_std = policy_mean_log_std(policy, obs_t)
        std = th.exp(log_std).expand_as(mean).cpu().numpy()
        mean = mean.cpu().numpy()
        actions = {(i, j): mean[r] + std[r] * noise[i] for r, (i, j) in enumerate(alive)}
    return Returns(values=values, env_steps=steps, terminated=np.asarray(ended_by_termination.all(axis=1)))


def _box_bounds(space: gym.Space) -> tuple:
    """(low, high) of a Box action space; other spaces have no Gaussian policy to differentiate."""
    if not isinstance(space, gym.spaces.Box):
        raise TypeError(f"the reference gradient needs a Box action space, got {space}")
    return space.low, space.high


def sample_actions(policy: nn.Module, obs: th.Tensor, n_actions: int, generator: th.Generator, antithetic: bool = False) -> th.Tensor:
    """(N, K, action_dim) actions drawn from the policy at each of N observations. ``antithetic``:
    in pairs mu + sigma eps, mu - sigma eps (K even), each action still distributed as the policy."""
    if antithetic and (n_actions < 4 or n_actions % 2):
        raise ValueError(f"antithetic actions need an even n_actions >= 4 (a baseline from the other pairs), got {n_actions}")
    with th.no_grad():
        mean, log_std = policy_mean_log_std(policy, obs)
        draws = n_actions // 2 if antithetic else n_actions
        noise = th.randn((mean.shape[0], draws, mean.shape[1]), generator=generator, device=mean.device)
        if antithetic:
            noise = th.stack([noise, -noise], dim=2).reshape(mean.shape[0], n_actions, mean.shape[1])
        return mean[:, None, :] + th.exp(log_std) * noise


def score_contributions(policy: nn.Module, obs: th.Tensor, actions: th.Tensor, returns: np.ndarray, antithetic: bool = False) -> th.Tensor:
    """Per-state surrogate sum_k c_k log pi(a_k|s) with c_k = (G_k - b_k) / K: its gradient is g_hat(s).
    Shape (N,), differentiable.

    b_k is the mean return of the *other* actions (leave-one-out), and with ``antithetic`` actions
    (pairs mu +- sigma eps, :func:`sample_actions`) of the other *pairs*: a baseline must not depend
    on a_k, and a_k's partner does. Antithetic pairs make the mean's estimate a central difference,
    (G(mu + sigma eps) - G(mu - sigma eps)) eps / sigma, whose noise is far smaller when Q is smooth
    in the action."""
    n, k = returns.shape
    if k < 2:
        raise ValueError("the reference needs n_actions >= 2 (a leave-one-out baseline)")
    g = th.as_tensor(returns, dtype=th.float64, device=actions.device)
    if antithetic:
        if k < 4 or k % 2:
            raise ValueError(f"antithetic actions need an even n_actions >= 4, got {k}")
        pair_sum = g.reshape(n, k // 2, 2).sum(dim=2).repeat_interleave(2, dim=1)
        baseline = (g.sum(dim=1, keepdim=True) - pair_sum) / (k - 2)
    else:
        baseline = (g.sum(dim=1, keepdim=True) - g) / (k - 1)
    coef = ((g - baseline) / k).float()
    mean, log_std = policy_mean_log_std(policy, obs)
    log_prob = gaussian_log_prob(mean[:, None, :].expand_as(actions), log_std, actions)
    return (coef * log_prob).sum(dim=1)


# ------------------------------------------------------------------------------------------------
# the estimate, unit by unit, and its precision
# ------------------------------------------------------------------------------------------------


def cosine(a: th.Tensor, b: th.Tensor) -> float:
    na, nb = float(a.norm()), float(b.norm())
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 else float("nan")


def spearman_brown(r: float, factor: float) -> float:
    """Reliability of an average of ``factor`` times as many units as one of reliability ``r``."""
    if not math.isfinite(r):
        return float("nan")
    r = min(max(r, 1e-12), 1.0)
    return factor * r / (1.0 + (factor - 1.0) * r)


def corrected_cosine(raw: float, reliability: float) -> float:
    """A cosine against a noisy reference, corrected for the reference's reliability (its expected
    squared cosine with the truth): raw / sqrt(reliability), kept in [-1, 1] (the reliability is
    itself estimated, and a noisy estimate can push the ratio past 1)."""
    if not (math.isfinite(raw) and math.isfinite(reliability)) or reliability <= 0:
        return float("nan")
    return max(-1.0, min(1.0, raw / math.sqrt(reliability)))


@dataclass
class ReferenceGradient:
    """Per-unit estimates of the reference gradient and what they cost.

    :ivar units: group -> (U, dim) float64 tensor, one row per independent unit.
    """

    units: Dict[str, th.Tensor]
    n_states: int
    n_actions: int
    env_steps: int
    seconds: float
    gamma: float
    weighting: str
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def n_units(self) -> int:
        return int(next(iter(self.units.values())).shape[0])

    def _rows(self, group: str) -> th.Tensor:
        if group == "all":
            return th.cat([self.units[g] for g in GROUPS if g in self.units], dim=1)
        return self.units[group]

    def mean(self, group: str = "all") -> th.Tensor:
        return self._rows(group).mean(dim=0)

    def se(self, group: str = "all") -> th.Tensor:
        """Per-coordinate standard error of :meth:`mean` (units are i.i.d.)."""
        rows = self._rows(group)
        return rows.std(dim=0, unbiased=True) / math.sqrt(rows.shape[0])

    def relative_se(self, group: str = "all") -> float:
        """sqrt(trace Cov(mean)) / ||mean||: the noise's size against the signal's."""
        rows = self._rows(group)
        return float(self.se(group).norm() / rows.mean(dim=0).norm().clamp_min(1e-300))

    def split_half_cosine(self, group: str = "all") -> float:
        """Cosine between the means of the even and the odd units: two independent halves."""
        rows = self._rows(group)
        if rows.shape[0] < 2:
            return float("nan")
        return cosine(rows[0::2].mean(dim=0), rows[1::2].mean(dim=0))

    def reliability(self, group: str = "all", n_units: Optional[int] = None) -> float:
        """Expected squared cosine between the mean of ``n_units`` units (default: all of them) and
        the true gradient, from the split-half cosine (Spearman-Brown from half the units)."""
        half = self.n_units / 2.0
        return spearman_brown(self.split_half_cosine(group), (n_units or self.n_units) / half)

    def summary(self, group: str = "all") -> Dict[str, float]:
        return {
            "norm": float(self.mean(group).norm()),
            "relative_se": self.relative_se(group),
            "split_half_cosine": self.split_half_cosine(group),
            "reliability": self.reliability(group),
            "units": self.n_units,
            "states": self.n_states,
            "env_steps": self.env_steps,
            "seconds": self.seconds,
        }


def unit_gradients(
    policy: nn.Module, per_state: th.Tensor, weights: th.Tensor, units: np.ndarray, divisors: Dict[int, float]
) -> Dict[str, th.Tensor]:
    """One gradient per unit: sum over its states of weight * per-state surrogate, / divisor."""
    groups = group_parameters(policy)
    labels = list(dict.fromkeys(int(u) for u in units))
    rows: Dict[str, List[th.Tensor]] = {g: [] for g in GROUPS}
    for label in labels:
        idx = th.as_tensor(np.flatnonzero(units == label), device=per_state.device)
        scalar = (per_state[idx] * weights[idx]).sum() / divisors[label]
        grads = flat_group_gradients(scalar, groups, retain_graph=True)
        for g in GROUPS:
            rows[g].append(grads[g])
    return {g: th.stack(rows[g]) for g in GROUPS}


def _policy_obs(normalisation: Normalisation, raw: np.ndarray, device: Any) -> th.Tensor:
    return th.as_tensor(normalisation.obs(np.asarray(raw)), dtype=th.float32, device=device)


def reference_gradient(
    model: Any,
    env: EnvSpec,
    n_episodes: int = 64,
    n_actions: int = 4,
    state_stride: int = 1,
    seed: int = 0,
    tail_weight: float = 0.05,
    vec_normalize: Any = None,
    antithetic: bool = True,
) -> ReferenceGradient:
    """The gradient of the expected discounted return from the start distribution, at the model's
    current parameters (the ``discounted`` weighting of the module docstring), unbiased.

    ``n_episodes`` whole episodes are run from reset (seeds ``seed``, ``seed + 1``, ...); every
    ``state_stride``-th state of each (from a random offset, weight scaled by the stride, which keeps
    the sum unbiased) gets ``n_actions`` Monte Carlo returns (antithetic pairs by default: see
    :func:`score_contributions`). One unit per episode.

    :param model: an SB3 on-policy model with a diagonal Gaussian policy (HybridPG, PPO, A2C).
    :param env: env id, gymnasium env (deep-copied) or factory: the env the gradient is of, with the
        user's wrappers. A non-stationary env's clock is held at its current value.
    :param vec_normalize: the VecNormalize whose frozen statistics define the policy's inputs and the
        rewards (default: the model's, if it has one).
    """
    if n_episodes < 2:
        raise ValueError(f"n_episodes must be >= 2 (the standard error needs two units), got {n_episodes}")
    if state_stride < 1:
        raise ValueError(f"state_stride must be >= 1, got {state_stride}")
    start = time.perf_counter()
    policy, gamma = model.policy, float(model.gamma)
    vn = vec_normalize if vec_normalize is not None else model.get_vec_normalize_env()
    norm = Normalisation(vn)
    device = next(policy.parameters()).device
    rng = np.random.default_rng(seed)
    generator = th.Generator(device=device).manual_seed(seed)
    base = make_env(env)
    hold_clock(base)
    low, high = _box_bounds(base.action_space)
    snapshots, raw_obs, weights, units = [], [], [], []
    steps = 0
    for episode in range(n_episodes):
        obs, _ = base.reset(seed=seed + episode)
        offset, t, done = int(rng.integers(state_stride)), 0, False
        while not done:
            if t % state_stride == offset:
                snapshots.append(clone_env(base))
                raw_obs.append(obs)
                weights.append(state_stride * gamma**t)
                units.append(episode)
            with th.no_grad():
                mean, log_std = policy_mean_log_std(policy, _policy_obs(norm, obs[None], device))
                action = (mean + th.exp(log_std) * th.randn(mean.shape, generator=generator, device=device))[0].cpu().numpy()
            obs, _, terminated, truncated, _ = base.step(np.clip(action, low, high))
            steps, t, done = steps + 1, t + 1, terminated or truncated
    obs_t = _policy_obs(norm, np.asarray(raw_obs), device)
    actions = sample_actions(policy, obs_t, n_actions, generator, antithetic=antithetic)
    returns = monte_carlo_returns(policy, snapshots, actions.cpu().numpy(), norm, gamma, rng, tail_weight, through_truncation=False)
    per_state = score_contributions(policy, obs_t, actions, returns.values, antithetic=antithetic)
    units_arr = np.asarray(units)
    grads = unit_gradients(
        policy, per_state, th.as_tensor(weights, dtype=th.float32, device=device), units_arr, {u: 1.0 for u in set(units)}
    )
    return ReferenceGradient(
        units=grads,
        n_states=len(snapshots),
        n_actions=n_actions,
        env_steps=steps + returns.env_steps,
        seconds=time.perf_counter() - start,
        gamma=gamma,
        weighting="discounted",
    )
