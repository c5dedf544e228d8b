"""A one-step bandit version of the coupled synthetic problem, with lam* in closed form.

Usage::

    import gymnasium as gym
    import hybrid_pg_envs  # registers the hybrid_pg/ ids
    from hybrid_pg_envs.coupled_bandit import oracle_lambda

    env = gym.make("hybrid_pg/CoupledBandit-v0", m=1.0, c=1.0)   # stationary
    env = gym.make("hybrid_pg/DriftingCoupledBandit-v0")          # m = 2 sin(2 pi t / 20000)
    lam = oracle_lambda(policy_mean=0.3, policy_log_std=0.0, m=1.0, c=1.0)

MDP: every episode is one step. The observation is the constant ``[1.0]``; the action is a scalar
``z`` in ``[-action_bound, action_bound]`` (default 50: wide, so SB3's clipping of a Gaussian
policy's action to the bounds practically never bites) and the reward is
``-min((z - m)^2, c^2)``: the negated objective ``f`` of :mod:`hybrid_pg.ground_truth.coupled`.
``m`` (the target) and ``c`` (the clipping radius) are physical parameters: a
:class:`~hybrid_pg_envs.nonstationary.NonStationaryWrapper` can drift or switch them, and then
lam* at every moment is known exactly, the ground truth for tracking figures.

Ground truth for a Gaussian policy
----------------------------------
A Gaussian policy ``z = mu + sigma eps`` (SB3's, with a state-independent ``log_std``) has *two*
parameters, ``mu`` and ``log sigma``, moved independently. :mod:`hybrid_pg.ground_truth.coupled`
has a single parameter theta with ``mu = theta`` and ``log sigma = alpha theta``, i.e. the
gradient along the direction ``v = (1, alpha)`` only; the weight the algorithm estimates is the
trace one, over all policy parameters. So here the per-sample gradients are 2-vectors,

    pathwise  g_P = f'(z) (1, sigma eps),                     f'(z) = 2 (z - m) 1{|z - m| < c}
    score     g_M = (f(z) - b) (eps / sigma, eps^2 - 1),

(negated for rewards; the sign flips both and changes no second moment), and every first and
second moment is a truncated-normal moment on the interval ``|z - m| < c``, exactly as in
coupled.py. lam* comes from the trace moments
``Var_P = tr(W Cov g_P)``, ``Var_M = tr(W Cov g_M)``, ``Cov = tr(W Cov(g_P, g_M))`` via
:func:`hybrid_pg.estimator.lambda_from_moments`, with a metric ``W``:

* identity (default): the two parameters (mu, log_std) themselves;
* ``(w, 1)`` with ``w = ||d mu / d theta||^2``: an MLP mean on the constant observation (the mean's
  gradient with respect to the network is a fixed Jacobian times g_mu), as HybridPG's ``global``
  weight sees it;
* ``(1, 0)`` / ``(0, 1)``: the ``mean`` / ``log_std`` groups of ``lambda_groups="per_group"``;
* ``v v^T`` with ``v = (1, alpha)``: coupled.py's scalar problem (tested to agree with it).

The baseline of the score estimator: ``"mean"`` (default, the expected reward: what a perfect
value function gives on the constant observation), None (none) or a number (in reward units).
Advantage normalisation divides both estimators by the same factor and leaves lam* unchanged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence, Tuple, Union

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from numpy.polynomial import polynomial as npoly
from scipy import special

from .differentiable import DifferentiableModel

PHYSICAL_PARAMETERS = ("m", "c")
DEFAULT_ACTION_BOUND = 50.0


def _finite(name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a real number, got {value!r}") from exc
    if not math.isfinite(v) or (positive and v <= 0):
        raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}, got {value!r}")
    return v


# ---------------------------------------------------------------------------------------------
# env and model
# ---------------------------------------------------------------------------------------------


class CoupledBanditModel(DifferentiableModel):
    """Torch twin of :meth:`CoupledBanditEnv.step`: obs ``(..., 1)``, action ``(..., 1)`` ->
    the same obs and ``-min((z - m)^2, c^2)``; every transition is terminal."""

    def __init__(self, m: float = 0.0, c: float = 1.0, action_bound: float = DEFAULT_ACTION_BOUND):
        super().__init__()
        for name, value in dict(m=m, c=c, action_bound=action_bound).items():
            self.register_buffer(name, th.tensor(float(value), dtype=th.float64))

    def step(self, obs: th.Tensor, action: th.Tensor) -> Tuple[th.Tensor, th.Tensor]:
        m, c, bound = (buf.to(obs) for buf in (self.m, self.c, self.action_bound))
        z = th.clamp(action[..., 0].to(obs), -bound, bound)
        reward = -th.minimum((z - m) ** 2, c**2)
        return obs.clone(), reward

    def terminal(self, next_obs: th.Tensor) -> th.Tensor:
        return th.ones(next_obs.shape[:-1], dtype=next_obs.dtype, device=next_obs.device)


class CoupledBanditEnv(gym.Env):
    """One-step bandit, reward ``-min((z - m)^2, c^2)``; see the module docstring."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    physical_parameters = PHYSICAL_PARAMETERS
    render_size = 96

    def __init__(self, m: float = 0.0, c: float = 1.0, action_bound: float = DEFAULT_ACTION_BOUND, render_mode: Optional[str] = None):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode
        self.m, self.c = 0.0, 1.0
        self.set_physical_parameters(m=m, c=c)
        self.action_bound = _finite("action_bound", action_bound, positive=True)
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Box(-self.action_bound, self.action_bound, shape=(1,), dtype=np.float32)
        self.last_action: Optional[float] = None

    def set_physical_parameters(self, **values: Any) -> None:
        """Validated update of ``m`` (finite) and ``c`` (> 0)."""
        unknown = sorted(set(values) - set(PHYSICAL_PARAMETERS))
        if unknown:
            raise ValueError(f"unknown physical parameter(s) {unknown}; CoupledBanditEnv has {list(PHYSICAL_PARAMETERS)}")
        checked = {k: _finite(k, v, positive=(k == "c")) for k, v in values.items()}
        for k, v in checked.items():
            setattr(self, k, v)

    def _obs(self) -> np.ndarray:
        return np.ones(1, dtype=np.float32)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        self.last_action = None
        return self._obs(), {}

    def step(self, action):
        z = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -self.action_bound, self.action_bound))
        self.last_action = z
        reward = -min((z - self.m) ** 2, self.c**2)
        return self._obs(), float(reward), True, False, {}

    def render(self) -> Optional[np.ndarray]:
        """The window [m - 2c, m + 2c]: the unclipped band |z - m| < c in grey, m as a red line,
        the last action as a blue line."""
        if self.render_mode != "rgb_array":
            return None
        size = self.render_size
        img = np.full((size, size, 3), 255, dtype=np.uint8)

        def col(z: float) -> int:
            return int(round((np.clip((z - self.m) / (4 * self.c), -0.5, 0.5) + 0.5) * (size - 1)))

        img[:, col(self.m - self.c) : col(self.m + self.c) + 1] = 220
        img[:, col(self.m)] = (200, 40, 40)
        if self.last_action is not None:
            img[:, col(self.last_action)] = (30, 90, 200)
        return img

    def get_differentiable_model(self) -> CoupledBanditModel:
        return CoupledBanditModel(m=self.m, c=self.c, action_bound=self.action_bound)


