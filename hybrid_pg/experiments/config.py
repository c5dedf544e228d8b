"""Run configuration of the experiment tooling: YAML loading, ``--set`` overrides and one schema.

A config is a YAML mapping with four sections::

    env:                          # what to train on
      id: Pendulum-v1             # a registered gymnasium id ("module:Id" imports module first)
      n_envs: 1                   # parallel copies (rollout size = algo.n_steps * n_envs)
      vec_env: dummy              # "dummy" (in-process) or "subproc" (one process per copy)
      normalize: false            # VecNormalize (observations and rewards; its discount is algo.gamma)
      env_kwargs: {}              # keyword arguments of gymnasium.make
      wrappers: []                # [{name: nonstationary, kwargs: {schedules: {g: {kind: sinusoid, ...}}}}, ...]
                                  # (aliases: nonstationary, nsgym; else "package.module:Class")
    algo:
      algorithm: hybrid_pg        # hybrid_pg | ppo | a2c (SB3's, same env, network and normalisation)
      policy: MlpPolicy           # "MlpPolicy", "CnnPolicy" or "MultiInputPolicy"
      policy_kwargs: {}           # e.g. {net_arch: [64, 64], activation_fn: Tanh}
      ...                         # HybridPG settings (hybrid_pg.settings.HybridPGSettings)
    train:
      total_timesteps: 40000      # required
      seed: 0
      eval_freq: 0                # env steps between deterministic evaluations; 0 = only at the end
      eval_episodes: 5
      progress_bar: false
      torch_threads: 1            # torch CPU threads; 1 is fastest for small MLPs and on shared machines
      device: cpu                 # torch device of the model ("cpu", "cuda", "auto")
    output:
      dir: runs                   # parent folder of run directories (relative to the cwd)
      name: null                  # run-name prefix; default: the sanitised env id

One validation style for every section: the ``algo`` section's settings go through
:func:`hybrid_pg.settings.validate_settings` (the schema the HybridPG constructor uses; for
``algorithm: ppo | a2c`` the same schema checks the settings SB3's class shares with HybridPG and
SB3's own defaults fill the rest), and ``env``, ``train`` and ``output`` are pydantic models of
their own. Every error is a :class:`ConfigError` whose message names the dotted key:
``"<dotted key>=<value>: <why>"`` (unknown keys: ``"<dotted key> is not a known key ...; did you
mean ...?"``).

:func:`load_config` reads a file (or the packaged default), applies ``--set`` overrides and returns
:func:`resolve_config`'s result: every section present, every default filled in, so a run's
``config.yaml`` records the hyperparameters it actually used and can be passed back to
``hybrid-pg train`` to repeat the run. :func:`check_env` then verifies the environment by building
one copy.

YAML note: the loader is a SafeLoader (``!!python/object`` and friends are refused) that reads
``1e-3`` as a float (plain YAML 1.1 would read it as a string) and rejects duplicate keys instead of
silently keeping the last one.

Trust: configs and model files are trusted input. A config's ``env.id`` (``"module:Id"``) and
``env.wrappers`` (``"package.module:Class"``) *import* the module they name, which runs that module's
code; what is checked is only what the name resolves to: a wrapper must be a ``gymnasium.Wrapper``
subclass, and an env id's registered entry point a ``gymnasium.Env`` subclass or a Python function
(an env factory), so e.g. ``os:system`` is refused before anything is called. Model files
(``model.zip``, ``vecnormalize.pkl``) are pickles, as in SB3: loading one can run arbitrary code.
Run only configs and models from sources you trust.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import importlib.resources
import inspect
import math
import re
import secrets
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from typing_extensions import Annotated

from hybrid_pg.settings import HybridPGSettings, SettingsError, validate_settings

__all__ = [
    "ALGORITHMS",
    "ALGO_RESERVED",
    "ConfigError",
    "DEFAULT_CONFIG_NAME",
    "EnvSection",
    "OutputSection",
    "TrainSection",
    "algorithm_class",
    "algorithm_kwargs",
    "apply_overrides",
    "apply_wrappers",
    "check_env",
    "default_config_path",
    "dump_config",
    "import_env_plugins",
    "load_config",
    "parse_override",
    "policy_kwargs_for_model",
    "read_config_file",
    "resolve_algo",
    "resolve_config",
    "resolve_wrapper",
    "run_name",
    "sanitise",
    "section_error",
    "suggest",
]

DEFAULT_CONFIG_NAME = "default.yaml"

#: what ``algo.algorithm`` may name: HybridPG, or SB3's PPO / A2C on the same env, network and normalisation
ALGORITHMS = ("hybrid_pg", "ppo", "a2c")

#: algorithm keywords the runner sets itself; naming them under ``algo`` is an error.
ALGO_RESERVED: Dict[str, str] = {
    "env": "it is built from the env section",
    "seed": "use train.seed",
    "device": "use train.device",
    "tensorboard_log": "it is always <run dir>/tensorboard",
    "verbose": "use --quiet",
    "_init_setup_model": "it is internal",
}

#: keys of the algo section that are not algorithm settings
ALGO_OWN_KEYS = ("algorithm", "policy", "policy_kwargs")


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
    """The packaged default config, ``hybrid_pg/experiments/configs/default.yaml`` (the repository's
    ``configs/default.yaml`` is a symlink to it: one copy)."""
    resource = importlib.resources.files("hybrid_pg.experiments") / "configs" / DEFAULT_CONFIG_NAME
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
# error messages: one format for every section
# ------------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def suggest(word: Any, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for close matches, else ``""``."""
    if not isinstance(word, str):
        return ""
    matches = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
    if not matches:
        return ""
    return "; did you mean " + " or ".join(repr(m) for m in matches) + "?"


