"""Schedules of physical parameters over a step clock, built from plain (YAML-friendly) configs.

A schedule maps a non-negative integer step to a float, deterministically: ``value(step)`` depends
only on the config (and its ``seed``), never on which steps were asked for before or in what order.
That is what lets a run be resumed from a saved clock, and an oracle copy of an env be put at the
same moment as the training env, and still see exactly the same parameter values.

Configs (every field a plain number, list or string, so they round-trip through YAML/JSON)::

    10.0                                                          # a bare number: constant
    {"kind": "constant", "value": 10.0}
    {"kind": "linear", "start": 10.0, "end": 14.0, "duration": 100000}           # then holds 14
    {"kind": "linear", "start": 10.0, "rate": 1e-5}                               # unbounded drift
    {"kind": "sinusoid", "base": 10.0, "amplitude": 2.0, "period": 50000}         # optional "phase"
    {"kind": "switch", "values": [10.0, 14.0, 12.0], "at": [50000, 80000]}        # abrupt switches
    {"kind": "switch", "values": [10.0, 14.0], "every": 50000}                    # cyclic switching
    {"kind": "random_switch", "values": [8.0, 10.0, 14.0], "every": 20000, "seed": 0}
    {"kind": "random_switch", "low": 8.0, "high": 14.0, "min_every": 5000, "max_every": 20000}
    {"kind": "random_walk", "start": 10.0, "step_std": 0.01, "low": 8.0, "high": 14.0, "seed": 0}

``linear`` and ``switch``/``random_switch``/``random_walk`` accept ``delay`` (the step at which the
change starts; before it the schedule holds its first value). ``phase`` of a sinusoid is in
fractions of a period. ``random_switch`` draws a new value at every switch (from ``values``, always
a different one, or uniformly in ``[low, high]``); its first value is ``start`` if given, else
drawn. ``random_walk`` moves by ``N(0, step_std^2)`` every ``every`` steps and reflects at
``low``/``high``.

Randomness is counter-based: the draws of block ``k`` come from ``numpy.random.default_rng([seed,
stream, k])``, so any step can be evaluated directly; the only cache is one running sum per block
(a few floats per 4096 switches or walk moves), filled in order, so results do not depend on the
order of calls.

Usage::

    from hybrid_pg_envs.schedules import make_schedule
    s = make_schedule({"kind": "sinusoid", "base": 10.0, "amplitude": 2.0, "period": 50000})
    s.value(12500)   # 12.0
    s.to_config()    # the normalised config (defaults filled in), accepted by make_schedule
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, TypeGuard, Union

import numpy as np

ScheduleConfig = Union[float, int, Mapping[str, Any], "Schedule"]

_REQUIRED = object()
_BLOCK = 4096  # draws per counter-based block


class ScheduleError(ValueError):
    """A schedule config is invalid; the message names the schedule kind and the field."""


# ---------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------


def _is_number(raw: Any) -> TypeGuard[Union[int, float, np.integer, np.floating]]:
    """A real number of any numeric type; bool is not a number here."""
    return not isinstance(raw, bool) and isinstance(raw, (int, float, np.integer, np.floating))


class _Fields:
    """Reads and checks the fields of one config, naming the field in every error."""

    def __init__(self, kind: str, config: Mapping[str, Any], label: Optional[str]):
        self.kind, self.config, self.label = kind, config, label
        self.used = {"kind"}

    def error(self, field: str, message: str) -> ScheduleError:
        where = f"schedule for {self.label!r}" if self.label else "schedule"
        return ScheduleError(f"{where} ({self.kind}): field {field!r} {message}")

    def has(self, field: str) -> bool:
        return field in self.config and self.config[field] is not None

    def take(self, field: str, default: Any = _REQUIRED) -> Tuple[bool, Any]:
        """Mark ``field`` read; (True, its raw value), or (False, ``default``) when it is absent
        (an error when it is required)."""
        self.used.add(field)
        if self.has(field):
            return True, self.config[field]
        if default is _REQUIRED:
            raise self.error(field, "is required")
        return False, default

    def real(self, field: str, default: Any = _REQUIRED, *, positive: bool = False, nonneg: bool = False) -> float:
        present, raw = self.take(field, default)
        if not present:
            return raw
        if not _is_number(raw):
            raise self.error(field, f"must be a real number, got {raw!r}")
        value = float(raw)
        if not math.isfinite(value):
            raise self.error(field, f"must be finite, got {value}")
        if positive and value <= 0:
            raise self.error(field, f"must be > 0, got {value}")
        if nonneg and value < 0:
            raise self.error(field, f"must be >= 0, got {value}")
        return value

    def integer(self, field: str, default: Any = _REQUIRED, *, minimum: int = 0) -> int:
        present, raw = self.take(field, default)
        if not present:
            return raw
        if not (_is_number(raw) and math.isfinite(float(raw)) and float(raw) == int(raw)):
            raise self.error(field, f"must be an integer, got {raw!r}")
        value = int(raw)
        if value < minimum:
            raise self.error(field, f"must be >= {minimum}, got {value}")
        return value

    def real_list(self, field: str, *, min_len: int = 1) -> List[float]:
        _, raw = self.take(field)
        if isinstance(raw, (str, bytes, Mapping)) or not isinstance(raw, (Sequence, np.ndarray)):
            raise self.error(field, f"must be a list of numbers, got {raw!r}")
        out = []
        for i, item in enumerate(raw):
            if not _is_number(item) or not math.isfinite(float(item)):
                raise self.error(field, f"must contain finite numbers only, item {i} is {item!r}")
            out.append(float(item))
        if len(out) < min_len:
            raise self.error(field, f"must have at least {min_len} item(s), got {len(out)}")
        return out

    def int_list(self, field: str) -> List[int]:
        values = self.real_list(field, min_len=0)
        if any(v != int(v) or v < 0 for v in values):
            raise self.error(field, f"must be a list of non-negative integers, got {list(self.config[field])!r}")
        return [int(v) for v in values]

    def one_of(self, *groups: Sequence[str]) -> int:
        """Index of the field group present (exactly one must be)."""
        present = [i for i, group in enumerate(groups) if any(self.has(f) for f in group)]
        names = " or ".join("/".join(repr(f) for f in g) for g in groups)
        if len(present) != 1:
            field = groups[present[1]][0] if len(present) > 1 else groups[0][0]
            found = "both" if len(present) > 1 else "neither"
            raise self.error(field, f"conflicts: give exactly one of {names} ({found} given)")
        return present[0]

    def finish(self) -> None:
        unknown = sorted(set(self.config) - self.used)
        if unknown:
            raise self.error(unknown[0], f"is not a field of this kind (unknown field(s) {unknown}; known: {sorted(self.used - {'kind'})})")


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        if isinstance(step, (float, np.floating)) and float(step).is_integer():
            step = int(step)
        else:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
    if step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step}")
    return int(step)


# ---------------------------------------------------------------------------------------------
# counter-based random streams
# ---------------------------------------------------------------------------------------------


class _Stream:
    """i.i.d. draws x_0, x_1, ... addressable by index, and their prefix sums.

    Block k (draws k*_BLOCK ... (k+1)*_BLOCK - 1) comes from ``default_rng([seed, stream, k])``,
    so any draw is a pure function of (seed, stream, index). Prefix sums use one cached total per
    block, accumulated in block order (hence identical whatever the order of requests).
    """

    def __init__(self, seed: int, stream: int, draw: Callable[[np.random.Generator, int], np.ndarray]):
        self.seed, self.stream, self.draw_block = seed, stream, draw
        self._block_index = -1
        self._block = np.empty(0)
        self._block_cumsum = np.empty(0)
        self._starts = [0.0]  # starts[k] = sum of all draws before block k

    def block(self, k: int) -> np.ndarray:
        if k != self._block_index:
            rng = np.random.default_rng([self.seed, self.stream, k])
            self._block = self.draw_block(rng, _BLOCK)
            self._block_cumsum = np.cumsum(self._block)
            self._block_index = k
        return self._block

    def draw(self, i: int) -> float:
        return float(self.block(i // _BLOCK)[i % _BLOCK])

    def block_start(self, k: int) -> float:
        while len(self._starts) <= k:
            j = len(self._starts) - 1
            rng = np.random.default_rng([self.seed, self.stream, j])
            self._starts.append(self._starts[-1] + float(np.sum(self.draw_block(rng, _BLOCK))))
        return self._starts[k]

    def prefix(self, i: int) -> float:
        """sum_{j < i} x_j."""
        k, offset = divmod(i, _BLOCK)
        start = self.block_start(k)
        if offset == 0:
            return start
        self.block(k)
        return start + float(self._block_cumsum[offset - 1])

    def segment_of(self, step: int) -> int:
        """For positive draws (segment lengths): the k with prefix(k) <= step < prefix(k + 1)."""
        while self._starts[-1] <= step:
            self.block_start(len(self._starts))
        k = bisect.bisect_right(self._starts, step) - 1  # block holding the segment
        self.block(k)
        within = int(np.searchsorted(self._block_cumsum, step - self._starts[k], side="right"))
        return k * _BLOCK + within


# ---------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------


class Schedule:
    """A parameter value as a function of the step; see the module docstring for the kinds."""

    kind: ClassVar[str] = ""

    def value(self, step: int) -> float:
        return self._value(_check_step(step))

    def _value(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        return self.value(step)

    def values(self, steps: Sequence[int]) -> np.ndarray:
        return np.array([self.value(s) for s in steps], dtype=np.float64)

    def to_config(self) -> Dict[str, Any]:
        """The normalised config: plain types, every default filled in; ``make_schedule`` accepts it."""
        raise NotImplementedError  # pragma: no cover

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and self.to_config() == other.to_config()

    def __hash__(self) -> int:
        return hash(repr(self.to_config()))

    def __repr__(self) -> str:
        return f"make_schedule({self.to_config()!r})"


class Constant(Schedule):
    kind = "constant"

    def __init__(self, value: float):
        self.const = float(value)

    def _value(self, step: int) -> float:
        return self.const

    def to_config(self) -> Dict[str, Any]:
        return {"kind": self.kind, "value": self.const}


class Linear(Schedule):
    """start until ``delay``, then start + rate * (step - delay), or a ramp to ``end`` over ``duration``."""

    kind = "linear"

    def __init__(
        self, start: float, end: Optional[float] = None, duration: Optional[int] = None, rate: Optional[float] = None, delay: int = 0
    ):
        self.start, self.end, self.duration, self.rate, self.delay = start, end, duration, rate, delay

    def _value(self, step: int) -> float:
        t = max(step - self.delay, 0)
        if self.rate is not None:
            return self.start + self.rate * t
        end, duration = self.end, self.duration
        assert end is not None and duration is not None, "a linear schedule needs a rate, or an end and a duration"
        if t >= duration:
            return end
        return self.start + (end - self.start) * (t / duration)

    def to_config(self) -> Dict[str, Any]:
        cfg: Dict[str, Any] = {"kind": self.kind, "start": self.start}
        if self.rate is not None:
            cfg["rate"] = self.rate
        else:
            cfg.update(end=self.end, duration=self.duration)
        cfg["delay"] = self.delay
        return cfg


class Sinusoid(Schedule):
    """base + amplitude * sin(2 pi (step / period + phase))."""

    kind = "sinusoid"

    def __init__(self, base: float, amplitude: float, period: float, phase: float = 0.0):
        self.base, self.amplitude, self.period, self.phase = base, amplitude, period, phase

    def _value(self, step: int) -> float:
        # the phase is reduced mod 1 before multiplying by 2 pi, so exact quarter periods hit exact values
        cycles = math.fmod(step / self.period + self.phase, 1.0)
        return self.base + self.amplitude * math.sin(2.0 * math.pi * cycles)

    def to_config(self) -> Dict[str, Any]:
        return {"kind": self.kind, "base": self.base, "amplitude": self.amplitude, "period": self.period, "phase": self.phase}


class Switch(Schedule):
    """values[i] from step at[i-1] on (abrupt switches), or values cycled every ``every`` steps."""

    kind = "switch"

    def __init__(self, values: Sequence[float], at: Optional[Sequence[int]] = None, every: Optional[int] = None, delay: int = 0):
        self.values_, self.at, self.every, self.delay = list(values), None if at is None else list(at), every, delay

    def _value(self, step: int) -> float:
        if self.at is not None:
            return self.values_[bisect.bisect_right(self.at, step)]
        t = step - self.delay
        if t < 0:
            return self.values_[0]
        assert self.every is not None, "a switch schedule needs 'at' or 'every'"
        return self.values_[(t // self.every) % len(self.values_)]

    def to_config(self) -> Dict[str, Any]:
        cfg: Dict[str, Any] = {"kind": self.kind, "values": list(self.values_)}
        if self.at is not None:
            cfg["at"] = list(self.at)
        else:
            cfg.update(every=self.every, delay=self.delay)
        return cfg


class RandomSwitch(Schedule):
    """Piecewise constant with random values (and optionally random dwell times)."""

    kind = "random_switch"

    def __init__(
        self,
        seed: int,
        values: Optional[Sequence[float]] = None,
        low: Optional[float] = None,
        high: Optional[float] = None,
        every: Optional[int] = None,
        min_every: Optional[int] = None,
        max_every: Optional[int] = None,
        start: Optional[float] = None,
        delay: int = 0,
    ):
        self.seed, self.values_, self.low, self.high = seed, None if values is None else list(values), low, high
        self.every, self.min_every, self.max_every, self.start, self.delay = every, min_every, max_every, start, delay
        if self.values_ is not None:
            n = len(self.values_)
            # index increments in 1..n-1: every switch lands on a *different* value
            self._moves = _Stream(seed, 1, lambda rng, size: rng.integers(1, n, size=size).astype(np.float64))
            self._first = self.values_.index(start) if start is not None else int(np.random.default_rng([seed, 0]).integers(n))
        else:
            assert low is not None and high is not None, "a random_switch schedule needs values, or low and high"
            self._draws = _Stream(seed, 1, lambda rng, size: rng.uniform(low, high, size=size))
        if every is None:
            assert min_every is not None and max_every is not None, "a random_switch schedule needs every, or min_every and max_every"
            lo, hi = min_every, max_every
            self._dwell = _Stream(seed, 2, lambda rng, size: rng.integers(lo, hi + 1, size=size).astype(np.float64))

    def segment(self, step: int) -> int:
        """Index of the constant piece holding ``step`` (0 before the first switch)."""
        step = _check_step(step)
        t = step - self.delay
        if t < 0:
            return 0
        if self.every is not None:
            return t // self.every
        return self._dwell.segment_of(t)

    def _value(self, step: int) -> float:
        k = self.segment(step)
        if self.values_ is not None:
            index = (self._first + int(round(self._moves.prefix(k)))) % len(self.values_)
            return self.values_[index]
        if k == 0 and self.start is not None:
            return self.start
        return self._draws.draw(k)

    def to_config(self) -> Dict[str, Any]:
        cfg: Dict[str, Any] = {"kind": self.kind, "seed": self.seed}
        if self.values_ is not None:
            cfg["values"] = list(self.values_)
        else:
            cfg.update(low=self.low, high=self.high)
        if self.every is not None:
            cfg["every"] = self.every
        else:
            cfg.update(min_every=self.min_every, max_every=self.max_every)
        if self.start is not None:
            cfg["start"] = self.start
        cfg["delay"] = self.delay
        return cfg


def _fold(x: float, low: float, high: float) -> float:
    """x reflected into [low, high] (a triangle wave of period 2 (high - low))."""
    width = high - low
    y = math.fmod(x - low, 2.0 * width)
    if y < 0:
        y += 2.0 * width
    return low + (y if y <= width else 2.0 * width - y)


class RandomWalk(Schedule):
    """start + step_std * (sum of N(0, 1) moves, one every ``every`` steps), reflected into [low, high].

    The reflected walk is the free walk folded into the interval (a reflecting barrier), which has
    the law of a walk that bounces off the bounds, and needs only the free walk's running sum.
    """

    kind = "random_walk"

    def __init__(self, start: float, step_std: float, low: float, high: float, seed: int, every: int = 1, delay: int = 0):
        self.start, self.step_std, self.low, self.high = start, step_std, low, high
        self.seed, self.every, self.delay = seed, every, delay
        self._moves = _Stream(seed, 1, lambda rng, size: rng.standard_normal(size))

    def _value(self, step: int) -> float:
        t = step - self.delay
        n_moves = 0 if t < 0 else t // self.every
        return _fold(self.start + self.step_std * self._moves.prefix(n_moves), self.low, self.high)

    def to_config(self) -> Dict[str, Any]:
        return {
            "kind": self.kind,
            "start": self.start,
            "step_std": self.step_std,
            "low": self.low,
            "high": self.high,
            "seed": self.seed,
            "every": self.every,
            "delay": self.delay,
        }


# ---------------------------------------------------------------------------------------------
# construction from configs
# ---------------------------------------------------------------------------------------------


def _build_constant(f: _Fields) -> Schedule:
    return Constant(f.real("value"))


def _build_linear(f: _Fields) -> Schedule:
    start = f.real("start")
    delay = f.integer("delay", 0)
    if f.one_of(("end", "duration"), ("rate",)) == 0:
        end = f.real("end")
        duration = f.integer("duration", minimum=1)
        return Linear(start, end=end, duration=duration, delay=delay)
    return Linear(start, rate=f.real("rate"), delay=delay)


def _build_sinusoid(f: _Fields) -> Schedule:
    return Sinusoid(f.real("base"), f.real("amplitude"), f.real("period", positive=True), f.real("phase", 0.0))


def _build_switch(f: _Fields) -> Schedule:
    values = f.real_list("values")
    if f.one_of(("at",), ("every",)) == 0:
        at = f.int_list("at")
        if any(b <= a for a, b in zip(at, at[1:])):
            raise f.error("at", f"must be strictly increasing, got {at}")
        if len(at) != len(values) - 1:
            raise f.error("at", f"must have len(values) - 1 = {len(values) - 1} switch steps, got {len(at)}")
        if f.has("delay"):
            raise f.error("delay", "is only used with 'every' (the 'at' steps are absolute)")
        return Switch(values, at=at)
    return Switch(values, every=f.integer("every", minimum=1), delay=f.integer("delay", 0))


def _build_random_switch(f: _Fields) -> Schedule:
    seed = f.integer("seed", 0)
    delay = f.integer("delay", 0)
    values = low = high = None
    if f.one_of(("values",), ("low", "high")) == 0:
        values = f.real_list("values", min_len=2)
        if len(set(values)) != len(values):
            raise f.error("values", f"must be distinct (a switch must change the value), got {values}")
    else:
        low, high = f.real("low"), f.real("high")
        if not high > low:
            raise f.error("high", f"must be > low = {low}, got {high}")
    every = min_every = max_every = None
    if f.one_of(("every",), ("min_every", "max_every")) == 0:
        every = f.integer("every", minimum=1)
    else:
        min_every = f.integer("min_every", minimum=1)
        max_every = f.integer("max_every", minimum=1)
        if max_every < min_every:
            raise f.error("max_every", f"must be >= min_every = {min_every}, got {max_every}")
    start = f.real("start", None)
    if start is not None:
        if values is not None and start not in values:
            raise f.error("start", f"must be one of values {values}, got {start}")
        if low is not None and high is not None and not low <= start <= high:
            raise f.error("start", f"must lie in [low, high] = [{low}, {high}], got {start}")
    return RandomSwitch(seed, values, low, high, every, min_every, max_every, start, delay)


def _build_random_walk(f: _Fields) -> Schedule:
    start = f.real("start")
    step_std = f.real("step_std", nonneg=True)
    low, high = f.real("low"), f.real("high")
    if not high > low:
        raise f.error("high", f"must be > low = {low}, got {high}")
    if not low <= start <= high:
        raise f.error("start", f"must lie in [low, high] = [{low}, {high}], got {start}")
    return RandomWalk(start, step_std, low, high, f.integer("seed", 0), f.integer("every", 1, minimum=1), f.integer("delay", 0))


_BUILDERS: Dict[str, Callable[[_Fields], Schedule]] = {
    "constant": _build_constant,
    "linear": _build_linear,
    "sinusoid": _build_sinusoid,
    "switch": _build_switch,
    "random_switch": _build_random_switch,
    "random_walk": _build_random_walk,
}
KINDS = tuple(_BUILDERS)


def make_schedule(config: ScheduleConfig, name: Optional[str] = None) -> Schedule:
    """A :class:`Schedule` from a config dict (see the module docstring), a bare number (constant)
    or a Schedule (returned as is).

    :param name: the parameter the schedule drives, only used in error messages.
    :raises ScheduleError: (a ValueError) naming the offending field.
    """
    if isinstance(config, Schedule):
        return config
    where = f"schedule for {name!r}" if name else "schedule"
    if _is_number(config):
        if not math.isfinite(float(config)):
            raise ScheduleError(f"{where} (constant): field 'value' must be finite, got {config}")
        return Constant(float(config))
    if not isinstance(config, Mapping):
        raise ScheduleError(f"{where} must be a number or a mapping with a 'kind' field, got {config!r}")
    kind = config.get("kind")
    if kind not in _BUILDERS:
        raise ScheduleError(f"{where}: field 'kind' must be one of {list(KINDS)}, got {kind!r}")
    fields = _Fields(kind, config, name)
    schedule = _BUILDERS[kind](fields)
    fields.finish()
    return schedule


def make_schedules(configs: Mapping[str, ScheduleConfig]) -> Dict[str, Schedule]:
    """``{parameter name: Schedule}`` from ``{parameter name: config}``."""
    if not isinstance(configs, Mapping):
        raise ScheduleError(f"schedules must be a mapping of parameter name -> schedule config, got {type(configs).__name__}")
    out = {}
    for name, cfg in configs.items():
        if not isinstance(name, str) or not name:
            raise ScheduleError(f"schedule parameter names must be non-empty strings, got {name!r}")
        out[name] = make_schedule(cfg, name)
    return out


__all__ = [
    "KINDS",
    "Constant",
    "Linear",
    "RandomSwitch",
    "RandomWalk",
    "Schedule",
    "ScheduleError",
    "Sinusoid",
    "Switch",
    "make_schedule",
    "make_schedules",
]
