"""Run configuration for the ``hybrid-pg`` command line: schema, loading, overrides, validation.

A config is a YAML mapping with four sections::

    env:                          # what to train on
      id: Pendulum-v1             # a registered gymnasium id ("module:Id" imports module first)
      n_envs: 1                   # parallel copies (rollout size = algo.n_steps * n_envs)
      vec_env: dummy              # "dummy" (in-process) or "subproc" (one process per copy)
      normalize: false            # wrap in VecNormalize (observations and rewards)
      env_kwargs: {}              # keyword arguments of gymnasium.make
      wrappers: []                # [{name: nonstationary, kwargs: {schedules: {g: {kind: sinusoid, ...}}}}, ...]
    algo:                         # any HybridPG constructor keyword, plus:
      policy: MlpPolicy           # "MlpPolicy", "CnnPolicy" or "MultiInputPolicy"
      policy_kwargs: {}           # e.g. {net_arch: [64, 64], activation_fn: Tanh}
    train:
      total_timesteps: 40000      # required
      seed: 0
      eval_freq: 0                # env steps (summed over the copies) between evaluations; 0 = off
      eval_episodes: 5
      progress_bar: false
      torch_threads: 1            # torch CPU threads; 1 is fastest for small MLPs and on shared machines
    output:
      dir: runs                   # parent folder of run directories (relative to the cwd)
      name: null                  # run-name prefix; default: the sanitised env id

:func:`load_config` reads a file (or the packaged default), applies ``--set`` overrides and returns
:func:`resolve_config`'s result: every section present, every default filled in (the ``algo``
section with all of HybridPG's YAML-representable defaults, so a run's ``config.yaml`` records the
hyperparameters it actually used and can be passed back to ``hybrid-pg train`` to repeat the run).
:func:`check_env` then verifies the environment (registered, Box action space with finite bounds)
by building one copy. Every problem raises :class:`ConfigError` with a message that names the
offending dotted key.

YAML note: the loader reads ``1e-3`` as a float (plain YAML 1.1 would read it as a string) and
rejects duplicate keys instead of silently keeping the last one.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import importlib.resources
import inspect
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Sequence, Tuple, Union

import yaml

__all__ = [
    "ALGO_RESERVED",
    "ConfigError",
    "DEFAULT_CONFIG_NAME",
    "apply_overrides",
    "check_env",
    "default_config_path",
    "dump_config",
    "import_env_plugins",
    "load_config",
    "parse_override",
    "policy_kwargs_for_model",
    "read_config_file",
    "resolve_config",
    "run_name",
]

DEFAULT_CONFIG_NAME = "default.yaml"

#: HybridPG keywords the command line sets itself; naming them under ``algo`` is an error.
ALGO_RESERVED: Dict[str, str] = {
    "env": "it is built from the env section",
    "seed": "use train.seed",
    "tensorboard_log": "it is always <run dir>/tensorboard",
    "verbose": "use --quiet",
    "_init_setup_model": "it is internal",
}

REQUIRED = object()  # marks a schema entry without a default

#: checker(dotted_key, value) -> the (possibly normalised) value, or raises ConfigError naming the key
Checker = Callable[[str, Any], Any]


class ConfigError(ValueError):
    """An invalid configuration; the message names the offending dotted key."""


# ------------------------------------------------------------------------------------------------
# YAML
# ------------------------------------------------------------------------------------------------


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float and rejects duplicate mapping keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
        seen: Dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                continue  # the parent reports unhashable keys
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
                )
            seen[key] = True
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 floats need a dot ("1.0e-3"); also accept the ubiquitous "1e-3" / "5E+4".
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from exc


def default_config_path() -> Path:
    """The packaged default config (``hybrid_pg/configs/default.yaml``, a copy of ``configs/default.yaml``)."""
    resource = importlib.resources.files("hybrid_pg") / "configs" / DEFAULT_CONFIG_NAME
    return Path(str(resource))


def read_config_file(path: Union[str, Path, None] = None) -> Dict[str, Any]:
    """The raw (unvalidated) mapping in ``path``; ``None`` reads the packaged default config."""
    path = default_config_path() if path is None else Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = _parse_yaml(path.read_text(encoding="utf-8"), str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level of a config must be a mapping of sections, got {_show(data)}")
    return data


def dump_config(config: Mapping[str, Any], path: Union[str, Path]) -> None:
    """Write a resolved config as YAML (sections and keys in schema order)."""
    Path(path).write_text(yaml.safe_dump(_plain(config), sort_keys=False, default_flow_style=None), encoding="utf-8")


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively, so safe_dump writes plain YAML."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------------
# --set overrides
# ------------------------------------------------------------------------------------------------


def parse_override(text: str) -> Tuple[List[str], Any]:
    """``"train.seed=3"`` -> (["train", "seed"], 3); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted KEY, e.g. train.seed=3")
    parts = key.split(".")
    if any(not p for p in parts):
        raise ConfigError(f"--set {text!r}: {key!r} is not a valid dotted key")
    return parts, _parse_yaml(raw, f"--set {key}")