# ---------------------------------------------------------------------------------------------
# closed-form moments for a Gaussian policy (mu, log_std)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BanditMoments:
    """Exact moments of the per-sample gradients w.r.t. (mu, log_std) (reward units).

    :ivar expected_reward: E r = -E min((z - m)^2, c^2).
    :ivar grad: d E r / d(mu, log_std), from the pathwise mean; ``grad_score`` from the score mean
        (they agree: both estimators are unbiased).
    :ivar cov_path, cov_score, cross: 2x2 Cov(g_P), Cov(g_M), Cov(g_P, g_M) (row: g_P component).
    :ivar var_path, var_score, cov: their traces against ``metric``.
    :ivar lam_star: the unclipped variance-optimal weight; ``lam``: at ``bounds`` (= lam_star if None).
    :ivar clip_mass: P(|z| > action_bound), the mass the env's clipping changes (the closed form
        ignores it; keep it negligible).
    """

    mu: float
    log_std: float
    sigma: float
    m: float
    c: float
    baseline: float
    expected_reward: float
    grad: Tuple[float, float]
    grad_score: Tuple[float, float]
    cov_path: Tuple[Tuple[float, float], Tuple[float, float]]
    cov_score: Tuple[Tuple[float, float], Tuple[float, float]]
    cross: Tuple[Tuple[float, float], Tuple[float, float]]
    metric: Tuple[Tuple[float, float], Tuple[float, float]]
    var_path: float
    var_score: float
    cov: float
    lam_star: float
    lam: float
    var_hybrid: float
    variance_reduction: float
    corr: float
    clip_mass: float
    bounds: Optional[Tuple[float, float]] = None

    def as_dict(self) -> dict:
        return asdict(self)


