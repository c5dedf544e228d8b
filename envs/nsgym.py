"""NS-Gym interoperability: train HybridPG on NS-Gym's non-stationary envs.

`NS-Gym <https://github.com/scope-lab-vu/ns_gym>`_ (``pip install ns-gym``) makes a gymnasium env
non-stationary with a wrapper (``NSClassicControlWrapper``, ``MujocoWrapper``) that, at every step,
calls an *update function* per tunable parameter (``IncrementUpdate``, ``RandomWalk``,
``LinearInterpolation``, ...), each gated by a *scheduler* (``PeriodicScheduler``,
``DiscreteScheduler``, ``ContinuousScheduler``, ...)::

    import gymnasium as gym
    from ns_gym.schedulers import PeriodicScheduler
    from ns_gym.update_functions import IncrementUpdate
    from hybrid_pg_envs.nsgym import make_nsgym_env

    env = make_nsgym_env("Pendulum-v1", {"m": IncrementUpdate(PeriodicScheduler(period=2000), k=0.05)}, schedule_seed=0)
    obs, info = env.reset(seed=0)           # obs: the Box state; info["env_params"] == {"m": ...}

:class:`NSGymWrapper` is the same construction as a wrapper around a base env, with everything by
name, so a run config can use it (``hybrid_pg.experiments.config`` calls it ``nsgym``)::

    env:
      id: Pendulum-v1
      wrappers:
        - name: nsgym
          kwargs: {tunable_params: [m], scheduler: PeriodicScheduler, scheduler_kwargs: {period: 5000},
                   update_fn: IncrementUpdate, update_kwargs: {k: 0.1}, steps_per_tick: 4, schedule_seed: 0}

``tunable_params`` may also give each parameter its own rule,
``{m: {update_fn: IncrementUpdate, update_kwargs: {k: 0.1}, scheduler: PeriodicScheduler,
scheduler_kwargs: {period: 5000}}, g: {update_fn: LinearInterpolation, ...}}`` (a key a rule leaves
out is the shared argument of that name).

:class:`NSGymAdapter` turns such an env into one HybridPG (and any SB3 algorithm) trains on, with
the clock protocol of :class:`hybrid_pg_envs.NonStationaryWrapper`:

* observations: NS-Gym's observation dict ``{"state", "env_change", "delta_change",
  "relative_time"}`` is reduced to its ``"state"`` (the base env's Box observation; change
  notifications are not part of the observation);
* rewards: a scalar (NS-Gym's ``Reward`` dataclass, ``scalar_reward=False``, is unpacked);
* ``info["env_params"]``: the scalar parameters the transition used (a MuJoCo gravity vector is
  reported by its z component, the one NS-Gym's update functions drive; other arrays element-wise as
  ``name_0, name_1, ...``), ``info["env_clock"]`` its clock; NS-Gym's ``"Ground Truth Env Change"``
  and ``"Ground Truth Delta Change"`` keep their meaning (this transition against the previous one);
* the clock: ``get_clock``, ``set_clock(step, steps_per_tick=None)`` (0 holds the parameters still),
  ``state_dict``/``load_state_dict``, a seeded reset rewinds to the clock last set; ``copy.deepcopy``
  gives an independent env on the *same* schedule (the oracle's env copy).

How NS-Gym's time maps to the clock
-----------------------------------
NS-Gym's wrapper counts time *per episode*: ``t`` is reset to 0 by every ``reset`` and, unless
``persistent_params=True``, the parameters go back to their initial values, so the drift restarts
each episode. At step ``t`` it sets ``p = update_fn(p, t)`` (a no-op unless the update function's
scheduler fires at ``t``), then steps the simulator with the new ``p``.

Here the same update rule runs on the adapter's clock instead, counted in *global* env steps
(``steps_per_tick`` per step; ``n_envs`` for SB3's ``num_timesteps``) and never reset by ``reset``:

    params(c) = u_c(... u_1(u_0(initial, 0), 1) ..., c)       (rejected updates leave p unchanged)

is what the transition at clock ``c`` uses, exactly as NS-Gym's step ``t = c`` would use it in an
episode that never ended. Schedulers and update functions are NS-Gym's own objects, called with
``t = c``; NS-Gym's own per-step update is switched off (its wrapper runs in its simulation mode,
``is_sim_env=True, in_sim_change=False``), so nothing is applied twice.

Because most update functions are incremental and some are random (``RandomWalk``), ``params(c)``
is a path: the adapter generates it once from a private copy of the update functions taken at
construction, keeps a checkpoint (the update functions' state, RNGs included, and the values) every
``checkpoint_every`` clock steps, and replays from the nearest checkpoint when the clock is set
backwards (O(``checkpoint_every``) update-function calls). Consequences:

* the schedule is a deterministic function of the clock: a deep copy (its generator is copied
  with it) or ``set_clock(t)`` on any copy gives the parameters of time ``t`` of the original;
* seeding: ``schedule_seed`` re-seeds the random update functions (NS-Gym's own ``fn.seed`` with a
  ``SeedSequence`` per parameter); ``reset(seed=...)`` does *not* change the schedule (the oracle
  and SB3 seed their envs differently, and the copy must drift like the training env). Without a
  schedule seed, random update functions draw from whatever state they were built with: same within
  the run and its deep copies, but ``load_state_dict`` on a new process resumes the schedule only
  if the update functions are seeded;
* rates: NS-Gym's examples are written for episode time (t < a few hundred); on a global clock a
  ``PeriodicScheduler(period=1)`` fires every step of the run, so use long periods,
  ``DiscreteScheduler`` events or ``LinearInterpolation(T=...)`` in training steps, and beware of
  update functions whose step grows with ``t`` (``DeterministicTrend``: ``p + slope * t``).

Copies. ``copy.deepcopy`` bypasses NS-Gym's own ``__deepcopy__`` (which builds a *planning* env: a
fresh ``gym.make`` of a hard-coded id, frozen parameters, re-seeded update functions) and copies
the simulator faithfully (MuJoCo: integration state and RNG carried over). ``env.spec`` records
:func:`make_nsgym_env`'s arguments (update functions as at construction), so ``gym.make(env.spec)``
rebuilds the env on the same schedule, e.g. for the oracle when training runs in SubprocVecEnv workers.

Limitations: NS-Gym's classic-control and MuJoCo wrappers only (those with ``initial_params``);
Acrobot's constraint check reads the live simulator, so a replay after ``set_clock`` into the past
may accept/reject a borderline link update differently; the spec exists only when the adapter wraps
NS-Gym's wrapper directly and the base env was made by ``gym.make``.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec

from .nonstationary import CLOCK_INFO_KEY, INFO_KEY, _check_int, reset_between_applies

STATE_KEYS = ("kind", "clock", "steps_per_tick", "checkpoint_every", "schedule_seed")
KIND = "ns_gym"
OBS_KEY = "state"
ENV_CHANGE_INFO = "Ground Truth Env Change"
DELTA_CHANGE_INFO = "Ground Truth Delta Change"
#: NS-Gym wrapper settings a rebuilt env keeps
NS_KWARGS = ("change_notification", "delta_change_notification", "scalar_reward", "persistent_params")


def _require_ns_gym():
    try:
        # ns_gym is an optional extra without stubs, so type checking runs without it; mypy reports a missing
        # module once, at its first import in the file, so only the first import of each ns_gym module is marked
        import ns_gym  # type: ignore[import-not-found]  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised without the extra
        raise ImportError('NS-Gym is not installed: pip install -e ".[nsgym]" (or pip install ns-gym)') from exc
    return ns_gym


def find_ns_wrapper(env: gym.Env) -> Any:
    """The NS-Gym wrapper (``ns_gym.base.NSWrapper``) in ``env``'s wrapper stack, or None."""
    from ns_gym.base import NSWrapper  # type: ignore[import-not-found]

    while isinstance(env, gym.Wrapper):
        if isinstance(env, NSWrapper):
            return env
        env = env.env
    return None


