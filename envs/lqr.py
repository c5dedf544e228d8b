"""A finite-horizon linear-quadratic regulator with a differentiable model and a closed form.

Usage::

    import gymnasium as gym
    import hybrid_pg_envs  # registers the hybrid_pg/ ids

    env = gym.make("hybrid_pg/LQR-v0")                 # default 2-state / 1-action system
    env = gym.make("hybrid_pg/LQR-v0", horizon=50, noise_std=0.1)

MDP: ``x' = A x + B u + w``, ``w ~ N(0, noise_std^2 I)``, ``u = clip(action, +-action_bound)``,
reward ``-(x'^T Q x' + u^T R u)`` (on the *next* state, so even a one-step episode couples the
action to the dynamics), ``x0 ~ N(x0_mean, diag(x0_std^2))``. The observation is ``[x, t / T]``:
the time feature makes the finite-horizon problem Markov and lets the model see the end. After
``T = horizon`` steps the episode *terminates* (the horizon is part of the MDP, so it must not
be bootstrapped); no TimeLimit is needed.

The expected return of a linear Gaussian policy has a closed form, see :mod:`hybrid_pg_envs.lqr_exact`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces

from .differentiable import DifferentiableModel

# A double integrator (position, velocity) discretised with dt = 0.1 and light velocity damping:
# controllable, marginally stable in position, so an uncontrolled episode drifts but never explodes.
DEFAULT_DT = 0.1
DEFAULT_A = [[1.0, DEFAULT_DT], [0.0, 0.95]]
DEFAULT_B = [[0.5 * DEFAULT_DT**2], [DEFAULT_DT]]
DEFAULT_Q = [[1.0, 0.0], [0.0, 0.1]]
DEFAULT_R = [[0.01]]

# t / T reaches 1 exactly in float64 but only to within rounding after float32 accumulation
TERMINAL_TOL = 1e-6


def _matrix(name: str, value: Any, shape: Tuple[int, int]) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def validate_lqr(
    A: Any,
    B: Any,
    Q: Any,
    R: Any,
    horizon: Any,
    x0_mean: Any,
    x0_std: Any,
    noise_std: Any,
    action_bound: Any = 1.0,
) -> Dict[str, Any]:
    """Checked float64 numpy versions of the LQR arguments (``x0_mean``/``x0_std`` broadcast to (n,))."""
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] == 0:
        raise ValueError(f"A must be a square (n, n) matrix with n >= 1, got shape {A.shape}")
    n = A.shape[0]
    A = _matrix("A", A, (n, n))
    B = np.asarray(B, dtype=np.float64)
    if B.ndim != 2 or B.shape[0] != n or B.shape[1] == 0:
        raise ValueError(f"B must have shape (n, m) = ({n}, m) with m >= 1 to match A, got {B.shape}")
    m = B.shape[1]
    B = _matrix("B", B, (n, m))
    Q = _matrix("Q", Q, (n, n))
    R = _matrix("R", R, (m, m))
    try:
        ok = not isinstance(horizon, bool) and int(horizon) == horizon and int(horizon) >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
    horizon = int(horizon)
    x0_mean = np.asarray(x0_mean, dtype=np.float64)
    if x0_mean.shape not in ((), (n,)) or not np.all(np.isfinite(x0_mean)):
        raise ValueError(f"x0_mean must be a finite scalar or have shape ({n},), got {x0_mean.shape}")
    x0_std = np.asarray(x0_std, dtype=np.float64)
    if x0_std.shape not in ((), (n,)) or not np.all(np.isfinite(x0_std)) or np.any(x0_std < 0):
        raise ValueError(f"x0_std must be a non-negative finite scalar or have shape ({n},), got {x0_std!r}")
    noise_std = float(noise_std)
    if not np.isfinite(noise_std) or noise_std < 0:
        raise ValueError(f"noise_std must be a non-negative finite number, got {noise_std}")
    action_bound = float(action_bound)
    # SB3 refuses unbounded Box action spaces, so a "no clipping" bound must still be finite
    if not np.isfinite(action_bound) or action_bound <= 0:
        raise ValueError(f"action_bound must be a positive finite number, got {action_bound}")
    return dict(
        A=A,
        B=B,
        Q=Q,
        R=R,
        horizon=horizon,
        x0_mean=np.broadcast_to(x0_mean, (n,)).copy(),
        x0_std=np.broadcast_to(x0_std, (n,)).copy(),
        noise_std=noise_std,
        action_bound=action_bound,
    )


class LQRModel(DifferentiableModel):
    """Batched torch twin of :meth:`LQREnv.step` without the process noise.

    obs ``(..., n + 1)`` (state then t / T), action ``(..., m)`` -> ``(..., n + 1)``, ``(...)``.
    """

    # buffers registered in __init__, declared so the type checker sees tensors (not Tensor | Module)
    A: th.Tensor
    B: th.Tensor
    Q: th.Tensor
    R: th.Tensor
    horizon: th.Tensor
    action_bound: th.Tensor

    def __init__(self, A: Any, B: Any, Q: Any, R: Any, horizon: int, action_bound: float, noise_std: float = 0.0):
        super().__init__()
        for name, value in dict(A=A, B=B, Q=Q, R=R, horizon=horizon, action_bound=action_bound).items():
            self.register_buffer(name, th.as_tensor(np.asarray(value, dtype=np.float64)).clone())
        self.noise_std = float(noise_std)

    def step(self, obs: th.Tensor, action: th.Tensor) -> Tuple[th.Tensor, th.Tensor]:
        A, B, Q, R = (buf.to(obs) for buf in (self.A, self.B, self.Q, self.R))
        n = A.shape[0]
        x, tau = obs[..., :n], obs[..., n:]
        bound = self.action_bound.to(obs)
        u = th.clamp(action.to(obs), -bound, bound)
        x_next = x @ A.T + u @ B.T
        cost = ((x_next @ Q) * x_next).sum(-1) + ((u @ R) * u).sum(-1)
        next_obs = th.cat([x_next, tau + 1.0 / self.horizon.to(obs)], dim=-1)
        return next_obs, -cost

    def terminal(self, next_obs: th.Tensor) -> th.Tensor:
        return (next_obs[..., -1] >= 1.0 - TERMINAL_TOL).to(next_obs.dtype)


class LQREnv(gym.Env):
    """Finite-horizon LQR; see the module docstring for the MDP.

    ``reset(options={"x0": state})`` starts from a given state instead of sampling one.
    """

    # rgb_array only: SB3's make_vec_env asks for it by default, and a tiny picture is cheap
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    render_size = 96

    def __init__(
        self,
        A: Any = DEFAULT_A,
        B: Any = DEFAULT_B,
        Q: Any = DEFAULT_Q,
        R: Any = DEFAULT_R,
        horizon: int = 20,
        x0_mean: Any = 0.0,
        x0_std: Any = 1.0,
        noise_std: float = 0.0,
        action_bound: float = 5.0,
        render_mode: Optional[str] = None,
    ):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode
        cfg = validate_lqr(A, B, Q, R, horizon, x0_mean, x0_std, noise_std, action_bound)
        self.A, self.B, self.Q, self.R = cfg["A"], cfg["B"], cfg["Q"], cfg["R"]
        self.horizon = cfg["horizon"]
        self.x0_mean, self.x0_std = cfg["x0_mean"], cfg["x0_std"]
        self.noise_std = cfg["noise_std"]
        self.action_bound = cfg["action_bound"]
        self.n, self.m = self.B.shape

        low = np.concatenate([np.full(self.n, -np.inf), [0.0]]).astype(np.float32)
        high = np.concatenate([np.full(self.n, np.inf), [1.0]]).astype(np.float32)
        self.observation_space = spaces.Box(low=low, high=high, dtype=np.float32)
        self.action_space = spaces.Box(-self.action_bound, self.action_bound, shape=(self.m,), dtype=np.float32)
        self.state = np.zeros(self.n)
        self.t = 0

    def _obs(self) -> np.ndarray:
        return np.concatenate([self.state, [self.t / self.horizon]]).astype(np.float32)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        if options is not None and "x0" in options:
            x0 = np.asarray(options["x0"], dtype=np.float64)
            if x0.shape != (self.n,):
                raise ValueError(f"options['x0'] must have shape ({self.n},), got {x0.shape}")
            self.state = x0.copy()
        else:
            self.state = self.x0_mean + self.x0_std * self.np_random.standard_normal(self.n)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        u = np.clip(np.asarray(action, dtype=np.float64).reshape(self.m), -self.action_bound, self.action_bound)
        x_next = self.A @ self.state + self.B @ u
        if self.noise_std > 0:
            x_next = x_next + self.noise_std * self.np_random.standard_normal(self.n)
        reward = -float(x_next @ self.Q @ x_next + u @ self.R @ u)
        self.state = x_next
        self.t += 1
        terminated = self.t >= self.horizon
        return self._obs(), reward, terminated, False, {}

    def render(self) -> Optional[np.ndarray]:
        """The first two state components as a dot (origin at the centre, +-3 at the edges) and the
        elapsed fraction of the episode as a bar along the bottom."""
        if self.render_mode != "rgb_array":
            return None
        size = self.render_size
        img = np.full((size, size, 3), 255, dtype=np.uint8)
        img[size // 2, :] = img[:, size // 2] = 200  # axes through the target
        xy = np.zeros(2)
        xy[: min(2, self.n)] = self.state[:2]
        col, row = ((np.clip(xy * [1, -1] / 3.0, -1, 1) + 1) / 2 * (size - 1)).round().astype(int)
        img[max(row - 2, 0) : row + 3, max(col - 2, 0) : col + 3] = (30, 90, 200)
        img[-3:, : int(round(min(self.t / self.horizon, 1.0) * size))] = (200, 60, 30)
        return img

    def lqr_kwargs(self) -> Dict[str, Any]:
        """The system as keyword arguments of :func:`hybrid_pg_envs.lqr_exact.expected_return`."""
        return dict(
            A=self.A.copy(),
            B=self.B.copy(),
            Q=self.Q.copy(),
            R=self.R.copy(),
            x0_mean=self.x0_mean.copy(),
            x0_std=self.x0_std.copy(),
            noise_std=self.noise_std,
            horizon=self.horizon,
        )

    def get_differentiable_model(self) -> LQRModel:
        return LQRModel(self.A, self.B, self.Q, self.R, self.horizon, self.action_bound, noise_std=self.noise_std)