def _metric(metric: Any) -> np.ndarray:
    if metric is None:
        return np.eye(2)
    W = np.asarray(metric, dtype=np.float64)
    if W.shape == (2,):
        W = np.diag(W)
    if W.shape != (2, 2) or not np.all(np.isfinite(W)):
        raise ValueError(f"metric must be None, 2 weights or a 2x2 matrix of finite numbers, got {metric!r}")
    if not np.allclose(W, W.T) or np.linalg.eigvalsh(W).min() < -1e-12 * max(1.0, np.abs(W).max()):
        raise ValueError(f"metric must be symmetric positive semi-definite, got {W.tolist()}")
    if not np.any(W):
        raise ValueError("metric must not be zero")
    return W


def _tuple2(a: np.ndarray) -> Tuple[Tuple[float, float], Tuple[float, float]]:
    return (float(a[0, 0]), float(a[0, 1])), (float(a[1, 0]), float(a[1, 1]))


def expected_reward(policy_mean: float, policy_log_std: float, m: float = 0.0, c: float = 1.0) -> float:
    """E r for z ~ N(mu, sigma^2): -(E[u^2 1{|u| < c}] + c^2 P(|u| >= c)), u = z - m."""
    from hybrid_pg.ground_truth.coupled import truncated_normal_moments

    mu, log_std, m, c = _check_args(policy_mean, policy_log_std, m, c)
    s = math.exp(log_std)
    d = mu - m
    M = truncated_normal_moments((-c - d) / s, (c - d) / s, 2)
    return -float(d * d * M[0] + 2 * d * s * M[1] + s * s * M[2] + c * c * (1.0 - M[0]))


def _check_args(mu: Any, log_std: Any, m: Any, c: Any) -> Tuple[float, float, float, float]:
    mu, log_std, m = _finite("policy_mean", mu), _finite("policy_log_std", log_std), _finite("m", m)
    c = _finite("c", c, positive=True)
    if not -50.0 < log_std < 50.0:
        raise ValueError(f"policy_log_std must lie in (-50, 50), got {log_std}")
    return mu, log_std, m, c


