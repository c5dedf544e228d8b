"""A goal-reaching point mass (2-D double integrator) with a differentiable model.

Usage::

    import gymnasium as gym
    import hybrid_pg_envs  # registers the hybrid_pg/ ids

    env = gym.make("hybrid_pg/PointMassGoal-v0")   # fixed goal at the origin
    env = gym.make("hybrid_pg/DriftingGoal-v0")    # the goal circles the unit circle
    env = gym.make("hybrid_pg/SwitchingGoal-v0")   # the goal jumps between the corners of [-1, 1]^2

MDP (``dt`` = 0.1): ``u = clip(action, +-action_bound)`` (a force, per axis),
``v' = v + dt (u / mass - damping v)``, ``p' = p + dt v'`` (semi-implicit Euler) and reward
``-(||p' - goal||^2 + ctrl_cost ||u||^2)`` on the *next* position. ``p0 ~ U(-init_range,
init_range)^2``, ``v0 = 0``. No termination; the registered ids truncate at 100 steps.

The observation is ``[p, v, goal]`` (6 numbers), so a policy can follow a moving goal; with
``hide_goal=True`` it is ``[p, v]`` only, and a moving goal makes the problem partially observed
(harder, and the kind of drift a windowed estimator has to track blindly).

The goal (``goal_x``, ``goal_y``), ``mass``, ``damping`` and ``ctrl_cost`` are physical
parameters (``physical_parameters``), so :class:`~hybrid_pg_envs.nonstationary.NonStationaryWrapper`
can drive them. The model reads the goal from its *buffers*, not from the observation: a stale
model keeps aiming at the old goal even when the observation shows the new one.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces

from .differentiable import DifferentiableModel

PHYSICAL_PARAMETERS = ("goal_x", "goal_y", "mass", "damping", "ctrl_cost")


def _check(name: str, value: Any, *, positive: bool = False, nonneg: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a real number, got {value!r}") from exc
    if not math.isfinite(v) or (positive and v <= 0) or (nonneg and v < 0):
        cond = " > 0" if positive else (" >= 0" if nonneg else "")
        raise ValueError(f"{name} must be a finite number{cond}, got {value!r}")
    return v


class PointMassModel(DifferentiableModel):
    """Batched torch twin of :meth:`PointMassGoalEnv.step`: obs ``(..., 6)`` (or ``(..., 4)`` with
    ``hide_goal``), action ``(..., 2)`` -> next obs, reward ``(...)``. Deterministic, exact."""

    def __init__(
        self,
        goal_x: float = 0.0,
        goal_y: float = 0.0,
        mass: float = 1.0,
        damping: float = 0.5,
        ctrl_cost: float = 0.01,
        dt: float = 0.1,
        action_bound: float = 1.0,
        hide_goal: bool = False,
    ):
        super().__init__()
        values = dict(goal_x=goal_x, goal_y=goal_y, mass=mass, damping=damping, ctrl_cost=ctrl_cost, dt=dt, action_bound=action_bound)
        for name, value in values.items():
            self.register_buffer(name, th.tensor(float(value), dtype=th.float64))
        self.hide_goal = bool(hide_goal)  # the observation layout: structure, not a parameter

    def step(self, obs: th.Tensor, action: th.Tensor) -> Tuple[th.Tensor, th.Tensor]:
        p = {name: buf.to(obs) for name, buf in self.named_buffers()}
        pos, vel = obs[..., 0:2], obs[..., 2:4]
        u = th.clamp(action[..., :2].to(obs), -p["action_bound"], p["action_bound"])
        new_vel = vel + p["dt"] * (u / p["mass"] - p["damping"] * vel)
        new_pos = pos + p["dt"] * new_vel
        goal = th.stack([p["goal_x"], p["goal_y"]]).expand_as(new_pos)
        reward = -(((new_pos - goal) ** 2).sum(-1) + p["ctrl_cost"] * (u**2).sum(-1))
        parts = [new_pos, new_vel] if self.hide_goal else [new_pos, new_vel, goal]
        return th.cat(parts, dim=-1), reward


class PointMassGoalEnv(gym.Env):
    """2-D point mass that must reach a (possibly moving) goal; see the module docstring."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    physical_parameters = PHYSICAL_PARAMETERS
    render_size = 96

    def __init__(
        self,
        goal_x: float = 0.0,
        goal_y: float = 0.0,
        mass: float = 1.0,
        damping: float = 0.5,
        ctrl_cost: float = 0.01,
        dt: float = 0.1,
        action_bound: float = 1.0,
        init_range: float = 1.0,
        hide_goal: bool = False,
        render_mode: Optional[str] = None,
    ):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode
        self.goal_x = self.goal_y = 0.0
        self.mass, self.damping, self.ctrl_cost = 1.0, 0.5, 0.01
        self.set_physical_parameters(goal_x=goal_x, goal_y=goal_y, mass=mass, damping=damping, ctrl_cost=ctrl_cost)
        self.dt = _check("dt", dt, positive=True)
        self.action_bound = _check("action_bound", action_bound, positive=True)
        self.init_range = _check("init_range", init_range, nonneg=True)
        self.hide_goal = bool(hide_goal)
        n_obs = 4 if self.hide_goal else 6
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(n_obs,), dtype=np.float32)
        self.action_space = spaces.Box(-self.action_bound, self.action_bound, shape=(2,), dtype=np.float32)
        self.pos = np.zeros(2)
        self.vel = np.zeros(2)

    def set_physical_parameters(self, **values: Any) -> None:
        """Validated update of ``goal_x``, ``goal_y``, ``mass`` (> 0), ``damping`` (>= 0), ``ctrl_cost`` (>= 0)."""
        unknown = sorted(set(values) - set(PHYSICAL_PARAMETERS))
        if unknown:
            raise ValueError(f"unknown physical parameter(s) {unknown}; PointMassGoalEnv has {list(PHYSICAL_PARAMETERS)}")
        rules = dict(goal_x={}, goal_y={}, mass=dict(positive=True), damping=dict(nonneg=True), ctrl_cost=dict(nonneg=True))
        checked = {k: _check(k, v, **rules[k]) for k, v in values.items()}
        for k, v in checked.items():
            setattr(self, k, v)

    @property
    def goal(self) -> np.ndarray:
        return np.array([self.goal_x, self.goal_y])

    def _obs(self) -> np.ndarray:
        parts = [self.pos, self.vel] if self.hide_goal else [self.pos, self.vel, self.goal]
        return np.concatenate(parts).astype(np.float32)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-self.init_range, self.init_range, size=2)
        self.vel = np.zeros(2)
        if options is not None:
            for key in ("pos", "vel"):
                if key in options:
                    value = np.asarray(options[key], dtype=np.float64)
                    if value.shape != (2,) or not np.all(np.isfinite(value)):
                        raise ValueError(f"options[{key!r}] must be 2 finite numbers, got {options[key]!r}")
                    setattr(self, key, value.copy())
        return self._obs(), {}

    def step(self, action):
        u = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -self.action_bound, self.action_bound)
        self.vel = self.vel + self.dt * (u / self.mass - self.damping * self.vel)
        self.pos = self.pos + self.dt * self.vel
        reward = -float(np.sum((self.pos - self.goal) ** 2) + self.ctrl_cost * np.sum(u**2))
        return self._obs(), reward, False, False, {}

    def render(self) -> Optional[np.ndarray]:
        """The mass as a blue dot and the goal as a red cross; +-2 at the edges."""
        if self.render_mode != "rgb_array":
            return None
        size = self.render_size
        img = np.full((size, size, 3), 255, dtype=np.uint8)

        def pixel(xy: np.ndarray) -> Tuple[int, int]:
            col, row = ((np.clip(np.asarray(xy) * [1, -1] / 2.0, -1, 1) + 1) / 2 * (size - 1)).round().astype(int)
            return int(row), int(col)

        r, c = pixel(self.goal)
        img[max(r - 3, 0) : r + 4, c] = img[r, max(c - 3, 0) : c + 4] = (200, 40, 40)
        r, c = pixel(self.pos)
        img[max(r - 2, 0) : r + 3, max(c - 2, 0) : c + 3] = (30, 90, 200)
        return img

    def get_differentiable_model(self) -> PointMassModel:
        return PointMassModel(
            goal_x=self.goal_x,
            goal_y=self.goal_y,
            mass=self.mass,
            damping=self.damping,
            ctrl_cost=self.ctrl_cost,
            dt=self.dt,
            action_bound=self.action_bound,
            hide_goal=self.hide_goal,
        )
