"""Pendulum-v1 with a differentiable torch model of its dynamics.

Usage::

    import gymnasium as gym
    import hybrid_pg_envs  # registers the hybrid_pg/ ids

    env = gym.make("hybrid_pg/Pendulum-v0")  # same dynamics, reward and limits as Pendulum-v1
    model = hybrid_pg_envs.find_differentiable_model(env)

:class:`DiffPendulumEnv` subclasses gymnasium's ``PendulumEnv`` unchanged, so everything the numpy
env does is Pendulum-v1's; it only adds :meth:`DiffPendulumEnv.get_differentiable_model`.
"""

from __future__ import annotations

from typing import Tuple

import torch as th
from gymnasium.envs.classic_control.pendulum import PendulumEnv

from .differentiable import DifferentiableModel


def _scalar_buffer(value: float) -> th.Tensor:
    # float64 so parameters_dict() reports the values the env holds; step() casts to the input dtype
    return th.tensor(float(value), dtype=th.float64)


class PendulumModel(DifferentiableModel):
    """Batched torch twin of ``PendulumEnv.step`` on observations ``[cos th, sin th, thdot]``.

    Accepts any leading batch shape: obs ``(..., 3)``, action ``(..., 1)`` -> ``(..., 3)``, ``(...)``.
    Pendulum-v1 is deterministic, so ``noise_std`` is 0 and the model is exact.
    """

    def __init__(
        self,
        g: float = 10.0,
        m: float = 1.0,
        l: float = 1.0,  # noqa: E741  (gymnasium's name)
        dt: float = 0.05,
        max_speed: float = 8.0,
        max_torque: float = 2.0,
    ):
        super().__init__()
        for name, value in dict(g=g, m=m, l=l, dt=dt, max_speed=max_speed, max_torque=max_torque).items():
            self.register_buffer(name, _scalar_buffer(value))

    def step(self, obs: th.Tensor, action: th.Tensor) -> Tuple[th.Tensor, th.Tensor]:
        p = {name: buf.to(obs) for name, buf in self.named_buffers()}
        # atan2 lands in (-pi, pi], which is angle_normalize's range up to the sign at +-pi; the
        # cost only sees the square, so the two agree.
        theta = th.atan2(obs[..., 1], obs[..., 0])
        thdot = obs[..., 2]
        # numpy Pendulum reads u[0] only
        u = th.clamp(action[..., 0].to(obs), -p["max_torque"], p["max_torque"])
        cost = theta**2 + 0.1 * thdot**2 + 0.001 * u**2

        g, m, l, dt = p["g"], p["m"], p["l"], p["dt"]
        new_thdot = thdot + (3.0 * g / (2.0 * l) * th.sin(theta) + 3.0 / (m * l**2) * u) * dt
        new_thdot = th.clamp(new_thdot, -p["max_speed"], p["max_speed"])
        new_theta = theta + new_thdot * dt
        next_obs = th.stack([th.cos(new_theta), th.sin(new_theta), new_thdot], dim=-1)
        return next_obs, -cost


class DiffPendulumEnv(PendulumEnv):
    """gymnasium's Pendulum-v1 env plus :meth:`get_differentiable_model`.

    Constructor arguments are Pendulum-v1's (``render_mode``, ``g``). The model snapshots
    ``g, m, l, dt, max_speed, max_torque`` from the env's attributes when it is requested, so an
    env whose attributes are changed later (drift) leaves older models stale on purpose.
    """

    def get_differentiable_model(self) -> PendulumModel:
        return PendulumModel(g=self.g, m=self.m, l=self.l, dt=self.dt, max_speed=self.max_speed, max_torque=self.max_torque)