def _dotted(prefix: str, loc: Sequence[Any]) -> str:
    """``("wrappers", 0, "name")`` under ``env`` -> ``env.wrappers[0].name``."""
    text = prefix
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _model_keys(model: Any, loc: Sequence[Any]) -> List[str]:
    """The known keys of the (sub)model at ``loc`` (for "did you mean")."""
    fields: Any = model.model_fields
    for part in loc:
        if isinstance(part, int):
            continue
        field = fields.get(part)
        annotation = getattr(field, "annotation", None)
        inner = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            break
        fields = inner[0].model_fields
    return list(fields)


def section_error(exc: ValidationError, prefix: str, model: Any) -> ConfigError:
    """A pydantic error of a section model as a :class:`ConfigError` naming the dotted key."""
    error = exc.errors(include_url=False)[0]
    loc = tuple(error.get("loc") or ())
    kind = error.get("type")
    if kind == "extra_forbidden":
        known = _model_keys(model, loc[:-1])
        return ConfigError(f"{_dotted(prefix, loc)} is not a known key (known: {known}){suggest(loc[-1], known)}")
    if kind == "missing":
        return ConfigError(f"{_dotted(prefix, loc)} is required")
    why = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if kind == "model_type" or kind == "dict_type":
        why = "must be a mapping"
    return ConfigError(f"{_dotted(prefix, loc)}={_show(error.get('input'))}: {why}")


# ------------------------------------------------------------------------------------------------
# value types of the env, train and output sections
# ------------------------------------------------------------------------------------------------


def _int_at_least(minimum: int, maximum: Optional[int] = None, why: str = "") -> Any:
    """An int >= ``minimum`` (and <= ``maximum``); integral floats (YAML ``1e5``) are accepted and converted."""

    def check(value: Any) -> int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be an integer")
        if value < minimum:
            raise ValueError(f"must be >= {minimum}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be <= {maximum}{why}")
        return value

    return Annotated[int, BeforeValidator(check)]


