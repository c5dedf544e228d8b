"""Environments shipped with hybrid_pg, installed as ``hybrid_pg_envs``.

Importing the package registers the ``hybrid_pg/`` ids with gymnasium::

    import gymnasium as gym
    import hybrid_pg_envs  # registers the hybrid_pg/ namespace

    env = gym.make("hybrid_pg/Pendulum-v0")  # Pendulum-v1's dynamics with a differentiable torch model
    env = gym.make("hybrid_pg/LQR-v0")       # finite-horizon LQR with a closed-form policy gradient
    model = hybrid_pg_envs.find_differentiable_model(env)  # also works on wrappers and VecEnvs

Non-stationary envs (physical parameters driven by a step clock, reported in ``info["env_params"]``;
see :mod:`hybrid_pg_envs.nonstationary`, :mod:`hybrid_pg_envs.schedules`, :mod:`hybrid_pg_envs.adapters`)::

    env = gym.make("hybrid_pg/SwitchingPendulum-v0")        # g: 10 <-> 14 every 50k steps
    env = gym.make("hybrid_pg/DriftingGoal-v0")             # point mass chasing a circling goal
    env = gym.make("hybrid_pg/SwitchingGoal-v0")            # ... a goal jumping between corners
    env = gym.make("hybrid_pg/PointMassGoal-v0")            # ... a fixed goal
    env = gym.make("hybrid_pg/CoupledBandit-v0")            # one-step coupled problem, lam* in closed form
    env = gym.make("hybrid_pg/DriftingCoupledBandit-v0")    # ... with a drifting target m
    env = hybrid_pg_envs.NonStationaryWrapper(gym.make("Pendulum-v1"), {"g": {"kind": "linear", "start": 10.0, "end": 14.0, "duration": 10000}})

The wrapped ids accept ``schedules``, ``clock_start``, ``steps_per_tick`` and ``model_mode``
(``"live"`` or ``"stale"``) besides the base env's own arguments.

MuJoCo locomotion (HalfCheetah, Hopper, Walker2d, Swimmer v5; needs ``mujoco``, so not imported
here): the simulator's step as a differentiable model, Jacobians by finite differences::

    from hybrid_pg_envs.mujoco_model import MujocoDifferentiableWrapper
    env = MujocoDifferentiableWrapper(gym.make("HalfCheetah-v5"))

See :mod:`hybrid_pg_envs.differentiable` for the model protocol, :mod:`hybrid_pg_envs.lqr_exact`
for the LQR ground truth and :mod:`hybrid_pg_envs.coupled_bandit` for the bandit's lam*.
"""

from __future__ import annotations

from typing import Any, Dict

import gymnasium as gym

from .adapters import AttributeAdapter, LQRAdapter, MujocoAdapter, ParameterAdapter, PendulumAdapter, make_adapter
from .clock import env_clock, get_clocks, load_vec_state_dicts, sync_clock, vec_state_dicts
from .coupled_bandit import CoupledBanditEnv, CoupledBanditModel
from .differentiable import DifferentiableModel, find_differentiable_model, has_differentiable_model
from .goal import PointMassGoalEnv, PointMassModel
from .lqr import LQREnv, LQRModel
from .lqr_exact import exact_policy_gradient, expected_return, linear_policy_params
from .nonstationary import NonStationaryWrapper, find_nonstationary_wrapper
from .pendulum import DiffPendulumEnv, PendulumModel
from .schedules import Schedule, ScheduleError, make_schedule

PENDULUM_ID = "hybrid_pg/Pendulum-v0"
LQR_ID = "hybrid_pg/LQR-v0"
SWITCHING_PENDULUM_ID = "hybrid_pg/SwitchingPendulum-v0"
POINT_MASS_GOAL_ID = "hybrid_pg/PointMassGoal-v0"
DRIFTING_GOAL_ID = "hybrid_pg/DriftingGoal-v0"
SWITCHING_GOAL_ID = "hybrid_pg/SwitchingGoal-v0"
COUPLED_BANDIT_ID = "hybrid_pg/CoupledBandit-v0"
DRIFTING_COUPLED_BANDIT_ID = "hybrid_pg/DriftingCoupledBandit-v0"

# String entry points resolve at make time, so SubprocVecEnv workers and importlib.reload work.
_REGISTRATIONS: Dict[str, Dict[str, Any]] = {
    PENDULUM_ID: dict(entry_point="hybrid_pg_envs.pendulum:DiffPendulumEnv", max_episode_steps=200),
    # LQREnv terminates itself after `horizon` steps; a TimeLimit would cut gym.make(..., horizon=50) short
    LQR_ID: dict(entry_point="hybrid_pg_envs.lqr:LQREnv"),
    SWITCHING_PENDULUM_ID: dict(entry_point="hybrid_pg_envs.nonstationary:make_switching_pendulum", max_episode_steps=200),
    POINT_MASS_GOAL_ID: dict(entry_point="hybrid_pg_envs.goal:PointMassGoalEnv", max_episode_steps=100),
    DRIFTING_GOAL_ID: dict(entry_point="hybrid_pg_envs.nonstationary:make_drifting_goal", max_episode_steps=100),
    SWITCHING_GOAL_ID: dict(entry_point="hybrid_pg_envs.nonstationary:make_switching_goal", max_episode_steps=100),
    # one-step episodes: the bandit terminates itself at every step
    COUPLED_BANDIT_ID: dict(entry_point="hybrid_pg_envs.coupled_bandit:CoupledBanditEnv"),
    DRIFTING_COUPLED_BANDIT_ID: dict(entry_point="hybrid_pg_envs.nonstationary:make_drifting_coupled_bandit"),
}


def register_envs() -> None:
    """Register the ``hybrid_pg/`` ids; a no-op for ids already registered (import twice, reload)."""
    for env_id, kwargs in _REGISTRATIONS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, **kwargs)


register_envs()

__all__ = [
    "COUPLED_BANDIT_ID",
    "DRIFTING_COUPLED_BANDIT_ID",
    "DRIFTING_GOAL_ID",
    "AttributeAdapter",
    "CoupledBanditEnv",
    "CoupledBanditModel",
    "DiffPendulumEnv",
    "DifferentiableModel",
    "LQRAdapter",
    "LQREnv",
    "LQRModel",
    "LQR_ID",
    "MujocoAdapter",
    "NonStationaryWrapper",
    "PENDULUM_ID",
    "POINT_MASS_GOAL_ID",
    "ParameterAdapter",
    "PendulumAdapter",
    "PendulumModel",
    "PointMassGoalEnv",
    "PointMassModel",
    "SWITCHING_GOAL_ID",
    "SWITCHING_PENDULUM_ID",
    "Schedule",
    "ScheduleError",
    "exact_policy_gradient",
    "expected_return",
    "find_differentiable_model",
    "env_clock",
    "find_nonstationary_wrapper",
    "get_clocks",
    "has_differentiable_model",
    "linear_policy_params",
    "load_vec_state_dicts",
    "make_adapter",
    "make_schedule",
    "register_envs",
    "sync_clock",
    "vec_state_dicts",
]
