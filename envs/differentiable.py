"""The differentiable-environment protocol.

An environment opts in by defining ``get_differentiable_model()`` on its unwrapped class. The call
returns a :class:`DifferentiableModel`: a ``torch.nn.Module`` whose batched
``step(obs, action) -> (next_obs, reward)`` reproduces the env's numpy ``step`` (same clipping,
same reward), apart from the noise it reports in ``noise_std``. ``HybridPG(pathwise_source="model")``
backpropagates through it to get the exact pathwise gradient.

The model is a snapshot: it carries the env's physical parameters at the time of the call (as
buffers, so they can be changed with :meth:`DifferentiableModel.set_parameters`). A drifting env
therefore makes a model taken earlier *stale*; that is deliberate, the non-stationarity study needs
both a live and a stale model.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import gymnasium as gym
import torch as th
from torch import nn

from .clock import is_vec_env

MODEL_METHOD = "get_differentiable_model"


class DifferentiableModel(nn.Module):
    """Batched torch model of an environment's transition and reward.

    Subclasses implement :meth:`step` and :meth:`parameters_dict`; physical parameters live in
    buffers (not ``nn.Parameter``: the model is a fixed environment, never trained, and its
    tensors must not reach an optimizer).
    """

    #: std of the process noise the numpy env adds and the model leaves out (0: exact model).
    noise_std: float = 0.0
    #: every episode ends after at most this many steps (None: not bounded). A k-step model return
    #: with k >= it is the whole return: no learned value bootstrap enters it.
    max_episode_steps: Optional[int] = None

    def step(self, obs: th.Tensor, action: th.Tensor) -> Tuple[th.Tensor, th.Tensor]:
        """``(next_obs, reward)`` for a batch: obs (B, obs_dim), action (B, act_dim) -> (B, obs_dim), (B,)."""
        raise NotImplementedError

    def terminal(self, next_obs: th.Tensor) -> th.Tensor:
        """1.0 where ``next_obs`` ends the episode (its value must not be bootstrapped), else 0.0."""
        return th.zeros(next_obs.shape[0], dtype=next_obs.dtype, device=next_obs.device)

    def parameters_dict(self) -> Dict[str, Any]:
        """The physical parameters as plain numbers (for logs and drift checks): a float per scalar
        buffer, nested lists for a vector or matrix one (the LQR model's A, B, Q, R)."""
        return {name: buf.tolist() for name, buf in self.named_buffers()}

    def set_parameters(self, **values: Any) -> None:
        """Overwrite physical parameters in place, e.g. ``model.set_parameters(g=9.0)``."""
        buffers = dict(self.named_buffers())
        unknown = sorted(set(values) - set(buffers))
        if unknown:
            raise ValueError(f"unknown model parameter(s) {unknown}; this model has {sorted(buffers)}")
        for name, value in values.items():
            new = th.as_tensor(value, dtype=buffers[name].dtype, device=buffers[name].device)
            if new.shape != buffers[name].shape:
                raise ValueError(f"parameter {name!r} has shape {tuple(buffers[name].shape)}, got {tuple(new.shape)}")
            buffers[name].copy_(new)

    def forward(self, obs: th.Tensor, action: th.Tensor) -> Tuple[th.Tensor, th.Tensor]:
        return self.step(obs, action)


def _model_method(env: gym.Env) -> Any:
    """``get_differentiable_model`` of the outermost layer of ``env`` that has it (a wrapper such as
    ``MujocoDifferentiableWrapper`` or ``NonStationaryWrapper``, else the unwrapped env), or None.
    The same lookup as SB3's ``DummyVecEnv.env_method`` (gymnasium's ``get_wrapper_attr``)."""
    try:
        method = env.get_wrapper_attr(MODEL_METHOD)
    except AttributeError:
        return None
    return method if callable(method) else None


def has_differentiable_model(env: Any) -> bool:
    """Whether ``env`` (a gymnasium env, possibly wrapped, or an SB3 VecEnv) follows the protocol."""
    if is_vec_env(env):
        try:
            return bool(env.has_attr(MODEL_METHOD))
        except AttributeError:
            return False
    return _model_method(env) is not None


def find_differentiable_model(env: Any) -> Optional[DifferentiableModel]:
    """The model of ``env`` (of its first sub-env for a VecEnv), or None if it has none.

    Works through gymnasium wrappers (the outermost one defining ``get_differentiable_model`` wins,
    else the unwrapped env), SB3 VecEnv wrappers and SubprocVecEnv (the model is built in the worker
    and pickled back). All sub-envs of a VecEnv are assumed to share dynamics; if their models'
    parameters differ, that is an error rather than a silent choice.
    """
    if env is None or not has_differentiable_model(env):
        return None
    if is_vec_env(env):
        models = env.env_method(MODEL_METHOD)
        first = models[0]
        reference = first.parameters_dict()
        for i, other in enumerate(models[1:], start=1):
            if type(other) is not type(first) or other.parameters_dict() != reference:
                raise ValueError(
                    f"sub-env {i} of the VecEnv has a different differentiable model than sub-env 0 "
                    f"({other.parameters_dict()} vs {reference}); a single model cannot serve them all"
                )
        model = first
    else:
        model = _model_method(env)()
    if not isinstance(model, DifferentiableModel):
        raise TypeError(f"{MODEL_METHOD}() must return a DifferentiableModel, got {type(model).__name__}")
    return model