def _strict_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _non_empty_str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def _one_of(*choices: str) -> Any:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {list(choices)}{suggest(value, choices)}")
        return value

    return Annotated[str, BeforeValidator(check)]


def _string_keys(value: Any) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError("must be a mapping with string keys")
    return dict(value)


Bool = Annotated[bool, BeforeValidator(_strict_bool)]
Text = Annotated[str, BeforeValidator(_non_empty_str)]
StrMapping = Annotated[Dict[str, Any], BeforeValidator(_string_keys)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: short names for the wrappers most configs need; anything else is "package.module:Class"
WRAPPER_ALIASES = {
    "nonstationary": "hybrid_pg_envs.nonstationary:NonStationaryWrapper",
    # NS-Gym's wrapper, schedulers and update functions by name around the base env (needs the [nsgym] extra)
    "nsgym": "hybrid_pg_envs.nsgym:NSGymWrapper",
}


def resolve_wrapper(name: str) -> Any:
    """The gymnasium wrapper class named ``name`` (an alias or ``"package.module:Class"``): it must
    be a ``gymnasium.Wrapper`` subclass (any other callable, e.g. ``os:system``, is refused; the
    module is imported to find out: see "Trust" in the module docstring)."""
    import gymnasium as gym

    target = WRAPPER_ALIASES.get(name, name)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected one of {sorted(WRAPPER_ALIASES)} or 'package.module:Class', got {name!r}")
    module = importlib.import_module(module_name)
    wrapper = getattr(module, attr, None)
    if not (inspect.isclass(wrapper) and issubclass(wrapper, gym.Wrapper)):
        raise ValueError(f"{target!r} is not a gymnasium.Wrapper subclass (got {type(wrapper).__name__})")
    return wrapper


def apply_wrappers(env: Any, wrappers: Iterable[Mapping[str, Any]]) -> Any:
    for item in wrappers:
        env = resolve_wrapper(item["name"])(env, **item.get("kwargs", {}))
    return env


class WrapperEntry(_Section):
    """One ``env.wrappers`` item: a wrapper applied around each env copy (a bare string is its name)."""

    name: Text
    kwargs: StrMapping = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _importable(cls, name: str) -> str:
        try:
            resolve_wrapper(name)
        except ImportError as exc:
            raise ValueError(str(exc)) from None
        return name


class EnvSection(_Section):
    id: Text
    n_envs: _int_at_least(1) = 1  # type: ignore[valid-type]
    vec_env: _one_of("dummy", "subproc") = "dummy"  # type: ignore[valid-type]
    normalize: Bool = False
    env_kwargs: StrMapping = Field(default_factory=dict)
    wrappers: List[WrapperEntry] = Field(default_factory=list)

    @field_validator("wrappers", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value


#: the largest budget a run may ask for (a typo guard: no run here comes near it)
MAX_TIMESTEPS = 10**12
#: the largest seed: numpy's seeds are 32-bit and the evaluation env's seed is offset from the run's
MAX_SEED = 2**31 - 1


def _torch_device(value: Any) -> str:
    """``"auto"`` or a name ``torch.device`` accepts (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    if not isinstance(value, str) or not value:
        raise ValueError("must be a torch device name such as 'cpu', 'cuda', 'cuda:0' or 'auto'")
    if value != "auto":
        import torch as th

        try:
            th.device(value)
        except (RuntimeError, ValueError):
            raise ValueError("is not a torch device; use 'cpu', 'cuda', 'cuda:<index>', 'mps' or 'auto'") from None
    return value


class TrainSection(_Section):
    total_timesteps: _int_at_least(1, MAX_TIMESTEPS, " (env steps)")  # type: ignore[valid-type]
    seed: _int_at_least(0, MAX_SEED) = 0  # type: ignore[valid-type]
    eval_freq: _int_at_least(0) = 0  # type: ignore[valid-type]
    eval_episodes: _int_at_least(1) = 5  # type: ignore[valid-type]
    progress_bar: Bool = False
    torch_threads: _int_at_least(1) = 1  # type: ignore[valid-type]
    # small MLP policies train faster on the CPU, and CPU runs of a seed are reproducible
    device: Annotated[str, BeforeValidator(_torch_device)] = "cpu"


class OutputSection(_Section):
    dir: Text = "runs"
    name: Optional[Text] = None


SECTIONS: Dict[str, Any] = {"env": EnvSection, "algo": None, "train": TrainSection, "output": OutputSection}


def _resolve_section(name: str, raw: Mapping[str, Any]) -> Dict[str, Any]:
    model = SECTIONS[name]
    try:
        return _plain(model(**raw).model_dump())
    except ValidationError as exc:
        raise section_error(exc, name, model) from None


# ------------------------------------------------------------------------------------------------
# the algo section: HybridPG's settings schema
# ------------------------------------------------------------------------------------------------


def algorithm_class(algorithm: str) -> Any:
    """The class ``algo.algorithm`` names (HybridPG, SB3's PPO or A2C)."""
    if algorithm == "hybrid_pg":
        from hybrid_pg.hybrid_pg import HybridPG

        return HybridPG
    from stable_baselines3 import A2C, PPO

    return {"ppo": PPO, "a2c": A2C}[algorithm]


def _schedule_value(value: Any) -> Any:
    """``"lin_<x>"`` (the zoo's linear schedule) validates as the number x."""
    if isinstance(value, str) and value.startswith("lin_"):
        try:
            return float(value[4:])
        except ValueError:
            return value
    return value


def linear_schedule(initial: float) -> Any:
    def schedule(progress_remaining: float) -> float:
        return progress_remaining * initial

    return schedule


def _validated(settings: Mapping[str, Any]) -> HybridPGSettings:
    checked = {k: _schedule_value(v) if k in ("learning_rate", "clip_range") else v for k, v in settings.items()}
    try:
        return validate_settings(**checked)
    except SettingsError as exc:
        raise ConfigError(f"algo.{exc}") from None


def resolve_algo(raw: Mapping[str, Any]) -> Dict[str, Any]:
    """The algo section validated and filled in: ``algorithm``, ``policy``, ``policy_kwargs``, then
    every setting (HybridPG: all YAML-representable defaults of :class:`HybridPGSettings`; PPO/A2C:
    the given settings, checked by the same schema, and SB3's own defaults for the rest)."""
    algorithm = raw.get("algorithm", "hybrid_pg")
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"algo.algorithm={_show(algorithm)}: must be one of {list(ALGORITHMS)}{suggest(algorithm, ALGORITHMS)}")
    for key in raw:
        if key in ALGO_RESERVED:
            raise ConfigError(f"algo.{key} cannot be set in a config: {ALGO_RESERVED[key]}")
    cls = algorithm_class(algorithm)
    aliases = sorted(getattr(cls, "policy_aliases", {}))
    policy = raw.get("policy", "MlpPolicy")
    if not isinstance(policy, str) or (aliases and policy not in aliases):
        raise ConfigError(f"algo.policy={_show(policy)}: must be one of {aliases}{suggest(policy, aliases)}")
    try:
        policy_kwargs = _string_keys(raw.get("policy_kwargs"))
    except ValueError as exc:
        raise ConfigError(f"algo.policy_kwargs={_show(raw.get('policy_kwargs'))}: {exc}") from None
    if "activation_fn" in policy_kwargs:
        _activation_class("algo.policy_kwargs.activation_fn", policy_kwargs["activation_fn"])
    if "net_arch" in policy_kwargs:
        _check_net_arch(policy_kwargs["net_arch"])
    given = {k: v for k, v in raw.items() if k not in ALGO_OWN_KEYS}
    resolved: Dict[str, Any] = {"algorithm": algorithm, "policy": policy, "policy_kwargs": policy_kwargs}
    if algorithm == "hybrid_pg":
        settings = _validated(given).yaml_dict()
    else:
        settings = _baseline_settings(algorithm, cls, given)
    # "lin_<x>" strings stay as written: the runner turns them into schedules
    settings.update({k: v for k, v in given.items() if isinstance(v, str) and v.startswith("lin_")})
    resolved.update(_plain(settings))
    return resolved


def _baseline_settings(algorithm: str, cls: Any, given: Mapping[str, Any]) -> Dict[str, Any]:
    """PPO/A2C: settings shared with HybridPG, checked by its schema; SB3's defaults for the rest."""
    params = inspect.signature(cls.__init__).parameters
    shared = [k for k in HybridPGSettings.model_fields if k in params and k not in ALGO_RESERVED]
    for key in given:
        if key not in shared:
            raise ConfigError(f"algo.{key} is not a setting of SB3's {cls.__name__} here (its settings: {shared}){suggest(key, shared)}")
    # gSDE is SB3's own (HybridPG refuses it): checked here, not by HybridPG's schema
    sde = given.get("use_sde", False)
    if not isinstance(sde, bool):
        raise ConfigError(f"algo.use_sde={_show(sde)}: must be true or false")
    checked = _validated({k: v for k, v in given.items() if k != "use_sde"})
    out: Dict[str, Any] = {}
    for key in shared:
        if key == "use_sde" and key in given:
            out[key] = sde
        elif key in given:
            out[key] = getattr(checked, key)
        elif isinstance(params[key].default, (bool, int, float, str, type(None))):  # not schedules or classes
            out[key] = params[key].default
    return out


def _activation_class(key: str, name: Any) -> type:
    """``"Tanh"`` / ``"relu"`` -> ``torch.nn.Tanh`` / ``torch.nn.ReLU``."""
    from torch import nn

    if not isinstance(name, str):
        raise ConfigError(f"{key}={_show(name)}: must be the name of a torch.nn activation such as 'Tanh' or 'ReLU'")
    modules = {n: obj for n, obj in vars(nn).items() if isinstance(obj, type) and issubclass(obj, nn.Module)}
    by_lower = {n.lower(): n for n in modules}
    match = modules.get(name) or modules.get(by_lower.get(name.lower(), ""))
    if match is None:
        raise ConfigError(f"{key}={name!r} is not a torch.nn module{suggest(name, list(modules))}")
    return match


def _check_net_arch(net_arch: Any) -> None:
    """SB3's ``net_arch``: a list of layer widths (shared by actor and critic) or ``{pi: [...], vf: [...]}``;
    every width a positive integer (a width of 0 or below builds a network that cannot learn, or fails)."""
    key = "algo.policy_kwargs.net_arch"
    if isinstance(net_arch, dict):
        unknown = [k for k in net_arch if k not in ("pi", "vf")]
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]} is not a known key (known: ['pi', 'vf']){suggest(unknown[0], ('pi', 'vf'))}")
        layers = {f"{key}.{k}": v for k, v in net_arch.items()}
    else:
        layers = {key: net_arch}
    for where, widths in layers.items():
        if not isinstance(widths, list) or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
            raise ConfigError(f"{where}={_show(widths)}: must be a list of layer widths, each an integer >= 1 (e.g. [64, 64])")