def _plain_deepcopy(obj: Any, memo: Dict[int, Any]) -> Any:
    """``obj`` deep-copied attribute by attribute, bypassing its class's ``__deepcopy__``.

    NS-Gym's wrappers define ``__deepcopy__`` as "make a planning env": a fresh ``gym.make`` of a
    hard-coded id (the user's make kwargs and outer wrappers' state are dropped), marked as a
    simulation env, with re-seeded update functions. The oracle needs a faithful copy instead."""
    if id(obj) in memo:
        return memo[id(obj)]
    new = object.__new__(type(obj))
    memo[id(obj)] = new
    for key, value in obj.__dict__.items():
        new.__dict__[key] = copy.deepcopy(value, memo)
    return new


def _copy_mujoco_state(source: Any, target: Any) -> None:
    """MuJoCo envs deep-copy as a fresh env (gymnasium's ``MujocoEnv`` is ``EzPickle``): carry the
    integration state (time, qpos, qvel, act, warm start) and the RNG over, as NS-Gym's own copy does."""
    model, data = getattr(source, "model", None), getattr(source, "data", None)
    if source is target or type(model).__name__ != "MjModel" or type(data).__name__ != "MjData":
        return
    import mujoco

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(model, spec))
    mujoco.mj_getState(model, data, state, spec)
    mujoco.mj_setState(target.model, target.data, state, spec)
    mujoco.mj_forward(target.model, target.data)
    if getattr(source, "_np_random", None) is not None:
        target._np_random = copy.deepcopy(source._np_random)


