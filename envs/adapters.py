"""Parameter adapters: set an env's named physical parameters in its simulator.

A :class:`~hybrid_pg_envs.nonstationary.NonStationaryWrapper` drives parameters by name through an
adapter bound to the *unwrapped* env. Adapters validate names (unknown names fail at construction,
listing the known ones) and values, and remember the env's original values so that scale
parameters are always relative to the original simulator, never compounded.

* :class:`PendulumAdapter`: gymnasium's ``PendulumEnv`` (and ``DiffPendulumEnv``): ``g``, ``m``, ``l``;
* :class:`MujocoAdapter`: gymnasium's MuJoCo envs, through ``env.unwrapped.model``: ``gravity``,
  ``body_mass_scale``, ``friction_scale``, ``gear_scale``;
* :class:`LQRAdapter`: :class:`~hybrid_pg_envs.lqr.LQREnv`: ``A_scale``, ``B_scale``, ``Q_scale``,
  ``R_scale``, ``noise_std``;
* :class:`AttributeAdapter`: any env: real-valued attributes of the unwrapped env (the names given,
  or the env's ``physical_parameters``), set through the env's ``set_physical_parameters`` if it has
  one (the goal and bandit envs do, and validate there).

:func:`make_adapter` picks one by the env's type.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import gymnasium as gym
import numpy as np


def _real(owner: str, name: str, value: Any, *, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{owner}: parameter {name!r} must be a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{owner}: parameter {name!r} must be finite, got {v}")
    if positive and v <= 0:
        raise ValueError(f"{owner}: parameter {name!r} must be > 0, got {v}")
    if nonneg and v < 0:
        raise ValueError(f"{owner}: parameter {name!r} must be >= 0, got {v}")
    return v


class ParameterAdapter:
    """Reads and writes named physical parameters of one (unwrapped) env.

    Subclasses set :attr:`names` (or override :meth:`supported`) and implement :meth:`_get` and
    :meth:`_set`; :meth:`set` validates names, and :meth:`check_value` the values.
    """

    names: Tuple[str, ...] = ()
    positive: Tuple[str, ...] = ()  # names whose values must be > 0
    nonneg: Tuple[str, ...] = ()  # names whose values must be >= 0

    def __init__(self, env: gym.Env):
        self.env = env.unwrapped

    @property
    def label(self) -> str:
        return f"{type(self).__name__}({type(self.env).__name__})"

    def supported(self) -> Tuple[str, ...]:
        return tuple(self.names)

    def validate(self, names: Iterable[str]) -> None:
        """Raise ValueError naming the parameters this adapter cannot drive."""
        known = self.supported()
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise ValueError(f"{self.label} cannot drive parameter(s) {unknown}; it knows {sorted(known)}")

    def check_value(self, name: str, value: Any) -> float:
        return _real(self.label, name, value, positive=name in self.positive, nonneg=name in self.nonneg)

    def get(self, name: str) -> float:
        self.validate([name])
        return self._get(name)

    def get_all(self, names: Optional[Iterable[str]] = None) -> Dict[str, float]:
        return {n: self.get(n) for n in (self.supported() if names is None else names)}

    def set(self, values: Mapping[str, Any]) -> None:
        self.validate(values)
        checked = {name: self.check_value(name, value) for name, value in values.items()}
        for name, value in checked.items():
            self._set(name, value)

    def _get(self, name: str) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _set(self, name: str, value: float) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class PendulumAdapter(ParameterAdapter):
    """gymnasium's Pendulum: gravity ``g``, mass ``m`` and length ``l`` (the attributes its step reads)."""

    names = ("g", "m", "l")
    positive = ("m", "l")

    def __init__(self, env: gym.Env):
        super().__init__(env)
        from gymnasium.envs.classic_control.pendulum import PendulumEnv

        if not isinstance(self.env, PendulumEnv):
            raise TypeError(f"PendulumAdapter needs gymnasium's PendulumEnv (or a subclass), got {type(self.env).__name__}")

    def _get(self, name: str) -> float:
        return float(getattr(self.env, name))

    def _set(self, name: str, value: float) -> None:
        setattr(self.env, name, value)


class LQRAdapter(ParameterAdapter):
    """:class:`~hybrid_pg_envs.lqr.LQREnv`: multiplicative scales of A, B, Q, R (relative to the
    matrices at binding time) and the process noise ``noise_std``. The env's ``lqr_kwargs()`` and
    differentiable model follow, so the closed form tracks the drifting system."""

    names = ("A_scale", "B_scale", "Q_scale", "R_scale", "noise_std")
    nonneg = ("Q_scale", "R_scale", "noise_std")
    _MATRICES = ("A", "B", "Q", "R")

    def __init__(self, env: gym.Env):
        super().__init__(env)
        missing = [k for k in self._MATRICES if not isinstance(getattr(self.env, k, None), np.ndarray)]
        if missing:
            raise TypeError(f"LQRAdapter needs an env with numpy matrices A, B, Q, R; {type(self.env).__name__} lacks {missing}")
        self.original = {k: getattr(self.env, k).copy() for k in self._MATRICES}
        self.scales = {f"{k}_scale": 1.0 for k in self._MATRICES}

    # noise_std by name, like the matrices: any env with these attributes is accepted (see __init__), not only an LQREnv
    def _get(self, name: str) -> float:
        if name == "noise_std":
            return float(getattr(self.env, name))
        return self.scales[name]

    def _set(self, name: str, value: float) -> None:
        if name == "noise_std":
            setattr(self.env, name, value)
            return
        self.scales[name] = value
        matrix = name[: -len("_scale")]
        setattr(self.env, matrix, self.original[matrix] * value)