def apply_overrides(config: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """A copy of ``config`` with each ``KEY=VALUE`` applied in order (later ones win)."""
    result = copy.deepcopy(config)
    for text in overrides:
        parts, value = parse_override(text)
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                prefix = ".".join(parts[: depth + 1])
                raise ConfigError(f"--set {'.'.join(parts)}: {prefix} is {_show(child)}, not a mapping")
            node = child
        node[parts[-1]] = value
    return result


# ------------------------------------------------------------------------------------------------
# value checkers
# ------------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_int(key: str, value: Any) -> int:
    """An int; integral floats (``1e5``) are accepted and converted."""
    if _is_int(value):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise ConfigError(f"{key} must be an int, got {_show(value)}")


def _int_at_least(minimum: int) -> Checker:
    def check(key: str, value: Any) -> int:
        number = _as_int(key, value)
        if number < minimum:
            raise ConfigError(f"{key} must be >= {minimum}, got {number}")
        return number

    return check


def _check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {_show(value)}")
    return value


def _check_str(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a non-empty string, got {_show(value)}")
    return value


def _optional(checker: Checker) -> Checker:
    def check(key: str, value: Any) -> Any:
        return None if value is None else checker(key, value)

    return check


def _one_of(*choices: str) -> Checker:
    def check(key: str, value: Any) -> str:
        if value not in choices:
            raise ConfigError(f"{key} must be one of {list(choices)}, got {_show(value)}{_suggest(value, choices)}")
        return value

    return check


def _check_mapping(key: str, value: Any) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a mapping, got {_show(value)}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{key} must have string keys, got {_show(bad[0])}")
    return dict(value)


#: short names for the wrappers most configs need; anything else is "package.module:Class"
WRAPPER_ALIASES = {"nonstationary": "hybrid_pg_envs.nonstationary:NonStationaryWrapper"}


def resolve_wrapper(name: str) -> Any:
    """The gymnasium wrapper class named ``name`` (an alias or ``"package.module:Class"``)."""
    target = WRAPPER_ALIASES.get(name, name)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected one of {sorted(WRAPPER_ALIASES)} or 'package.module:Class', got {name!r}")
    module = importlib.import_module(module_name)
    wrapper = getattr(module, attr, None)
    if not callable(wrapper):
        raise ValueError(f"{target!r} is not a class in {module_name}")
    return wrapper


def _check_wrappers(key: str, value: Any) -> List[Any]:
    """A list of ``{name: ..., kwargs: {...}}`` applied in order around each env copy."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{key} must be a list, got {_show(value)}")
    out = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(f"{where} must be a mapping with a 'name' (and optional 'kwargs'), got {_show(item)}")
        unknown = sorted(set(item) - {"name", "kwargs"})
        if unknown:
            raise ConfigError(f"{where} has unknown key(s) {unknown}; allowed: name, kwargs")
        kwargs = item.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise ConfigError(f"{where}.kwargs must be a mapping, got {_show(kwargs)}")
        try:
            resolve_wrapper(item["name"])
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"{where}.name: {exc}") from exc
        out.append({"name": item["name"], "kwargs": dict(kwargs)})
    return out


def apply_wrappers(env: Any, wrappers: Iterable[Mapping[str, Any]]) -> Any:
    for item in wrappers:
        env = resolve_wrapper(item["name"])(env, **item.get("kwargs", {}))
    return env


def _suggest(word: Any, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for close matches, else ``""``."""
    if not isinstance(word, str):
        return ""
    matches = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
    if not matches:
        return ""
    return "; did you mean " + " or ".join(repr(m) for m in matches) + "?"


#: section -> key -> (default or REQUIRED, checker)
SCHEMA: Dict[str, Dict[str, Tuple[Any, Checker]]] = {
    "env": {
        "id": (REQUIRED, _check_str),
        "n_envs": (1, _int_at_least(1)),
        "vec_env": ("dummy", _one_of("dummy", "subproc")),
        "normalize": (False, _check_bool),
        "env_kwargs": ({}, _check_mapping),
        "wrappers": ([], _check_wrappers),
    },
    "algo": {},  # checked against HybridPG's signature, see _resolve_algo
    "train": {
        "total_timesteps": (REQUIRED, _int_at_least(1)),
        "seed": (0, _int_at_least(0)),
        "eval_freq": (0, _int_at_least(0)),
        "eval_episodes": (5, _int_at_least(1)),
        "progress_bar": (False, _check_bool),
        "torch_threads": (1, _int_at_least(1)),
    },
    "output": {
        "dir": ("runs", _check_str),
        "name": (None, _optional(_check_str)),
    },
}


def _resolve_section(name: str, raw: Dict[str, Any]) -> Dict[str, Any]:
    schema = SCHEMA[name]
    unknown = [k for k in raw if k not in schema]
    if unknown:
        key = unknown[0]
        raise ConfigError(f"{name}.{key} is not a known key of the {name} section (known: {list(schema)}){_suggest(key, schema)}")
    resolved: Dict[str, Any] = {}
    for key, (default, checker) in schema.items():
        dotted = f"{name}.{key}"
        if key not in raw:
            if default is REQUIRED:
                raise ConfigError(f"{dotted} is required")
            resolved[key] = copy.deepcopy(default)
        else:
            resolved[key] = checker(dotted, raw[key])
    return resolved


# ------------------------------------------------------------------------------------------------
# the algo section: HybridPG's signature
# ------------------------------------------------------------------------------------------------


def _hybrid_pg_signature() -> Tuple[Dict[str, inspect.Parameter], Dict[str, Any]]:
    """HybridPG.__init__'s parameters (minus self) and their resolved annotations (may be partial)."""
    from hybrid_pg.hybrid_pg import HybridPG

    params = dict(inspect.signature(HybridPG.__init__).parameters)
    params.pop("self", None)
    params = {k: p for k, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    try:
        hints = typing.get_type_hints(HybridPG.__init__)
    except Exception:  # an unresolvable annotation: fall back to no type checks
        hints = {}
    return params, hints


def _policy_aliases() -> List[str]:
    from hybrid_pg.hybrid_pg import HybridPG

    return sorted(getattr(HybridPG, "policy_aliases", {}))


def _yaml_representable(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_yaml_representable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _yaml_representable(v) for k, v in value.items())
    return False


_UNION_TYPES = (Union, types.UnionType)


def _coerce(value: Any, annotation: Any) -> Any:
    """``value`` checked against ``annotation`` and normalised (ints to floats for float, integral
    floats to ints for int, tuples as lists); raises ``TypeError`` if no YAML value of this shape
    fits (classes and callables never do). Unresolved annotations accept anything."""
    if annotation is Any or annotation is inspect.Parameter.empty or isinstance(annotation, (str, typing.ForwardRef)):
        return value
    if annotation is type(None) or annotation is None:
        if value is None:
            return None
        raise TypeError
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in _UNION_TYPES:
        for arm in args:
            try:
                return _coerce(value, arm)
            except TypeError:
                continue
        raise TypeError
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if annotation is int:
        if _is_int(value):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise TypeError
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if annotation is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        if len(args) == 2 and args[1] is Ellipsis:
            return [_coerce(v, args[0]) for v in value]
        if args and len(args) != len(value):
            raise TypeError
        return [_coerce(v, a) for v, a in zip(value, args)] if args else list(value)
    if origin in (list, List) or annotation is list:
        if not isinstance(value, list):
            raise TypeError
        return [_coerce(v, args[0]) for v in value] if args else value
    if origin in (dict, Dict) or annotation is dict:
        if isinstance(value, dict):
            return value
        raise TypeError
    # classes, callables (schedules), torch.device, envs: nothing a YAML value can be
    raise TypeError


def _describe(annotation: Any) -> str:
    """A short human description of an annotation: 'an int', 'null or a float', ..."""
    names = {bool: "true/false", int: "an int", float: "a number", str: "a string", type(None): "null"}
    if annotation in names:
        return names[annotation]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in _UNION_TYPES:
        parts = [_describe(a) for a in args]
        parts = [p for p in parts if p]
        return " or ".join(dict.fromkeys(parts))
    if origin in (tuple, Tuple):
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
    if origin in (list, List):
        return "a list"
    if origin in (dict, Dict):
        return "a mapping"
    return ""  # not expressible in YAML; left out of the description


def _resolve_algo(raw: Dict[str, Any]) -> Dict[str, Any]:
    params, hints = _hybrid_pg_signature()
    allowed = [k for k in params if k not in ALGO_RESERVED]
    for key in raw:
        if key in ALGO_RESERVED:
            raise ConfigError(f"algo.{key} cannot be set in a config: {ALGO_RESERVED[key]}")
        if key not in params:
            raise ConfigError(f"algo.{key} is not a HybridPG parameter{_suggest(key, allowed) or ' (see the HybridPG docstring)'}")
    resolved: Dict[str, Any] = {"policy": "MlpPolicy", "policy_kwargs": {}}
    for key in allowed:
        if key in resolved or params[key].default is inspect.Parameter.empty:
            continue
        default = params[key].default
        if _yaml_representable(default):
            resolved[key] = _plain(copy.deepcopy(default))
    for key, value in raw.items():
        resolved[key] = _check_algo_value(key, value, hints.get(key, Any))
    return resolved


def _check_algo_value(key: str, value: Any, annotation: Any) -> Any:
    dotted = f"algo.{key}"
    if key == "policy":
        aliases = _policy_aliases()
        if not isinstance(value, str) or (aliases and value not in aliases):
            raise ConfigError(f"{dotted} must be one of {aliases}, got {_show(value)}{_suggest(value, aliases)}")
        return value
    if key == "policy_kwargs":
        kwargs = _check_mapping(dotted, value)
        if "activation_fn" in kwargs:
            _activation_class(f"{dotted}.activation_fn", kwargs["activation_fn"])
        return kwargs
    try:
        return _coerce(value, annotation)
    except TypeError:
        wanted = _describe(annotation)
        if wanted in ("", "null"):  # the other options are classes or callables
            wanted = (wanted + " (" if wanted else "") + "a class or callable, which a config cannot express" + (")" if wanted else "")
        raise ConfigError(f"{dotted} must be {wanted}, got {_show(value)}") from None


def _activation_class(key: str, name: Any) -> type:
    """``"Tanh"`` / ``"relu"`` -> ``torch.nn.Tanh`` / ``torch.nn.ReLU``."""
    from torch import nn

    if not isinstance(name, str):
        raise ConfigError(f"{key} must be the name of a torch.nn activation such as 'Tanh' or 'ReLU', got {_show(name)}")
    modules = {n: obj for n, obj in vars(nn).items() if isinstance(obj, type) and issubclass(obj, nn.Module)}
    by_lower = {n.lower(): n for n in modules}
    match = modules.get(name) or modules.get(by_lower.get(name.lower(), ""))
    if match is None:
        raise ConfigError(f"{key}={name!r} is not a torch.nn module{_suggest(name, list(modules))}")
    return match


def policy_kwargs_for_model(policy_kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """The config's policy_kwargs with names turned into objects (``activation_fn``: a torch.nn class)."""
    kwargs = dict(policy_kwargs)
    if isinstance(kwargs.get("activation_fn"), str):
        kwargs["activation_fn"] = _activation_class("algo.policy_kwargs.activation_fn", kwargs["activation_fn"])
    return kwargs


# ------------------------------------------------------------------------------------------------
# whole config
# ------------------------------------------------------------------------------------------------


def resolve_config(raw: Mapping[str, Any]) -> Dict[str, Any]:
    """Validate ``raw`` and fill every default; does not touch the environment (see :func:`check_env`)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a config must be a mapping of sections, got {_show(raw)}")
    unknown = [k for k in raw if k not in SCHEMA]
    if unknown:
        key = unknown[0]
        raise ConfigError(f"{key} is not a config section (sections: {list(SCHEMA)}){_suggest(key, SCHEMA)}")
    resolved: Dict[str, Any] = {}
    for section in SCHEMA:
        body = raw.get(section)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ConfigError(f"{section} must be a mapping, got {_show(body)}")
        resolved[section] = _resolve_algo(body) if section == "algo" else _resolve_section(section, body)
    return resolved


def load_config(path: Union[str, Path, None] = None, overrides: Sequence[str] = (), check_environment: bool = True) -> Dict[str, Any]:
    """Read ``path`` (None: the packaged default), apply ``overrides``, resolve, and (by default)
    check the environment. Raises :class:`ConfigError` naming the offending key."""
    config = resolve_config(apply_overrides(read_config_file(path), overrides))
    if check_environment:
        check_env(config)
    return config


# ------------------------------------------------------------------------------------------------
# the environment
# ------------------------------------------------------------------------------------------------


def import_env_plugins() -> bool:
    """Import ``hybrid_pg_envs`` (which registers the ``hybrid_pg/`` ids); False if it is not installed."""
    try:
        importlib.import_module("hybrid_pg_envs")
    except ModuleNotFoundError as exc:
        if exc.name != "hybrid_pg_envs":
            raise
        return False
    return True


def check_env(config: Mapping[str, Any]) -> None:
    """The env id is registered and its action space is a Box with finite bounds (builds one env)."""
    import gymnasium as gym
    import numpy as np

    env_id = config["env"]["id"]
    _lookup_env_id(env_id)
    try:
        env = gym.make(env_id, **config["env"]["env_kwargs"])
    except TypeError as exc:
        raise ConfigError(f"env.env_kwargs={_show(config['env']['env_kwargs'])} rejected by {env_id!r}: {exc}") from exc
    except Exception as exc:
        raise ConfigError(f"env.id={env_id!r} could not be created: {type(exc).__name__}: {exc}") from exc
    for i, item in enumerate(config["env"].get("wrappers", [])):
        try:
            env = apply_wrappers(env, [item])
        except Exception as exc:
            env.close()
            raise ConfigError(f"env.wrappers[{i}] ({item['name']}) rejected its kwargs: {type(exc).__name__}: {exc}") from exc
    try:
        space = env.action_space
    finally:
        env.close()
    if not isinstance(space, gym.spaces.Box):
        raise ConfigError(
            f"env.id={env_id!r} has action space {space}; HybridPG needs a continuous Box action space "
            "(use A2C/PPO for discrete actions)"
        )
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise ConfigError(f"env.id={env_id!r} has an unbounded Box action space {space}; HybridPG needs finite action bounds")


def _lookup_env_id(env_id: str) -> None:
    import gymnasium as gym

    plugins = import_env_plugins()
    name = env_id
    if ":" in env_id:
        module, _, name = env_id.partition(":")
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"env.id={env_id!r}: cannot import module {module!r}: {exc}") from exc
    try:
        gym.spec(name)
    except gym.error.Error as exc:
        hint = ""
        if name.startswith("hybrid_pg/"):
            hint = (
                " (hybrid_pg/ ids are registered by importing hybrid_pg_envs, "
                + ("which does not register this one)" if plugins else "which is not installed)")
            )
        raise ConfigError(f"env.id={env_id!r} is not a registered gymnasium environment: {exc}{hint}") from exc


def run_name(config: Mapping[str, Any], timestamp: str) -> str:
    """``{output.name or sanitised env id}_{estimator}_s{seed}_{timestamp}``."""
    prefix = config["output"]["name"] or config["env"]["id"]
    estimator = config["algo"].get("estimator", "hybrid")
    return f"{_sanitise(prefix)}_{_sanitise(str(estimator))}_s{config['train']['seed']}_{timestamp}"


def _sanitise(text: str) -> str:
    """File-name-safe: anything but letters, digits, '.', '_' and '-' becomes '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"