def policy_kwargs_for_model(policy_kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """The config's policy_kwargs with names turned into objects (``activation_fn``: a torch.nn class).
    A deep copy: SB3 algorithms write into policy_kwargs (A2C adds its optimizer class)."""
    kwargs = copy.deepcopy(dict(policy_kwargs))
    if isinstance(kwargs.get("activation_fn"), str):
        kwargs["activation_fn"] = _activation_class("algo.policy_kwargs.activation_fn", kwargs["activation_fn"])
    return kwargs


def algorithm_kwargs(algo: Mapping[str, Any]) -> Dict[str, Any]:
    """The constructor keywords of a resolved algo section (policy_kwargs as objects, ``lin_<x>`` as schedules)."""
    kwargs = {k: copy.deepcopy(v) for k, v in algo.items() if k not in ALGO_OWN_KEYS}
    for name in ("learning_rate", "clip_range"):
        value = kwargs.get(name)
        if isinstance(value, str) and value.startswith("lin_"):
            kwargs[name] = linear_schedule(float(value[4:]))
    kwargs["policy_kwargs"] = policy_kwargs_for_model(algo.get("policy_kwargs") or {})
    return kwargs


# ------------------------------------------------------------------------------------------------
# whole config
# ------------------------------------------------------------------------------------------------

#: top-level keys of a run directory's config.yaml that describe the run rather than configure it
PROVENANCE_KEY = "provenance"


def resolve_config(raw: Mapping[str, Any]) -> Dict[str, Any]:
    """Validate ``raw`` and fill every default; does not touch the environment (see :func:`check_env`).
    A ``provenance`` section (written into a run's config.yaml) is ignored."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a config must be a mapping of sections, got {_show(raw)}")
    unknown = [k for k in raw if k not in SECTIONS and k != PROVENANCE_KEY]
    if unknown:
        key = unknown[0]
        raise ConfigError(f"{key} is not a config section (sections: {list(SECTIONS)}){suggest(key, SECTIONS)}")
    resolved: Dict[str, Any] = {}
    for section in SECTIONS:
        body = raw.get(section)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ConfigError(f"{section} must be a mapping, got {_show(body)}")
        resolved[section] = resolve_algo(body) if section == "algo" else _resolve_section(section, body)
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
    """The env id is registered, its kwargs and wrappers are accepted, one reset and one step work
    and return observations of the declared shape, a non-stationary schedule keeps its parameters
    valid until the end of training, and (for HybridPG) the action space is a Box with finite bounds
    (builds one env; the training envs are built later, apart)."""
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
        except ImportError as exc:  # a wrapper whose optional dependency is missing says what to install
            env.close()
            raise ConfigError(f"env.wrappers[{i}] ({item['name']}) cannot be built here: {exc}") from exc
        except Exception as exc:
            env.close()
            raise ConfigError(f"env.wrappers[{i}] ({item['name']}) rejected its kwargs: {type(exc).__name__}: {exc}") from exc
    try:
        space = env.action_space
        _check_schedules_until_the_end(env, config)
        _first_step(env, config)
    finally:
        env.close()
    if config["algo"].get("algorithm", "hybrid_pg") != "hybrid_pg":
        return
    if not isinstance(space, gym.spaces.Box):
        raise ConfigError(
            f"env.id={env_id!r} has action space {space}; HybridPG needs a continuous Box action space (use A2C/PPO for discrete actions)"
        )
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise ConfigError(f"env.id={env_id!r} has an unbounded Box action space {space}; HybridPG needs finite action bounds")


def _env_key(config: Mapping[str, Any]) -> str:
    """The key a failure of the built env is charged to: its kwargs when there are any, else its id."""
    env = config["env"]
    if env.get("env_kwargs"):
        return f"env.env_kwargs={_show(env['env_kwargs'])}"
    return f"env.id={env['id']!r}"


def _first_step(env: Any, config: Mapping[str, Any]) -> None:
    """One seeded reset and one step: an env kwarg of the wrong type (``g: abc``), a renderer that is
    not installed, a mis-declared observation space fail here, before any run directory exists."""
    import gymnasium as gym
    import numpy as np

    def check_shape(obs: Any, when: str) -> None:
        space = env.observation_space
        if isinstance(space, gym.spaces.Box) and np.shape(obs) != space.shape:
            raise ConfigError(
                f"env.id={config['env']['id']!r}: {when} returned an observation of shape {np.shape(obs)}, "
                f"but its observation_space has shape {space.shape}"
            )

    try:
        obs, _ = env.reset(seed=0)
        check_shape(obs, "reset")
        obs = env.step(env.action_space.sample())[0]
        check_shape(obs, "step")
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{_env_key(config)}: the env failed its first reset and step: {type(exc).__name__}: {exc}") from exc


def _check_schedules_until_the_end(env: Any, config: Mapping[str, Any]) -> None:
    """A NonStationaryWrapper's schedules, evaluated over every clock the run will reach (the budget
    in whole rollouts), must keep each parameter valid for the env (e.g. a linear drift that takes a
    mass below 0 halfway through is refused now, not then)."""
    import numpy as np

    try:
        schedules, adapter = env.get_wrapper_attr("schedules"), env.get_wrapper_attr("adapter")
        state = env.get_wrapper_attr("state_dict")()
    except AttributeError:
        return
    if not isinstance(schedules, Mapping) or not hasattr(adapter, "check_value"):
        return
    n_envs = config["env"]["n_envs"]
    n_steps = int(config["algo"].get("n_steps") or 1)
    per_env_steps = math.ceil(config["train"]["total_timesteps"] / (n_steps * n_envs)) * n_steps
    start, tick = int(state["clock"]), int(state["steps_per_tick"])
    clocks = np.unique(np.linspace(start, start + tick * per_env_steps, num=1001).round().astype(np.int64))
    for name, schedule in schedules.items():
        for clock in clocks:
            try:
                adapter.check_value(name, schedule.value(int(clock)))
            except ValueError as exc:
                raise ConfigError(
                    f"env.wrappers: the schedule of {name!r} leaves the env's valid range at clock {int(clock)} "
                    f"(the run reaches clock {int(clocks[-1])}): {exc}"
                ) from None


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
        spec = gym.spec(name)
    except gym.error.Error as exc:
        hint = ""
        if name.startswith("hybrid_pg/"):
            hint = " (hybrid_pg/ ids are registered by importing hybrid_pg_envs, " + (
                "which does not register this one)" if plugins else "which is not installed)"
            )
        raise ConfigError(f"env.id={env_id!r} is not a registered gymnasium environment: {exc}{hint}") from exc
    _check_entry_point(env_id, spec.entry_point)


def _check_entry_point(env_id: str, entry_point: Any) -> None:
    """An env id's entry point must be a ``gymnasium.Env`` subclass or a Python function (a
    factory); anything else (a builtin such as ``os.system``, a non-Env class) is refused before
    ``gymnasium.make`` would call it."""
    import gymnasium as gym
    from gymnasium.envs.registration import load_env_creator

    try:
        creator = load_env_creator(entry_point) if isinstance(entry_point, str) else entry_point
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"env.id={env_id!r}: its entry point {entry_point!r} cannot be loaded: {exc}") from exc
    if inspect.isclass(creator) and issubclass(creator, gym.Env):
        return
    if inspect.isfunction(creator):
        return
    raise ConfigError(f"env.id={env_id!r}: its entry point {entry_point!r} is neither a gymnasium.Env subclass nor an env factory function")


def run_name(config: Mapping[str, Any], timestamp: str) -> str:
    """``{output.name or sanitised env id}_{estimator (HybridPG) or algorithm}_s{seed}_{timestamp}-{8 random hex}``:
    runs started in the same second (a loop of ``hybrid-pg train ... &``) get different names."""
    prefix = config["output"]["name"] or config["env"]["id"]
    algo = config["algo"]
    variant = algo.get("estimator", "hybrid") if algo.get("algorithm", "hybrid_pg") == "hybrid_pg" else algo["algorithm"]
    return f"{sanitise(prefix)}_{sanitise(str(variant))}_s{config['train']['seed']}_{timestamp}-{secrets.token_hex(4)}"


def sanitise(text: str) -> str:
    """File-name-safe: anything but letters, digits, '.', '_' and '-' becomes '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"
