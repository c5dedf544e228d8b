"""Environments shipped with hybrid_pg, installed as ``hybrid_pg_envs``.

Importing the package registers the ``hybrid_pg/`` ids with gymnasium::

    import gymnasium as gym
    import hybrid_pg_envs  # registers the hybrid_pg/ namespace

    env = gym.make("hybrid_pg/Pendulum-v0")  # Pendulum-v1's dynamics with a differentiable torch model
    env = gym.make("hybrid_pg/LQR-v0")       # finite-horizon LQR with a closed-form policy gradient
    model = hybrid_pg_envs.find_differentiable_model(env)  # also works on wrappers and VecEnvs

See :mod:`hybrid_pg_envs.differentiable` for the model protocol and :mod:`hybrid_pg_envs.lqr_exact`
for the LQR ground truth.
"""

from __future__ import annotations

import gymnasium as gym

from .differentiable import DifferentiableModel, find_differentiable_model, has_differentiable_model
from .lqr import LQREnv, LQRModel
from .lqr_exact import exact_policy_gradient, expected_return, linear_policy_params
from .pendulum import DiffPendulumEnv, PendulumModel

PENDULUM_ID = "hybrid_pg/Pendulum-v0"
LQR_ID = "hybrid_pg/LQR-v0"

# String entry points resolve at make time, so SubprocVecEnv workers and importlib.reload work.
_REGISTRATIONS = {
    PENDULUM_ID: dict(entry_point="hybrid_pg_envs.pendulum:DiffPendulumEnv", max_episode_steps=200),
    # LQREnv terminates itself after `horizon` steps; a TimeLimit would cut gym.make(..., horizon=50) short
    LQR_ID: dict(entry_point="hybrid_pg_envs.lqr:LQREnv"),
}


def register_envs() -> None:
    """Register the ``hybrid_pg/`` ids; a no-op for ids already registered (import twice, reload)."""
    for env_id, kwargs in _REGISTRATIONS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, **kwargs)


register_envs()

__all__ = [
    "DiffPendulumEnv",
    "DifferentiableModel",
    "LQREnv",
    "LQRModel",
    "LQR_ID",
    "PENDULUM_ID",
    "PendulumModel",
    "exact_policy_gradient",
    "expected_return",
    "find_differentiable_model",
    "has_differentiable_model",
    "linear_policy_params",
    "register_envs",
]