def bandit_moments(
    policy_mean: float,
    policy_log_std: float,
    m: float = 0.0,
    c: float = 1.0,
    baseline: Union[str, float, None] = "mean",
    *,
    metric: Any = None,
    bounds: Optional[Tuple[float, float]] = None,
    action_bound: float = DEFAULT_ACTION_BOUND,
) -> BanditMoments:
    """Every first and second moment of the (mu, log_std) gradients in closed form, and lam*.

    :param baseline: ``"mean"`` (E r), None (0) or a number, in reward units.
    :param metric: None (identity), 2 weights, or a 2x2 PSD matrix W (see the module docstring).
    :param bounds: clip range for ``lam`` (None: lam = lam_star).
    :param action_bound: only for ``clip_mass``.
    """
    from hybrid_pg.estimator import lambda_from_moments
    from hybrid_pg.ground_truth.coupled import truncated_normal_moments

    mu, log_std, m, c = _check_args(policy_mean, policy_log_std, m, c)
    W = _metric(metric)
    s = math.exp(log_std)
    d = mu - m
    reward_mean = expected_reward(mu, log_std, m, c)
    if isinstance(baseline, str):
        if baseline != "mean":
            raise ValueError(f"baseline must be 'mean', None or a number, got {baseline!r}")
        b_reward = reward_mean
    else:
        b_reward = 0.0 if baseline is None else _finite("baseline", baseline)
    b = -b_reward  # f = -r: the baseline in units of f

    lo, hi = (-c - d) / s, (c - d) / s
    inside = truncated_normal_moments(lo, hi, 8)
    full = truncated_normal_moments(-math.inf, math.inf, 8)

    def e_in(p: np.ndarray) -> float:
        return float(np.dot(p, inside[: len(p)]))

    def e_full(p: np.ndarray) -> float:
        return float(np.dot(p, full[: len(p)]))

    u = np.array([d, s])
    f_in = npoly.polymul(u, u)
    path = [2.0 * u, npoly.polymul(2.0 * u, np.array([0.0, s]))]  # f'(z) * dz/d(mu, log_std)
    w = [np.array([0.0, 1.0 / s]), np.array([-1.0, 0.0, 1.0])]  # dlog p / d(mu, log_std)
    score_in = [npoly.polymul(npoly.polysub(f_in, np.array([b])), wk) for wk in w]
    score_out = [(c * c - b) * wk for wk in w]

    def e_score(p_in: np.ndarray, p_out: np.ndarray) -> float:
        return e_in(p_in) + e_full(p_out) - e_in(p_out)

    mean_p = np.array([e_in(p) for p in path])
    mean_s = np.array([e_score(score_in[k], score_out[k]) for k in range(2)])
    second_p = np.array([[e_in(npoly.polymul(path[j], path[k])) for k in range(2)] for j in range(2)])
    second_s = np.array(
        [[e_score(npoly.polymul(score_in[j], score_in[k]), npoly.polymul(score_out[j], score_out[k])) for k in range(2)] for j in range(2)]
    )
    second_x = np.array([[e_in(npoly.polymul(path[j], score_in[k])) for k in range(2)] for j in range(2)])  # g_P = 0 outside
    cov_p = second_p - np.outer(mean_p, mean_p)
    cov_s = second_s - np.outer(mean_s, mean_s)
    cross = second_x - np.outer(mean_p, mean_s)

    var_p = max(float(np.sum(W * cov_p)), 0.0)
    var_s = max(float(np.sum(W * cov_s)), 0.0)
    cov = float(np.sum(W * cross))  # tr(W cross) for symmetric W
    raw = lambda_from_moments(var_p, var_s, cov, bounds=None)
    est = raw if bounds is None else lambda_from_moments(var_p, var_s, cov, bounds=bounds)
    bound = _finite("action_bound", action_bound, positive=True)
    clip_mass = float(special.ndtr((-bound - mu) / s) + special.ndtr((mu - bound) / s))
    return BanditMoments(
        mu=mu,
        log_std=log_std,
        sigma=s,
        m=m,
        c=c,
        baseline=b_reward,
        expected_reward=reward_mean,
        grad=(-float(mean_p[0]), -float(mean_p[1])),
        grad_score=(-float(mean_s[0]), -float(mean_s[1])),
        cov_path=_tuple2(cov_p),
        cov_score=_tuple2(cov_s),
        cross=_tuple2(cross),
        metric=_tuple2(W),
        var_path=var_p,
        var_score=var_s,
        cov=cov,
        lam_star=raw.lam_unclipped,
        lam=est.lam,
        var_hybrid=est.var_hybrid,
        variance_reduction=est.variance_reduction,
        corr=est.corr,
        clip_mass=clip_mass,
        bounds=None if bounds is None else (float(bounds[0]), float(bounds[1])),
    )


def oracle_lambda(
    policy_mean: float,
    policy_log_std: float,
    m: float = 0.0,
    c: float = 1.0,
    baseline: Union[str, float, None] = "mean",
    *,
    metric: Any = None,
    bounds: Optional[Tuple[float, float]] = None,
) -> float:
    """The closed-form lam* for the Gaussian policy N(policy_mean, exp(policy_log_std)^2) on the
    bandit with target ``m`` and clip ``c`` (clipped to ``bounds`` if given); see :func:`bandit_moments`."""
    return bandit_moments(policy_mean, policy_log_std, m, c, baseline, metric=metric, bounds=bounds).lam


def per_sample_gradients(
    policy_mean: float,
    policy_log_std: float,
    eps: Sequence[float],
    m: float = 0.0,
    c: float = 1.0,
    baseline: float = 0.0,
) -> Tuple[np.ndarray, np.ndarray]:
    """(g_P, g_M) per sample, each of shape (N, 2) (columns: mu, log_std), in reward units, for
    given standard-normal draws ``eps`` (baseline a number, reward units). For Monte Carlo checks."""
    mu, log_std, m, c = _check_args(policy_mean, policy_log_std, m, c)
    eps = np.asarray(eps, dtype=np.float64)
    s = math.exp(log_std)
    uu = mu - m + s * eps
    inside = np.abs(uu) < c
    r = -np.where(inside, uu * uu, c * c)
    drdz = np.where(inside, -2.0 * uu, 0.0)
    g_path = np.stack([drdz, drdz * s * eps], axis=-1)
    adv = r - float(baseline)
    g_score = np.stack([adv * eps / s, adv * (eps * eps - 1.0)], axis=-1)
    return g_path, g_score


__all__ = [
    "BanditMoments",
    "CoupledBanditEnv",
    "CoupledBanditModel",
    "bandit_moments",
    "expected_reward",
    "oracle_lambda",
    "per_sample_gradients",
]