class _ParamAccess:
    """Reads and writes the tunable parameters the way NS-Gym's wrapper does (``getattr`` on the
    base env for classic control, the wrapper's MuJoCo getters/setters; a MuJoCo gravity vector is
    driven through its z component)."""

    def __init__(self, ns: Any):
        self.ns = ns
        self.mujoco = callable(getattr(ns, "_get_param_value", None))

    def _is_vector_gravity(self, name: str, value: Any) -> bool:
        return self.mujoco and name == "gravity" and np.ndim(value) == 1

    def driven(self, name: str, value: Any) -> Any:
        """The part of a stored value the update function sees."""
        if self._is_vector_gravity(name, value):
            return float(np.asarray(value)[-1])
        return copy.deepcopy(value)

    def read(self, name: str) -> Any:
        if self.mujoco:
            return self.driven(name, self.ns._get_param_value(name))
        return copy.deepcopy(getattr(self.ns.unwrapped, name))

    def write(self, name: str, value: Any) -> None:
        if self.mujoco:
            current = self.ns._get_param_value(name)
            if self._is_vector_gravity(name, current):
                vec = np.array(current, dtype=float)
                vec[-1] = value
                value = vec
            self.ns._set_param_value(name, copy.deepcopy(value))
        else:
            setattr(self.ns.unwrapped, name, copy.deepcopy(value))

    def full(self, name: str, value: Any) -> Any:
        """The value as NS-Gym's constraint checker expects it (MuJoCo gravity: the vector)."""
        if self.mujoco and name == "gravity" and np.ndim(value) == 0:
            current = np.array(self.ns._get_param_value(name), dtype=float)
            if current.ndim == 1:
                current[-1] = value
                return current
        return value


def _scalars(values: Mapping[str, Any]) -> Dict[str, float]:
    """Scalar view for ``info["env_params"]``: scalars as floats, small arrays element-wise."""
    out: Dict[str, float] = {}
    for name, value in values.items():
        arr = np.asarray(value)
        if arr.ndim == 0 and np.issubdtype(arr.dtype, np.number):
            out[name] = float(arr)
        elif arr.ndim >= 1 and np.issubdtype(arr.dtype, np.number) and arr.size <= 16:
            for i, v in enumerate(arr.ravel()):
                out[f"{name}_{i}"] = float(v)
    return out


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except Exception:
        return a is b


