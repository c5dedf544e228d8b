"""A one-step bandit version of the coupled synthetic problem, with lam* in closed form.

Usage::

    import gymnasium as gym
    import hybrid_pg_envs  # registers the hybrid_pg/ ids
    from hybrid_pg.ground_truth.coupled_bandit import oracle_lambda  # the closed form lives with the library

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
from typing import Any, Optional, Tuple

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces

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

    max_episode_steps = 1  # Q~ = r: no value bootstrap, so the pathwise gradient is exact

    # buffers registered in __init__, declared so the type checker sees tensors (not Tensor | Module)
    m: th.Tensor
    c: th.Tensor
    action_bound: th.Tensor

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


__all__ = ["DEFAULT_ACTION_BOUND", "PHYSICAL_PARAMETERS", "CoupledBanditEnv", "CoupledBanditModel"]
