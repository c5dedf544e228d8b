"""The env-clock protocol, VecEnv side: read, set and save a non-stationary env's clock.

A non-stationary env (:class:`hybrid_pg_envs.nonstationary.NonStationaryWrapper`) has a clock
counted in global env steps and the methods ``get_clock()``, ``set_clock(step, steps_per_tick=None)``,
``state_dict()``/``load_state_dict()`` and, when its base env has a differentiable model,
``differentiable_model_at(step)``. Learners hold vectorised envs, so this module reaches those
methods through a VecEnv's ``env_method``/``has_attr``, which pass through Monitor, gymnasium's
wrappers, VecEnv wrappers (VecNormalize, ...) and SubprocVecEnv workers (SB3's ``set_attr`` stops
at the outermost wrapper, so it is never used).

It is duck-typed on SB3's VecEnv interface (``num_envs``, ``env_method``, ``has_attr``) so that the
env layer needs gymnasium, numpy and torch only; the learner (``hybrid_pg``) uses it as is.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Mapping, Optional, Sequence

CLOCK_GETTER = "get_clock"
CLOCK_SETTER = "set_clock"
MODEL_AT = "differentiable_model_at"


def is_vec_env(env: Any) -> bool:
    """True for an SB3-style VecEnv: not a gymnasium env, but with ``num_envs``, ``env_method`` and
    ``has_attr`` (duck-typed, so the env layer needs no stable_baselines3)."""
    import gymnasium as gym

    return not isinstance(env, gym.Env) and all(hasattr(env, name) for name in ("num_envs", "env_method", "has_attr"))


def has_clock(venv: Any) -> bool:
    """Whether the VecEnv's sub-envs are non-stationary (have a clock)."""
    return venv is not None and is_vec_env(venv) and bool(venv.has_attr(CLOCK_SETTER))


def _require_clock(venv: Any) -> None:
    if not is_vec_env(venv):
        raise TypeError(f"expected an SB3 VecEnv, got {type(venv).__name__}")
    if not venv.has_attr(CLOCK_SETTER):
        raise ValueError("this VecEnv's sub-envs have no NonStationaryWrapper (no set_clock method)")


def env_clock(venv: Any) -> Optional[int]:
    """The clock of the first sub-env, or None when the env is stationary (or absent)."""
    if venv is None or not is_vec_env(venv) or not venv.has_attr(CLOCK_GETTER):
        return None
    return int(venv.env_method(CLOCK_GETTER, indices=[0])[0])


def get_clocks(venv: Any) -> List[int]:
    """Each sub-env's clock."""
    _require_clock(venv)
    return [int(c) for c in venv.env_method(CLOCK_GETTER)]


def sync_clock(venv: Any, step: int, indices: Optional[Sequence[int]] = None, steps_per_tick: Optional[int] = None) -> None:
    """Set every sub-env's clock (or those at ``indices``) to ``step``; ``steps_per_tick=0`` holds it
    still (one moment's parameters, e.g. for an oracle batch)."""
    _require_clock(venv)
    if isinstance(step, bool) or not isinstance(step, int) and not hasattr(step, "__index__") or int(step) < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    if steps_per_tick is None:
        venv.env_method(CLOCK_SETTER, int(step), indices=indices)
    else:
        venv.env_method(CLOCK_SETTER, int(step), steps_per_tick=steps_per_tick, indices=indices)


def model_at(venv: Any, step: int) -> Any:
    """The first sub-env's differentiable model at the parameters of clock ``step`` (None when the env
    has no such method: stationary, or no model)."""
    if venv is None or not is_vec_env(venv) or not venv.has_attr(MODEL_AT):
        return None
    return venv.env_method(MODEL_AT, int(step), indices=[0])[0]


def vec_state_dicts(venv: Any) -> List[Dict[str, Any]]:
    """Each sub-env's clock state (plain data, for a checkpoint)."""
    _require_clock(venv)
    return [copy.deepcopy(s) for s in venv.env_method("state_dict")]


def load_vec_state_dicts(venv: Any, states: Sequence[Mapping[str, Any]]) -> None:
    """Restore :func:`vec_state_dicts` (one state per sub-env)."""
    _require_clock(venv)
    if len(states) != venv.num_envs:
        raise ValueError(f"got {len(states)} states for a VecEnv of {venv.num_envs} envs")
    for i, state in enumerate(states):
        venv.env_method("load_state_dict", state, indices=[i])