class _ScheduleTape:
    """NS-Gym's update rule run on a global clock: ``values(c)`` after the updates of times 0..c.

    One cursor (update functions' state + values after ``n`` updates) moves forward; checkpoints
    every ``every`` updates let it restart anywhere behind. Deterministic given the update
    functions' state at construction, so copies of the tape agree."""

    def __init__(self, fns: Mapping[str, Any], initial: Mapping[str, Any], check: Callable[[Dict[str, Any]], Dict[str, bool]], every: int):
        self.every = every
        self.check = check
        self.n = 0  # updates applied so far (times 0..n-1)
        self.fns = copy.deepcopy(dict(fns))
        self.values = copy.deepcopy(dict(initial))
        self.checkpoints: Dict[int, Tuple[Dict[str, Any], Dict[str, Any]]] = {}
        self._save()

    def _save(self) -> None:
        self.checkpoints[self.n] = (copy.deepcopy(self.fns), copy.deepcopy(self.values))

    def _update(self) -> None:
        t = self.n
        proposed = {}
        for name, fn in self.fns.items():
            new, _, _ = fn(self.values[name], t)
            proposed[name] = new
        rejected = self.check(proposed)
        for name, new in proposed.items():
            if not rejected.get(name, False):
                self.values[name] = new
        self.n += 1
        if self.n % self.every == 0 and self.n not in self.checkpoints:
            self._save()

    def at(self, clock: int) -> Dict[str, Any]:
        """The parameters of the transition at ``clock``."""
        target = clock + 1
        if target < self.n:
            start = (target // self.every) * self.every
            fns, values = self.checkpoints[start]
            self.fns, self.values, self.n = copy.deepcopy(fns), copy.deepcopy(values), start
        while self.n < target:
            self._update()
        return dict(self.values)


class NSGymAdapter(gym.Wrapper):
    """An NS-Gym env as a non-stationary env with a global step clock (see the module docstring).

    :param env: an env whose wrapper stack holds an NS-Gym wrapper (``NSClassicControlWrapper``,
        ``MujocoWrapper``), typically that wrapper itself; it must not have been stepped yet.
    :param clock_start: the clock at construction.
    :param steps_per_tick: clock increment per step (``n_envs`` for global steps, 0 to freeze).
    :param schedule_seed: re-seeds NS-Gym's random update functions (None: leave them as built).
    :param checkpoint_every: clock steps between schedule checkpoints (memory vs. rewind cost).
    """

    def __init__(
        self,
        env: gym.Env,
        clock_start: int = 0,
        steps_per_tick: int = 1,
        schedule_seed: Optional[int] = None,
        checkpoint_every: int = 1000,
    ):
        super().__init__(env)
        _require_ns_gym()
        ns = find_ns_wrapper(env)
        if ns is None:
            raise TypeError(f"NSGymAdapter needs an NS-Gym-wrapped env (ns_gym.wrappers.*); got {env}")
        if not hasattr(ns, "initial_params"):
            raise TypeError(f"{type(ns).__name__} is not supported (no initial_params): use NS-Gym's classic-control or MuJoCo wrappers")
        self._ns = ns
        self.steps_per_tick = _check_int("steps_per_tick", steps_per_tick, 0)
        self.checkpoint_every = _check_int("checkpoint_every", checkpoint_every, 1)
        self.schedule_seed = None if schedule_seed is None else _check_int("schedule_seed", schedule_seed, 0)
        # NS-Gym's own per-episode updates off: the adapter applies the same rule on its clock
        ns.is_sim_env, ns.in_sim_change = True, False
        self._access = _ParamAccess(ns)
        fns = copy.deepcopy(dict(ns.tunable_params))
        self._spec_kwargs = self._recreation_kwargs(env, ns, fns, clock_start, steps_per_tick)
        if self.schedule_seed is not None:
            children = np.random.SeedSequence(self.schedule_seed).spawn(len(fns))
            for child, fn in zip(children, fns.values()):
                fn.seed(child)
        initial = {name: self._access.driven(name, ns.initial_params[name]) for name in fns}
        self._tape = _ScheduleTape(fns, initial, self._check, self.checkpoint_every)
        self.param_names: List[str] = list(fns)

        ns_env = ns.env  # the env NS-Gym's wrapper wraps; read before `env is ns` narrows ns to a plain gym.Env
        space = ns_env.observation_space if env is ns else env.observation_space
        if env is not ns:
            if not isinstance(space, gym.spaces.Dict) or OBS_KEY not in space.spaces:
                raise ValueError(f"expected NS-Gym's observation dict with a {OBS_KEY!r} entry, got {space}")
            space = space[OBS_KEY]
        self.observation_space = space

        self.clock = _check_int("clock_start", clock_start, 0)
        self._seed_clock = self.clock
        self._applied: Optional[Dict[str, Any]] = None
        self._last_used: Optional[Dict[str, Any]] = None  # the previous transition's values (change flags)
        self._apply()

    # ------------------------------------------------------------------------------------------
    # spec: how gym.make (check_env, the oracle's copy for SubprocVecEnv workers) rebuilds the env
    # ------------------------------------------------------------------------------------------

    def _recreation_kwargs(
        self, env: gym.Env, ns: Any, fns: Mapping[str, Any], clock_start: int, steps_per_tick: int
    ) -> Optional[Dict[str, Any]]:
        """:func:`make_nsgym_env` arguments that rebuild this env (schedule generator included: the
        update functions as they are now, RNG states and all), or None when it cannot be rebuilt
        (no base spec, or wrappers between the adapter and NS-Gym's wrapper)."""
        base_spec = getattr(ns.env, "spec", None)
        if env is not ns or base_spec is None:
            return None
        return {
            "env_id": copy.deepcopy(base_spec),
            "tunable_params": copy.deepcopy(dict(fns)),
            "clock_start": clock_start,
            "steps_per_tick": steps_per_tick,
            "schedule_seed": self.schedule_seed,
            "checkpoint_every": self.checkpoint_every,
            **{key: getattr(ns, key) for key in NS_KWARGS if hasattr(ns, key)},
        }

    # mypy compares with Env.spec, a plain attribute; gymnasium's own Wrapper.spec is the same read-only property
    @property
    def spec(self) -> Optional[EnvSpec]:  # type: ignore[override]
        if self._cached_spec is not None:
            return self._cached_spec
        if self._spec_kwargs is None:
            return super().spec
        base: EnvSpec = self._spec_kwargs["env_id"]
        self._cached_spec = EnvSpec(
            id=f"hybrid_pg/NSGym-{base.name}-v{base.version or 0}",
            entry_point=f"{__name__}:make_nsgym_env",
            reward_threshold=base.reward_threshold,
            nondeterministic=base.nondeterministic,
            max_episode_steps=None,  # the base spec's TimeLimit is inside, under NS-Gym's wrapper
            order_enforce=False,
            disable_env_checker=True,
            kwargs=copy.deepcopy(self._spec_kwargs),
        )
        return self._cached_spec

    # ------------------------------------------------------------------------------------------
    # parameters
    # ------------------------------------------------------------------------------------------

    def _check(self, proposed: Dict[str, Any]) -> Dict[str, bool]:
        """NS-Gym's constraint check (True: rejected, the parameter keeps its value)."""
        checker = getattr(self._ns, "_constraint_checker", None)
        if checker is None:
            return {}
        full = {name: self._access.full(name, value) for name, value in proposed.items()}
        return dict(checker(full))

    def params_at(self, step: int) -> Dict[str, float]:
        """The scalar parameters of the transition at clock ``step`` (as in ``info["env_params"]``)."""
        return _scalars(self._tape.at(_check_int("step", step, 0)))

    @property
    def current_params(self) -> Dict[str, float]:
        """The values the simulator holds now (those of the next transition)."""
        return _scalars(self._applied or {})

    def _apply(self) -> None:
        values = self._tape.at(self.clock)
        applied = self._applied
        if applied is None:  # after a reset (NS-Gym's puts its initial values back): ask the simulator
            changed = [n for n in values if not _same(values[n], self._access.read(n))]
        else:
            changed = [n for n in values if not _same(values[n], applied[n])]
        if changed:
            for name in changed:
                self._access.write(name, values[name])
            resolver = getattr(self._ns, "_dependency_resolver", None)
            if resolver is not None:
                resolver()
        self._applied = values

    # ------------------------------------------------------------------------------------------
    # clock protocol (same as NonStationaryWrapper)
    # ------------------------------------------------------------------------------------------

    def get_clock(self) -> int:
        return self.clock

    def set_clock(self, step: int, steps_per_tick: Optional[int] = None) -> None:
        """Move the clock (and the simulator's parameters) to ``step``; ``steps_per_tick=0`` holds
        the parameters still (the oracle's batch at one moment of the schedule)."""
        step = _check_int("clock", step, 0)
        tick = self.steps_per_tick if steps_per_tick is None else _check_int("steps_per_tick", steps_per_tick, 0)
        self.clock = step
        self._apply()
        self._last_used = None
        self.steps_per_tick = tick
        self._seed_clock = step

    def state_dict(self) -> Dict[str, Any]:
        """Plain state: the clock and settings. The schedule itself is the NS-Gym update functions the
        env is built with; ``load_state_dict`` on an adapter built the same way (same update functions,
        same ``schedule_seed``) resumes exactly."""
        return {
            "kind": KIND,
            "clock": self.clock,
            "steps_per_tick": self.steps_per_tick,
            "checkpoint_every": self.checkpoint_every,
            "schedule_seed": self.schedule_seed,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping):
            raise ValueError(f"state must be a mapping, got {type(state).__name__}")
        unknown = sorted(set(state) - set(STATE_KEYS))
        if unknown or "clock" not in state or state.get("kind", KIND) != KIND:
            raise ValueError(f"not an NSGymAdapter state: unknown keys {unknown}, expected {list(STATE_KEYS)} with kind={KIND!r}")
        if state.get("schedule_seed", self.schedule_seed) != self.schedule_seed:
            warnings.warn(
                f"the state was saved with schedule_seed={state.get('schedule_seed')!r}, this env has {self.schedule_seed!r}: "
                "a random schedule will differ",
                stacklevel=2,
            )
        clock = _check_int("state['clock']", state["clock"], 0)
        self.steps_per_tick = _check_int("state['steps_per_tick']", state.get("steps_per_tick", self.steps_per_tick), 0)
        self.clock = self._seed_clock = clock
        self._applied = self._last_used = None
        self._apply()

    # ------------------------------------------------------------------------------------------
    # gymnasium API
    # ------------------------------------------------------------------------------------------

    @staticmethod
    def _state(obs: Any) -> Any:
        return obs[OBS_KEY] if isinstance(obs, Mapping) else obs

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        """A seeded reset puts the clock back to where it was last set (construction, ``set_clock``,
        ``load_state_dict``), as ``NonStationaryWrapper`` does; unseeded resets leave it running.
        NS-Gym's reset restores its initial parameters; they are set back to the clock's."""
        if seed is not None:
            self.clock, self._last_used = self._seed_clock, None
        obs, info = reset_between_applies(self, seed, options)
        info[ENV_CHANGE_INFO] = {name: 0 for name in self.param_names}
        info[DELTA_CHANGE_INFO] = {name: 0.0 for name in self.param_names}
        return self._state(obs), info

    def step(self, action):
        used, used_clock, previous = self._applied or {}, self.clock, self._last_used
        obs, reward, terminated, truncated, info = self.env.step(action)
        if not np.isscalar(reward) and hasattr(reward, "reward"):
            reward = reward.reward  # NS-Gym's Reward dataclass (scalar_reward=False)
        self.clock += self.steps_per_tick
        self._apply()
        info = dict(info)
        info[INFO_KEY] = _scalars(used)
        info[CLOCK_INFO_KEY] = used_clock
        change, delta = {}, {}
        for name in self.param_names:
            moved = previous is not None and not _same(used[name], previous[name])
            change[name] = int(moved)
            delta[name] = 0.0
            if previous is not None and moved:
                try:
                    delta[name] = float(np.sum(np.asarray(used[name], dtype=float) - np.asarray(previous[name], dtype=float)))
                except (TypeError, ValueError):
                    delta[name] = float("nan")
        info[ENV_CHANGE_INFO], info[DELTA_CHANGE_INFO] = change, delta
        self._last_used = used
        return self._state(obs), reward, terminated, truncated, info

    def __deepcopy__(self, memo: Dict[int, Any]) -> "NSGymAdapter":
        """A faithful copy (simulator state, RNGs, the schedule generator), not NS-Gym's planning env."""
        _plain_deepcopy(self._ns, memo)
        new = _plain_deepcopy(self, memo)
        new._applied = None  # a base env that pickles by its constructor (MuJoCo's EzPickle) comes back fresh
        new._apply()
        _copy_mujoco_state(self.unwrapped, new.unwrapped)
        return new


# ---------------------------------------------------------------------------------------------
# construction by names: NSGymWrapper (a config's env.wrappers entry) and make_nsgym_env
# ---------------------------------------------------------------------------------------------

UpdateSpec = Union[str, type, Callable[..., Any]]
SchedulerSpec = Union[str, type, Any]

#: the keys of one parameter's rule (its own entries, else NSGymWrapper's shared arguments of the same names)
RULE_KEYS = ("update_fn", "update_kwargs", "scheduler", "scheduler_kwargs")
#: NS-Gym schedulers that fire at isolated, known clock steps (the switch times of a study); the
#: others fire at every step (ContinuousScheduler) or at random
EVENT_SCHEDULERS = ("PeriodicScheduler", "DiscreteScheduler")


def _did_you_mean(word: str, candidates: Sequence[str]) -> str:
    matches = difflib.get_close_matches(word, list(candidates), n=2, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""


def _resolve(module: Any, spec: Any, what: str) -> Any:
    if isinstance(spec, str):
        try:
            return getattr(module, spec)
        except AttributeError:
            names = sorted(n for n in dir(module) if not n.startswith("_") and isinstance(getattr(module, n), type))
            raise ValueError(f"unknown NS-Gym {what} {spec!r}{_did_you_mean(spec, names)} (known: {names})") from None
    return spec


def _make_scheduler(scheduler: SchedulerSpec, kwargs: Mapping[str, Any]) -> Any:
    from ns_gym import schedulers
    from ns_gym.base import Scheduler

    scheduler = _resolve(schedulers, scheduler, "scheduler")
    if isinstance(scheduler, Scheduler):
        if kwargs:
            raise ValueError("scheduler_kwargs are for a scheduler given by name or class, not an instance")
        return copy.deepcopy(scheduler)  # one per parameter: schedulers can hold state (RNG, next event)
    return scheduler(**kwargs)


def parameter_rules(
    tunable_params: Union[str, Sequence[str], Mapping[str, Any]],
    *,
    scheduler: Optional[SchedulerSpec] = None,
    update_fn: Optional[UpdateSpec] = None,
    scheduler_kwargs: Optional[Mapping[str, Any]] = None,
    update_kwargs: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """``{parameter: rule}`` from :class:`NSGymWrapper`'s arguments; builds nothing (no NS-Gym needed).

    ``tunable_params`` is a parameter name or a list of names (each gets the shared ``update_fn``,
    ``update_kwargs``, ``scheduler`` and ``scheduler_kwargs``), or a mapping ``{name: rule}`` where a
    rule is an NS-Gym update function (used as given) or a mapping with keys among :data:`RULE_KEYS`,
    each missing one taken from the shared arguments. Mapping rules come back complete (every key of
    :data:`RULE_KEYS`) and deep-copied."""
    shared = {"update_fn": update_fn, "update_kwargs": update_kwargs, "scheduler": scheduler, "scheduler_kwargs": scheduler_kwargs}
    if isinstance(tunable_params, str):
        tunable_params = [tunable_params]
    if isinstance(tunable_params, Mapping):
        items = list(tunable_params.items())
    elif isinstance(tunable_params, Sequence):
        items = [(name, {}) for name in tunable_params]
    else:
        raise TypeError(
            f"tunable_params must be a parameter name, a list of names or a {{name: rule}} mapping, got {type(tunable_params).__name__}"
        )
    if not items:
        raise ValueError("tunable_params is empty: nothing would drift (NS-Gym's NoUpdate holds a parameter still)")
    rules: Dict[str, Any] = {}
    for name, rule in items:
        if not isinstance(name, str):
            raise TypeError(f"tunable_params: a parameter name must be a string, got {name!r}")
        if not isinstance(rule, Mapping):
            rules[name] = rule  # an NS-Gym update function
            continue
        unknown = sorted(str(key) for key in set(rule) - set(RULE_KEYS))
        if unknown:
            raise ValueError(
                f"tunable_params[{name!r}] has unknown key(s) {unknown}{_did_you_mean(unknown[0], RULE_KEYS)} (a rule's keys: {list(RULE_KEYS)})"
            )
        merged = copy.deepcopy({key: rule[key] if key in rule else shared[key] for key in RULE_KEYS})
        if merged["scheduler"] is None or merged["update_fn"] is None:
            raise ValueError(f"parameter {name!r} needs scheduler= and update_fn= (its own or the shared ones)")
        rules[name] = merged
    if not any(isinstance(rule, Mapping) for rule in rules.values()) and any(value is not None for value in shared.values()):
        raise ValueError(
            "scheduler/update_fn (and their kwargs) are not used: every parameter of tunable_params has its own update function"
        )
    return rules


def _update_function(name: str, rule: Any) -> Any:
    """The NS-Gym update function of one parameter's rule (an update function: itself)."""
    if not isinstance(rule, Mapping):
        return rule
    from ns_gym import update_functions

    try:
        make_fn = _resolve(update_functions, rule["update_fn"], "update function")
        return make_fn(_make_scheduler(rule["scheduler"], rule["scheduler_kwargs"] or {}), **(rule["update_kwargs"] or {}))
    except (TypeError, ValueError, AssertionError) as exc:  # NS-Gym checks its arguments with asserts
        raise ValueError(f"tunable_params[{name!r}]: {type(exc).__name__}: {exc}") from exc


def scheduler_events(rule: Mapping[str, Any], stop: int) -> Optional[List[int]]:
    """The clock steps ``1 <= t < stop`` at which a (mapping) rule's NS-Gym scheduler fires, asked of
    NS-Gym's scheduler itself, for the event schedulers (:data:`EVENT_SCHEDULERS`); None for the others
    (they fire at every step or at random: no switch times). Step 0 is the start, not a switch."""
    _require_ns_gym()
    scheduler = _make_scheduler(rule["scheduler"], rule.get("scheduler_kwargs") or {})
    if type(scheduler).__name__ not in EVENT_SCHEDULERS:
        return None
    return [t for t in range(1, int(stop)) if scheduler(t)]


def _ns_wrap(env: gym.Env, fns: Dict[str, Any], ns_kwargs: Mapping[str, Any]) -> Any:
    """NS-Gym's wrapper for ``env``'s kind (classic control or MuJoCo) around ``env``, driving ``fns``."""
    from ns_gym.base import MUJOCO_GETTERS, TUNABLE_PARAMS
    from ns_gym.wrappers import MujocoWrapper, NSClassicControlWrapper  # type: ignore[import-not-found]

    cls_name = env.unwrapped.__class__.__name__
    if cls_name in MUJOCO_GETTERS:
        wrapper = MujocoWrapper
    elif cls_name in TUNABLE_PARAMS:
        wrapper = NSClassicControlWrapper
    else:
        raise ValueError(f"NS-Gym has no continuous-control wrapper for {cls_name}")
    known = sorted(TUNABLE_PARAMS.get(cls_name, {}))
    unknown = sorted(set(fns) - set(known))
    if unknown:
        raise ValueError(f"{cls_name} has no NS-Gym tunable parameter(s) {unknown}{_did_you_mean(unknown[0], known)}; tunable: {known}")
    return wrapper(env, fns, **ns_kwargs)


class NSGymWrapper(NSGymAdapter):
    """NS-Gym's wrapper built by names around a *base* env, adapted (:class:`NSGymAdapter`): the
    ``nsgym`` entry of a config's ``env.wrappers``::

        env: {id: Pendulum-v1, wrappers: [{name: nsgym, kwargs: {tunable_params: [m], scheduler: PeriodicScheduler,
              scheduler_kwargs: {period: 5000}, update_fn: IncrementUpdate, update_kwargs: {k: 0.1}, steps_per_tick: 4}}]}

    :param env: the base env (``gym.make("Pendulum-v1")``, ``gym.make("HalfCheetah-v5")``, ...).
    :param tunable_params: parameter names sharing ``update_fn``/``scheduler``, or ``{name: rule}``
        with a rule per parameter (see :func:`parameter_rules`); names as in ``ns_gym.base.TUNABLE_PARAMS``.
    :param scheduler, scheduler_kwargs: an ``ns_gym.schedulers`` class or its name (or an instance, then
        without kwargs); each parameter gets its own.
    :param update_fn, update_kwargs: an ``ns_gym.update_functions`` class or its name, built as
        ``update_fn(scheduler, **update_kwargs)``.
    :param clock_start, steps_per_tick, schedule_seed, checkpoint_every: :class:`NSGymAdapter`'s.
    :param ns_kwargs: NS-Gym's wrapper settings (:data:`NS_KWARGS`); anything else is refused.
    """

    def __init__(
        self,
        env: gym.Env,
        tunable_params: Union[str, Sequence[str], Mapping[str, Any]],
        *,
        scheduler: Optional[SchedulerSpec] = None,
        update_fn: Optional[UpdateSpec] = None,
        scheduler_kwargs: Optional[Mapping[str, Any]] = None,
        update_kwargs: Optional[Mapping[str, Any]] = None,
        clock_start: int = 0,
        steps_per_tick: int = 1,
        schedule_seed: Optional[int] = None,
        checkpoint_every: int = 1000,
        **ns_kwargs: Any,
    ):
        _require_ns_gym()
        unknown = sorted(set(ns_kwargs) - set(NS_KWARGS))
        if unknown:  # NS-Gym's wrappers swallow unknown keywords: a typo would pass silently
            known = [p for p in inspect.signature(NSGymWrapper.__init__).parameters if p not in ("self", "env", "ns_kwargs")] + list(
                NS_KWARGS
            )
            raise TypeError(f"NSGymWrapper got unknown argument(s) {unknown}{_did_you_mean(unknown[0], known)} (its arguments: {known})")
        rules = parameter_rules(
            tunable_params, scheduler=scheduler, update_fn=update_fn, scheduler_kwargs=scheduler_kwargs, update_kwargs=update_kwargs
        )
        fns = {name: _update_function(name, rule) for name, rule in rules.items()}
        super().__init__(
            _ns_wrap(env, fns, ns_kwargs),
            clock_start=clock_start,
            steps_per_tick=steps_per_tick,
            schedule_seed=schedule_seed,
            checkpoint_every=checkpoint_every,
        )


def make_nsgym_env(
    env_id: Union[str, EnvSpec, gym.Env],
    tunable_params: Union[str, Sequence[str], Mapping[str, Any]],
    *,
    make_kwargs: Optional[Mapping[str, Any]] = None,
    render_mode: Optional[str] = None,
    **kwargs: Any,
) -> NSGymWrapper:
    """Build an NS-Gym env with NS-Gym's own wrapper, schedulers and update functions, adapted:
    :class:`NSGymWrapper` around ``gym.make(env_id, **make_kwargs)``.

    ``tunable_params`` is either NS-Gym's ``{parameter: update function}`` (instances, used as given),
    a list of parameter names that all get ``update_fn`` (an ``ns_gym.update_functions`` class or its
    name, built as ``update_fn(scheduler, **update_kwargs)``) gated by ``scheduler`` (an
    ``ns_gym.schedulers`` instance, class or name, with ``scheduler_kwargs``; each parameter gets its
    own copy), or ``{parameter: {update_fn, update_kwargs, scheduler, scheduler_kwargs}}`` (a rule
    per parameter)::

        make_nsgym_env("Pendulum-v1", ["m", "l"], scheduler="PeriodicScheduler", scheduler_kwargs={"period": 5000},
                       update_fn="IncrementUpdate", update_kwargs={"k": 0.05})

    ``env_id`` may also be an ``EnvSpec`` or a gymnasium env already made. The wrapper is picked by the base env:
    ``NSClassicControlWrapper`` (CartPole, Acrobot, MountainCar(Continuous), Pendulum) or
    ``MujocoWrapper`` (Ant, HalfCheetah, Hopper, ...). ``kwargs`` are :class:`NSGymWrapper`'s (the
    rules' shared arguments, the clock arguments, NS-Gym's wrapper settings such as ``scalar_reward``)."""
    _require_ns_gym()
    make_kwargs = dict(make_kwargs or {})
    if render_mode is not None:
        make_kwargs["render_mode"] = render_mode
    if isinstance(env_id, (str, EnvSpec)):
        base, made = gym.make(env_id, **make_kwargs), True
    else:
        base, made = env_id, False
    try:
        return NSGymWrapper(base, tunable_params, **kwargs)
    except Exception:
        if made:
            base.close()
        raise


__all__ = [
    "EVENT_SCHEDULERS",
    "NSGymAdapter",
    "NSGymWrapper",
    "RULE_KEYS",
    "find_ns_wrapper",
    "make_nsgym_env",
    "parameter_rules",
    "scheduler_events",
]
