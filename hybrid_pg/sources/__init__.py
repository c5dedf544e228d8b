"""Pathwise sources: objects that supply the differentiable Q~(s, a) of the pathwise gradient.

``pathwise_source`` names one of :data:`SOURCE_NAMES`; :func:`choose_source` turns the name into an
object once per setup (and again on ``set_env``). ``"auto"`` picks the env's differentiable model
when it has one and the critic otherwise. New sources register a factory with
:func:`register_source`; nothing else in the library changes.

``"mujoco"`` is the model source through :class:`hybrid_pg_envs.mujoco_model.MujocoStepModel`. A name
of its own, rather than only ``"model"`` + ``MujocoDifferentiableWrapper``, because it states the
(costly: the simulator's action Jacobian once per rollout, more with ``model_horizon > 1``) choice at
the call site and works on a plain
``make_vec_env("HalfCheetah-v5")``: it builds the model from the in-process sub-envs, or uses the
wrapper's when the env is wrapped (the only way for ``SubprocVecEnv``, which it says when it refuses).
``"auto"`` uses a MuJoCo model only when the env is wrapped, i.e. declares one; never by itself.
Both ``"model"`` and ``"mujoco"`` work under ``VecNormalize`` (:mod:`hybrid_pg.sources.model`).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Optional, Tuple

from hybrid_pg.sources.base import Context, PathwiseSource
from hybrid_pg.sources.contact_gate import ContactGatedSource
from hybrid_pg.sources.control_variate import ControlVariateSource
from hybrid_pg.sources.critic import AdvantageHeadSource
from hybrid_pg.sources.model import ModelSource, MujocoSource, Normalization
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
    from hybrid_pg_envs.differentiable import find_differentiable_model

    model = find_differentiable_model(algorithm.env)
    if model is None:
        return None, "this env provides no differentiable model (get_differentiable_model(), see hybrid_pg_envs)"
    why = _unsupported(algorithm, model)
    return (None, why) if why else (model, "")


def _unsupported(algorithm: Any, model: Any) -> str:
    """Why the model source cannot serve ``algorithm`` with ``model`` ("" when it can).

    VecNormalize is supported (the source translates between raw and normalised units, see
    :mod:`hybrid_pg.sources.model`); observation transforms it cannot invert are refused."""
    from gymnasium import spaces
    from stable_baselines3.common.vec_env import VecFrameStack, unwrap_vec_wrapper

    space = algorithm.observation_space
    if not isinstance(space, spaces.Box) or len(space.shape) != 1:
        return "the model source needs a flat Box observation space"
    if unwrap_vec_wrapper(algorithm.env, VecFrameStack) is not None:
        return "the model steps single observations, but the env is wrapped in VecFrameStack"
    return ""


def _model(algorithm: Any) -> PathwiseSource:
    model, why = _model_or_reason(algorithm)
    if model is None:
        raise ValueError(f"pathwise_source='model' is not supported here: {why}")
    source = ModelSource(algorithm.policy, model.to(algorithm.device), algorithm.gamma, algorithm.settings.model_horizon)
    source.refresh(algorithm)
    return source


_WRAP_HINT = (
    "wrap each sub-env in hybrid_pg_envs.mujoco_model.MujocoDifferentiableWrapper, e.g. "
    "make_vec_env(make_mujoco_env, env_kwargs=dict(env_id=...)) or make_vec_env(env_id, wrapper_class=MujocoDifferentiableWrapper)"
)


def _mujoco_model(env: Any) -> Any:
    """The MuJoCo step model of ``env``: the env's own (a ``MujocoDifferentiableWrapper``) or one built
    from the unwrapped gymnasium MuJoCo envs of an in-process VecEnv. ValueError says why not."""
    from stable_baselines3.common.vec_env import DummyVecEnv, VecEnvWrapper

    from hybrid_pg_envs.differentiable import find_differentiable_model
    from hybrid_pg_envs.mujoco_model import MujocoStepModel

    model = find_differentiable_model(env)
    if model is not None:
        if not isinstance(model, MujocoStepModel):
            raise ValueError(
                f"the env's differentiable model is a {type(model).__name__}, not a MuJoCo step model; use pathwise_source='model'"
            )
        return model
    base = env
    while isinstance(base, VecEnvWrapper):
        base = base.venv
    if not isinstance(base, DummyVecEnv):
        raise ValueError(f"the simulator of a {type(base).__name__}'s sub-envs is not reachable from this process: {_WRAP_HINT}")
    try:
        models = [MujocoStepModel.from_env(sub) for sub in base.envs]
    except TypeError as exc:  # not a supported MuJoCo env
        raise ValueError(str(exc)) from exc
    reference = models[0].parameters_dict()
    if any(m.parameters_dict() != reference for m in models[1:]):
        raise ValueError("the sub-envs have different MuJoCo physics; a single model cannot serve them all")
    return models[0]


def _mujoco(algorithm: Any) -> PathwiseSource:
    try:
        import mujoco  # noqa: F401
    except ImportError as exc:
        raise ValueError("pathwise_source='mujoco' needs the mujoco package: pip install 'hybrid-pg[mujoco]'") from exc
    try:
        model = _mujoco_model(algorithm.env)
    except ValueError as exc:
        raise ValueError(f"pathwise_source='mujoco' is not supported here: {exc}") from exc
    why = _unsupported(algorithm, model)
    if why:
        raise ValueError(f"pathwise_source='mujoco' is not supported here: {why}")
    source = MujocoSource(algorithm.policy, model.to(algorithm.device), algorithm.gamma, algorithm.settings.model_horizon)
    source.refresh(algorithm)
    return source


register_source("critic", _critic)
register_source("model", _model)
register_source("mujoco", _mujoco)
register_source("replay_critic", lambda algorithm: make_replay_critic(algorithm))


def build_source(algorithm: Any, name: str) -> PathwiseSource:
    """The source ``name`` for ``algorithm``, whatever its own ``pathwise_source`` (a diagnostic that
    compares sources at one checkpoint, e.g. MuJoCo's derivatives beside the advantage head)."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown pathwise source {name!r}; known: {sorted(_FACTORIES)}")
    return _FACTORIES[name](algorithm)


def choose_source(algorithm: Any) -> Optional[PathwiseSource]:
    """The source that ``algorithm.settings.pathwise_source`` asks for on ``algorithm.env``, carrying
    the control variate when ``algorithm.settings.control_variate`` is on and gated at contact changes
    when ``algorithm.settings.contact_gate`` is (:mod:`hybrid_pg.sources.contact_gate`).

    None while there is no env to decide ``"auto"``/``"model"`` on (``load(env=None)``); the
    algorithm decides again when an env is set.
    """
    source = _chosen_source(algorithm)
    if source is None:
        return source
    try:
        if algorithm.settings.contact_gate:
            source = ContactGatedSource(source)
        if algorithm.settings.control_variate:
            source = ControlVariateSource(source)
    except ValueError as exc:
        raise ValueError(f"pathwise_source={algorithm.settings.pathwise_source!r}: {exc}") from None
    return source


def _chosen_source(algorithm: Any) -> Optional[PathwiseSource]:
    name = algorithm.settings.pathwise_source
    if name == "critic" or (name == "auto" and algorithm.settings.estimator == "reinforce"):
        return _critic(algorithm)
    if algorithm.env is None:
        return None
    if name != "auto":
        return _FACTORIES[name](algorithm)
    model, why = _model_or_reason(algorithm)
    if model is None:
        if "provides no differentiable model" not in why:  # a model the settings or wrappers rule out
            warnings.warn(f"pathwise_source='auto' falls back to the critic: {why}", stacklevel=2)
        return _critic(algorithm)
    return _model(algorithm)


__all__ = [
    "AdvantageHeadSource",
    "ContactGatedSource",
    "Context",
    "ControlVariateSource",
    "ModelSource",
    "MujocoSource",
    "Normalization",
    "PathwiseSource",
    "ReplayCriticSource",
    "SOURCE_NAMES",
    "build_source",
    "choose_source",
    "register_source",
]
