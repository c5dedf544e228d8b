"""Pathwise sources: objects that supply the differentiable Q~(s, a) of the pathwise gradient.

``pathwise_source`` names one of :data:`SOURCE_NAMES`; :func:`choose_source` turns the name into an
object once per setup (and again on ``set_env``). ``"auto"`` picks the env's differentiable model
when it has one and the critic otherwise. New sources register a factory with
:func:`register_source`; nothing else in the library changes.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Optional, Tuple

from hybrid_pg.sources.base import Context, PathwiseSource
from hybrid_pg.sources.critic import AdvantageHeadSource
from hybrid_pg.sources.model import ModelSource
from hybrid_pg.sources.replay_critic import ReplayCriticSource, make_replay_critic

#: factory(algorithm) -> source; raises ValueError with the reason when the env cannot support it
SourceFactory = Callable[[Any], PathwiseSource]

_FACTORIES: Dict[str, SourceFactory] = {}
SOURCE_NAMES: Tuple[str, ...] = ("auto",)


def register_source(name: str, factory: SourceFactory) -> None:
    """Make ``pathwise_source=name`` build its source with ``factory(algorithm)``."""
    global SOURCE_NAMES
    if name == "auto":
        raise ValueError("'auto' is reserved")
    _FACTORIES[name] = factory
    SOURCE_NAMES = ("auto", *sorted(_FACTORIES))


def _critic(algorithm: Any) -> PathwiseSource:
    return AdvantageHeadSource(algorithm.policy)


def _model_or_reason(algorithm: Any) -> Tuple[Optional[Any], str]:
    """The env's differentiable model, or None and why it cannot be used."""
    from gymnasium import spaces
    from stable_baselines3.common.vec_env import VecNormalize, unwrap_vec_wrapper

    from hybrid_pg_envs.differentiable import find_differentiable_model

    model = find_differentiable_model(algorithm.env)
    if model is None:
        return None, "this env provides no differentiable model (get_differentiable_model(), see hybrid_pg_envs)"
    normalized = unwrap_vec_wrapper(algorithm.env, VecNormalize)
    if normalized is not None and (normalized.norm_obs or normalized.norm_reward):
        return None, (
            "the differentiable model works in raw observation and reward units, but the env is wrapped in "
            "VecNormalize(norm_obs or norm_reward)"
        )
    space = algorithm.observation_space
    if not isinstance(space, spaces.Box) or len(space.shape) != 1:
        return None, "the model source needs a flat Box observation space"
    return model, ""


def _model(algorithm: Any) -> PathwiseSource:
    model, why = _model_or_reason(algorithm)
    if model is None:
        raise ValueError(f"pathwise_source='model' is not supported here: {why}")
    source = ModelSource(algorithm.policy, model.to(algorithm.device), algorithm.gamma, algorithm.settings.model_horizon)
    source.refresh(algorithm)
    return source


register_source("critic", _critic)
register_source("model", _model)
register_source("replay_critic", lambda algorithm: make_replay_critic(algorithm))


def choose_source(algorithm: Any) -> Optional[PathwiseSource]:
    """The source that ``algorithm.settings.pathwise_source`` asks for on ``algorithm.env``.

    None while there is no env to decide ``"auto"``/``"model"`` on (``load(env=None)``); the
    algorithm decides again when an env is set.
    """
    name = algorithm.settings.pathwise_source
    if name == "critic" or (name == "auto" and algorithm.settings.estimator == "reinforce"):
        return _critic(algorithm)
    if algorithm.env is None:
        return None
    if name != "auto":
        return _FACTORIES[name](algorithm)
    model, why = _model_or_reason(algorithm)
    if model is None:
        if "VecNormalize" in why:
            warnings.warn(f"pathwise_source='auto' falls back to the critic: {why}")
        return _critic(algorithm)
    return _model(algorithm)


__all__ = [
    "AdvantageHeadSource",
    "Context",
    "ModelSource",
    "PathwiseSource",
    "ReplayCriticSource",
    "SOURCE_NAMES",
    "choose_source",
    "register_source",
]