class MujocoAdapter(ParameterAdapter):
    """gymnasium MuJoCo envs, through ``env.unwrapped.model`` (an ``mujoco.MjModel``):

    * ``gravity``: magnitude of ``model.opt.gravity`` along its original direction (9.81 originally);
    * ``body_mass_scale``: ``body_mass`` *and* ``body_inertia`` times the scale (uniform density
      change: the bodies keep their shape, so accelerations from gravity stay the same and those
      from actuators shrink by the scale, up to armature and damping, which are not scaled);
    * ``friction_scale``: every column of ``geom_friction`` (sliding, torsional, rolling);
    * ``gear_scale``: ``actuator_gear`` (the force per unit of control).

    Scales are relative to the model at binding time. ``mj_setConst`` is deliberately not called:
    it would overwrite the simulation state; the changed fields take effect at the next ``mj_step``.
    """

    names = ("gravity", "body_mass_scale", "friction_scale", "gear_scale")
    positive = ("body_mass_scale",)
    nonneg = ("friction_scale",)
    _FIELDS = ("body_mass", "body_inertia", "geom_friction", "actuator_gear")

    def __init__(self, env: gym.Env):
        super().__init__(env)
        model = getattr(self.env, "model", None)
        if model is None or not hasattr(model, "opt") or not all(hasattr(model, f) for f in self._FIELDS):
            raise TypeError(f"MujocoAdapter needs a MuJoCo env (env.unwrapped.model an MjModel), got {type(self.env).__name__}")
        self.original = {f: np.array(getattr(model, f), copy=True) for f in self._FIELDS}
        gravity = np.array(model.opt.gravity, dtype=np.float64)
        norm = float(np.linalg.norm(gravity))
        self.gravity_direction = gravity / norm if norm > 0 else np.array([0.0, 0.0, -1.0])
        self.scales = {"body_mass_scale": 1.0, "friction_scale": 1.0, "gear_scale": 1.0}

    @property
    def model(self) -> Any:
        """The env's ``MjModel``, looked up at every use and never stored: ``copy.deepcopy`` copies an
        ``MjModel`` without entering it in the memo, so a stored reference in a copied env (the oracle's
        copy of the training env) would point at an orphan model and every parameter change would miss
        the model that copy simulates."""
        env: Any = self.env  # a gymnasium MujocoEnv: its model is not on gym.Env's type
        return env.model

    def _get(self, name: str) -> float:
        if name == "gravity":
            return float(np.dot(self.model.opt.gravity, self.gravity_direction))
        return self.scales[name]

    def _set(self, name: str, value: float) -> None:
        m = self.model
        if name == "gravity":
            m.opt.gravity[:] = self.gravity_direction * value
            return
        self.scales[name] = value
        if name == "body_mass_scale":
            m.body_mass[:] = self.original["body_mass"] * value
            m.body_inertia[:] = self.original["body_inertia"] * value
        elif name == "friction_scale":
            m.geom_friction[:] = self.original["geom_friction"] * value
        else:
            m.actuator_gear[:] = self.original["actuator_gear"] * value


class AttributeAdapter(ParameterAdapter):
    """Plain numeric attributes of the unwrapped env.

    :param names: the attributes it may drive; default: the env's ``physical_parameters`` if it
        declares them, else any existing real-valued attribute.
    If the env has ``set_physical_parameters(**values)`` it is used (so the env validates the values
    and updates anything derived from them); otherwise the attributes are set directly.
    """

    def __init__(self, env: gym.Env, names: Optional[Sequence[str]] = None):
        super().__init__(env)
        declared = getattr(self.env, "physical_parameters", None)
        self._names = tuple(names) if names is not None else (tuple(declared) if declared is not None else None)
        if self._names is not None:
            self._check_attributes(self._names)

    def supported(self) -> Tuple[str, ...]:
        if self._names is not None:
            return self._names
        return tuple(
            k
            for k, v in vars(self.env).items()
            if not k.startswith("_") and isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
        )

    def validate(self, names: Iterable[str]) -> None:
        names = list(names)
        if self._names is not None:
            super().validate(names)
        self._check_attributes(names)

    def _check_attributes(self, names: Iterable[str]) -> None:
        bad = []
        for n in names:
            v = getattr(self.env, n, None)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                bad.append(n)
        if bad:
            raise ValueError(f"{self.label} cannot drive parameter(s) {sorted(bad)}: not real-valued attributes of the env")

    def _get(self, name: str) -> float:
        return float(getattr(self.env, name))

    def set(self, values: Mapping[str, Any]) -> None:
        self.validate(values)
        checked = {name: self.check_value(name, value) for name, value in values.items()}
        setter = getattr(self.env, "set_physical_parameters", None)
        if callable(setter):
            setter(**checked)
        else:
            for name, value in checked.items():
                setattr(self.env, name, value)


def make_adapter(env: gym.Env) -> ParameterAdapter:
    """The adapter for ``env``'s type: Pendulum, LQR, envs declaring ``physical_parameters``,
    MuJoCo, else a generic :class:`AttributeAdapter`."""
    from gymnasium.envs.classic_control.pendulum import PendulumEnv

    from .lqr import LQREnv

    base = env.unwrapped
    if isinstance(base, PendulumEnv):
        return PendulumAdapter(base)
    if isinstance(base, LQREnv):
        return LQRAdapter(base)
    if getattr(base, "physical_parameters", None) is not None:
        return AttributeAdapter(base)
    model = getattr(base, "model", None)
    if model is not None and hasattr(model, "opt") and hasattr(model, "body_mass"):
        return MujocoAdapter(base)
    return AttributeAdapter(base)


__all__ = ["AttributeAdapter", "LQRAdapter", "MujocoAdapter", "ParameterAdapter", "PendulumAdapter", "make_adapter"]
