"""Estimator ablations: a grid of (environment x estimator x seed) HybridPG runs, and its report.

``hybrid-pg ablate CONFIG`` reads an ablation file, validates every cell of the grid before
anything runs, trains the missing runs in parallel worker processes (resumable: a finished run's
result file is never recomputed, so a second invocation trains nothing) and writes, per
environment, a table and two figures (see :mod:`hybrid_pg.experiments.ablate_report`).

Ablation file (YAML; ``configs/ablate_pendulum.yaml`` is a full example)::

    name: ablate_pendulum          # optional; default: the file name without extension
    output_dir: results/ablate_pendulum   # optional; default results/<name>; --out overrides
    seeds: 5                       # an int n (seeds 0..n-1) or a list of ints >= 0; --seeds overrides
    total_timesteps: 100000        # env steps per run (required)
    eval_episodes: 10              # deterministic evaluation episodes after training (default 10)
    skip_updates: 0                # first updates left out of the gradient-variance medians (default 0)
    reference: reinforce           # the estimator every other one is compared with (default reinforce)
    baseline:                      # optional: also write goals_<name>.md, every cell against this one
      name: ppo                    #   (hybrid_pg.experiments.baseline_goals): IQM, P(improvement), steps
      floor: reinforce             #   to its return, worst seeds; floor + floor_at_steps: each cell's
      floor_at_steps: 100000       #   worst seed at that budget against the floor cell's worst,
                                   #   and every cell against the floor paired by seed (never loses, wins)
      goals: {poi_envs: 2, faster_envs: 1, wins_envs: 2}   # optional: envs each goal needs (these defaults;
                                   #   wins_envs needs a floor; default none: not reported)
    normalize: false               # VecNormalize for every env (default false; an env entry may override)
    eval_freq: 0                   # env steps between evaluations during training (default 0: only at the end)
    algo:                          # settings shared by every cell (the algo section of `hybrid-pg
      n_steps: 1024                #   train`, algorithm included; policy must stay MlpPolicy)
      gamma: 0.9
    envs:                          # required, non-empty; each entry a gymnasium id or a mapping:
      - id: Pendulum-v1            #   id (required)
        name: pendulum_critic      #   file-name-safe name in outputs (default: the id, sanitised)
        n_envs: 4                  #   parallel copies (default 1)
        normalize: false           #   VecNormalize (default false)
        algo: {pathwise_source: critic}   # merged over the shared algo
      - hybrid_pg/Pendulum-v0
    estimators:                    # required, non-empty; each entry a name or a mapping:
      - hybrid                     #   a name x means {name: x, algo: {estimator: x}}
      - reinforce
      - {name: no_bias_correction, algo: {estimator: hybrid, bias_correction: false}}
      - {name: ppo, algo: {algorithm: ppo}}   # SB3's PPO on the same env, network and normalisation
      - {name: hybrid_model, algo: {pathwise_source: model}, envs: [pendulum_critic]}
                                   #   envs: only on these env entries (their names); default every env.
                                   #   The reference, baseline, floor and optimum_floor cells run on every env
    fixed_lambdas: [0.25, 0.5]     # shorthand: adds {name: lam<x>, algo: {estimator: hybrid, fixed_lambda: x}}
    optimum_floor: reinforce       # optional: also write optimum.md (tasks every cell solves: does each
                                   #   seed stay at the optimum, and its std against this cell's;
                                   #   hybrid_pg.experiments.optimum_goals)
    contrasts:                     # optional: pairs of estimators compared with each other, paired by
      - [no_bias_correction, hybrid]  #   the seeds both ran (in table_<env>.md beside the reference
                                   #   comparison, and contrasts_<env>.csv): a candidate against the default
    reuse_runs_from: [docs/results/mujoco]   # optional: other grids' output folders; a run whose seed and
                                   #   resolved settings equal a finished run there is copied, not trained
                                   #   (its folder gets adopted_from.txt naming the source)

A cell's HybridPG keywords are the shared ``algo``, then the env entry's ``algo``, then the
estimator entry's ``algo`` merged over each other (nested mappings such as ``policy_kwargs`` merge
key by key). Every cell is a ``hybrid-pg train`` config (:mod:`hybrid_pg.experiments.config`),
resolved and its env and model built once by the run engine before anything trains, so a bad value
fails up front; the error names the key as written in the ablation file (e.g.
``estimators[3].algo.fixed_lambda``) and the cell.

Runs are trained by the one run engine (:func:`hybrid_pg.experiments.runner.run_grid`), labelled
``<env name>__<estimator name>``, each in its run directory under ``<out>/runs/`` (named by label,
seed and a hash of the resolved config); each is deterministic given its seed. A run directory with
a ``result.json`` is finished and never retrained; changing a cell's settings changes its runs'
names, so they run again; adding seeds runs only the new ones. The name hashes the *resolved*
settings, defaults included, so a release that adds a setting renames every HybridPG run and a grid
reruns after such an upgrade: deliberately, since a run's name then says exactly which settings made
it. ``--seeds`` trains only the seeds given, while the reports cover the file's seeds and those.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from hybrid_pg.experiments.config import MAX_TIMESTEPS, ConfigError, check_env, read_config_file, resolve_config, sanitise, suggest
from hybrid_pg.experiments.runner import check_buildable

if TYPE_CHECKING:  # the report modules are imported only where reports are written
    from hybrid_pg.experiments.baseline_goals import GoalThresholds
    from hybrid_pg.experiments.fallback_goals import GridPlan

__all__ = [
    "Ablation",
    "AblationResult",
    "Cell",
    "EnvEntry",
    "EstimatorEntry",
    "TOP_LEVEL_KEYS",
    "goal_settings",
    "load_ablation",
    "parse_ablation",
    "run_ablation",
    "runs_folder",
    "validate_cells",
]

TOP_LEVEL_KEYS = (
    "name",
    "baseline",
    "output_dir",
    "seeds",
    "total_timesteps",
    "eval_episodes",
    "eval_freq",
    "normalize",
    "skip_updates",
    "reference",
    "algo",
    "envs",
    "estimators",
    "fixed_lambdas",
    "optimum_floor",
    "reuse_runs_from",
    "contrasts",
)
ENV_KEYS = ("id", "name", "n_envs", "normalize", "algo")
ESTIMATOR_KEYS = ("name", "algo", "envs")
RUNS_SUBDIR = "runs"
#: bounds that catch a typo (a seed count or budget off by orders of magnitude) before a grid is listed
MAX_SEEDS = 10_000
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclasses.dataclass(frozen=True)
class EnvEntry:
    """One ``envs`` entry; ``where`` is its position in the file (``envs[1]``)."""

    name: str
    id: str
    n_envs: int
    normalize: bool
    algo: Dict[str, Any]
    where: str


@dataclasses.dataclass(frozen=True)
class EstimatorEntry:
    """One ``estimators`` entry (or one generated by ``fixed_lambdas``)."""

    name: str
    algo: Dict[str, Any]
    where: str
    #: False for a bare name or a fixed_lambdas value: its algo keys are not written in the file
    explicit_algo: bool = True
    #: the env entries (by name) this estimator runs on; None: every env
    envs: Optional[Tuple[str, ...]] = None

    def runs_on(self, env: "EnvEntry") -> bool:
        return self.envs is None or env.name in self.envs


@dataclasses.dataclass(frozen=True)
class Cell:
    """One (env, estimator) pair with its merged, validated settings and its resolved run config
    (seed: the first of the grid's)."""

    env: EnvEntry
    estimator: EstimatorEntry
    algo_kwargs: Dict[str, Any]
    config: Dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.env.name}__{self.estimator.name}"


@dataclasses.dataclass(frozen=True)
class BaselineEntry:
    """The optional ``baseline`` section: whose goals report to write."""

    name: str
    floor: Optional[str] = None
    floor_at_steps: Optional[int] = None
    #: how many envs each goal needs (baseline.goals; hybrid_pg.experiments.baseline_goals.GoalThresholds)
    poi_envs: int = 2
    faster_envs: int = 1
    wins_envs: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class Ablation:
    """A parsed ablation file (``cells`` is empty until :func:`validate_cells` fills it)."""

    name: str
    output_dir: str
    seeds: Tuple[int, ...]
    total_timesteps: int
    eval_episodes: int
    eval_freq: int
    skip_updates: int
    reference: str
    algo: Dict[str, Any]
    envs: Tuple[EnvEntry, ...]
    estimators: Tuple[EstimatorEntry, ...]
    cells: Tuple[Cell, ...] = ()
    baseline: Optional[BaselineEntry] = None
    #: the seeds the reports cover: the file's and any --seeds given (training extra seeds must not
    #: shrink the tables to those seeds)
    report_seeds: Tuple[int, ...] = ()
    #: other grids' output folders whose finished runs of identical settings this grid adopts
    reuse_runs_from: Tuple[str, ...] = ()
    #: the cell whose policy std the "stays at the optimum" report compares with (None: no report)
    optimum_floor: Optional[str] = None
    #: (estimator, against) pairs the env reports compare with each other, paired on common seeds
    contrasts: Tuple[Tuple[str, str], ...] = ()

    def reuse_sources(self) -> List[Path]:
        """The run folders searched for runs to adopt (each ``<folder>/runs`` that exists: a grid that
        has not run yet offers nothing); a folder that does not exist is a mistake in the file."""
        for folder in self.reuse_runs_from:
            if not Path(folder).is_dir():
                raise ConfigError(
                    f"reuse_runs_from: {folder} is not a folder (paths are relative to the working directory, like output_dir)"
                )
        return [Path(d) / RUNS_SUBDIR for d in self.reuse_runs_from if (Path(d) / RUNS_SUBDIR).is_dir()]

    def runs(self) -> List[Tuple[str, Dict[str, Any]]]:
        """(label, resolved run config) per cell and seed, env by env, estimator by estimator."""
        if not self.cells:
            raise ValueError("validate_cells() has not been run on this ablation")
        return [
            (cell.label, {**cell.config, "train": {**cell.config["train"], "seed": seed}}) for cell in self.cells for seed in self.seeds
        ]


@dataclasses.dataclass
class AblationResult:
    """What :func:`run_ablation` did."""

    out_dir: Path
    runs_total: int
    runs_trained: int  # by this invocation (another one filling the same folder trains the rest)
    workers: int  # local worker processes; with backend "ray", the cap on runs in flight (0: none)
    written: List[Path]
    backend: str = "local"
    runs_held: int = 0  # left unfinished to another live process that holds their lock


# ------------------------------------------------------------------------------------------------
# small checkers: each names the key it checks
# ------------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _int(key: str, value: Any, minimum: int, maximum: Optional[int] = None, why: str = "") -> int:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)  # 1e5 in YAML
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{key} must be an int, got {_show(value)}")
    if value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{key} must be <= {maximum}{why}, got {value}")
    return value


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {_show(value)}")
    return value


def _name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _SAFE_NAME.match(value):
        raise ConfigError(f"{key} must be a non-empty name of letters, digits, '.', '_' and '-', got {_show(value)}")
    return value


def _mapping(key: str, value: Any) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{key} must be a mapping with string keys, got {_show(value)}")
    return value


def _list(key: str, value: Any) -> List[Any]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key} must be a non-empty list, got {_show(value)}")
    return value


def _known_keys(where: str, raw: Mapping[str, Any], known: Sequence[str]) -> None:
    for key in raw:
        if key not in known:
            prefix = f"{where}." if where else ""
            raise ConfigError(f"{prefix}{key} is not a known key (known: {list(known)}){suggest(key, known)}")


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> Dict[str, Any]:
    """``override`` over ``base``; mappings present in both merge recursively."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# ------------------------------------------------------------------------------------------------
# parsing
# ------------------------------------------------------------------------------------------------


def _parse_seeds(value: Any) -> Tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return tuple(range(_int("seeds", value, 1, MAX_SEEDS, " (seeds per cell)")))
    if isinstance(value, list) and len(value) > MAX_SEEDS:
        raise ConfigError(f"seeds must list at most {MAX_SEEDS} seeds (seeds per cell), got {len(value)}")
    seeds = tuple(_int(f"seeds[{i}]", s, 0) for i, s in enumerate(_list("seeds", value)))
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must not repeat a seed, got {list(seeds)}")
    return seeds


def _parse_env(index: int, raw: Any, normalize: bool = False) -> EnvEntry:
    where = f"envs[{index}]"
    if isinstance(raw, str):
        raw = {"id": raw}
    raw = _mapping(where, raw)
    _known_keys(where, raw, ENV_KEYS)
    if "id" not in raw:
        raise ConfigError(f"{where}.id is required")
    if not isinstance(raw["id"], str) or not raw["id"]:
        raise ConfigError(f"{where}.id must be a gymnasium id, got {_show(raw['id'])}")
    return EnvEntry(
        name=_name(f"{where}.name", raw["name"]) if "name" in raw else sanitise(raw["id"]),
        id=raw["id"],
        n_envs=_int(f"{where}.n_envs", raw.get("n_envs", 1), 1),
        normalize=_bool(f"{where}.normalize", raw.get("normalize", normalize)),
        algo=_mapping(f"{where}.algo", raw.get("algo")),
        where=where,
    )


def _parse_estimator(index: int, raw: Any) -> EstimatorEntry:
    where = f"estimators[{index}]"
    if isinstance(raw, str):
        return EstimatorEntry(name=_name(where, raw), algo={"estimator": raw}, where=where, explicit_algo=False)
    raw = _mapping(where, raw)
    _known_keys(where, raw, ESTIMATOR_KEYS)
    if "name" not in raw:
        raise ConfigError(f"{where}.name is required")
    envs = None
    if "envs" in raw:
        envs = tuple(_name(f"{where}.envs[{i}]", e) for i, e in enumerate(_list(f"{where}.envs", raw["envs"])))
    return EstimatorEntry(name=_name(f"{where}.name", raw["name"]), algo=_mapping(f"{where}.algo", raw.get("algo")), where=where, envs=envs)


def _check_estimator_envs(estimators: Sequence[EstimatorEntry], envs: Sequence[EnvEntry], everywhere: Mapping[str, str]) -> None:
    """Each ``envs`` list names env entries of the file; the cells others are compared with
    (``everywhere``: role -> estimator name) run on every env."""
    names = [e.name for e in envs]
    for est in estimators:
        for i, name in enumerate(est.envs or ()):
            if name not in names:
                raise ConfigError(f"{est.where}.envs[{i}]={name!r} is not an env entry's name (envs: {names}){suggest(name, names)}")
        missing = [] if est.envs is None else [n for n in names if n not in est.envs]
        roles = [role for role, cell in everywhere.items() if cell == est.name]
        if missing and roles:
            raise ConfigError(
                f"{est.where}.envs leaves out {missing}, but {est.name!r} is the {' and '.join(roles)}, which every env is compared with: "
                "remove its envs key"
            )


def _fixed_lambda_estimators(value: Any) -> List[EstimatorEntry]:
    entries = []
    for i, lam in enumerate(_list("fixed_lambdas", value)):
        where = f"fixed_lambdas[{i}]"
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 <= lam <= 1.0:
            raise ConfigError(f"{where} must be a number in [0, 1], got {_show(lam)}")
        algo = {"estimator": "hybrid", "fixed_lambda": float(lam)}
        entries.append(EstimatorEntry(name=f"lam{lam:g}", algo=algo, where=where, explicit_algo=False))
    return entries


def _unique(kind: str, entries: Sequence[Union[EnvEntry, EstimatorEntry]]) -> None:
    seen: Dict[str, str] = {}
    for entry in entries:
        if entry.name in seen:
            raise ConfigError(f"{entry.where}: name {entry.name!r} is already used by {seen[entry.name]}; give the {kind} a distinct name")
        seen[entry.name] = entry.where


def parse_ablation(raw: Any, default_name: str = "ablation", seeds: Optional[Sequence[int]] = None) -> Ablation:
    """Check an ablation mapping's own keys (not yet the cells: see :func:`validate_cells`).

    :param raw: the file's mapping.
    :param default_name: ``name`` when the file has none.
    :param seeds: replaces the file's ``seeds`` (the seed values themselves).
    """
    raw = _mapping("the ablation file", raw)
    _known_keys("", raw, TOP_LEVEL_KEYS)
    for key in ("total_timesteps", "envs", "estimators"):
        if key not in raw and not (key == "estimators" and "fixed_lambdas" in raw):
            raise ConfigError(f"{key} is required")
    name = _name("name", raw.get("name", sanitise(default_name)))
    output_dir = raw.get("output_dir", f"results/{name}")
    if not isinstance(output_dir, str) or not output_dir:
        raise ConfigError(f"output_dir must be a path, got {_show(output_dir)}")
    normalize = _bool("normalize", raw.get("normalize", False))
    envs = tuple(_parse_env(i, e, normalize) for i, e in enumerate(_list("envs", raw["envs"])))
    estimators = [_parse_estimator(i, e) for i, e in enumerate(_list("estimators", raw["estimators"]))] if "estimators" in raw else []
    if "fixed_lambdas" in raw:
        estimators += _fixed_lambda_estimators(raw["fixed_lambdas"])
    _unique("env", envs)
    _unique("estimator", estimators)
    reference = raw.get("reference", "reinforce")
    names = [e.name for e in estimators]
    if reference not in names:
        raise ConfigError(f"reference={_show(reference)} is not one of the estimators {names}{suggest(reference, names)}")
    baseline = _parse_baseline(raw["baseline"], names) if raw.get("baseline") is not None else None
    optimum_floor = raw.get("optimum_floor")
    if optimum_floor is not None and optimum_floor not in names:
        raise ConfigError(f"optimum_floor={_show(optimum_floor)} is not one of the estimators {names}{suggest(str(optimum_floor), names)}")
    everywhere = {"reference": reference}
    if baseline is not None:
        everywhere["baseline"] = baseline.name
        if baseline.floor is not None:
            everywhere["baseline's floor"] = baseline.floor
    if optimum_floor is not None:
        everywhere["optimum_floor"] = optimum_floor
    _check_estimator_envs(estimators, envs, everywhere)
    file_seeds = _parse_seeds(raw.get("seeds", 1))
    if seeds is not None:
        seeds_t = tuple(_int(f"--seeds[{i}]", s, 0) for i, s in enumerate(seeds))
        if not seeds_t or len(set(seeds_t)) != len(seeds_t):
            raise ConfigError(f"--seeds must list distinct seeds, got {list(seeds_t)}")
    else:
        seeds_t = file_seeds
    reuse = tuple(_list("reuse_runs_from", raw["reuse_runs_from"])) if "reuse_runs_from" in raw else ()
    for i, folder in enumerate(reuse):
        if not isinstance(folder, str) or not folder:
            raise ConfigError(f"reuse_runs_from[{i}] must be a folder (another grid's output_dir), got {_show(folder)}")
    return Ablation(
        name=name,
        output_dir=output_dir,
        seeds=seeds_t,
        total_timesteps=_int("total_timesteps", raw["total_timesteps"], 1, MAX_TIMESTEPS, " (env steps per run)"),
        eval_episodes=_int("eval_episodes", raw.get("eval_episodes", 10), 1),
        eval_freq=_int("eval_freq", raw.get("eval_freq", 0), 0),
        skip_updates=_int("skip_updates", raw.get("skip_updates", 0), 0),
        reference=reference,
        algo=_mapping("algo", raw.get("algo")),
        envs=envs,
        estimators=tuple(estimators),
        baseline=baseline,
        report_seeds=tuple(sorted(set(file_seeds) | set(seeds_t))),
        reuse_runs_from=reuse,
        optimum_floor=optimum_floor,
        contrasts=_parse_contrasts(raw["contrasts"], names) if raw.get("contrasts") is not None else (),
    )


def _parse_contrasts(raw: Any, names: Sequence[str]) -> Tuple[Tuple[str, str], ...]:
    """``contrasts``: a list of [estimator, against] pairs of distinct estimator names, no pair twice."""
    pairs: List[Tuple[str, str]] = []
    for i, entry in enumerate(_list("contrasts", raw)):
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise ConfigError(f"contrasts[{i}] must be a pair [estimator, against], got {_show(entry)}")
        for j, value in enumerate(entry):
            if value not in names:
                raise ConfigError(
                    f"contrasts[{i}][{j}]={_show(value)} is not one of the estimators {list(names)}{suggest(str(value), names)}"
                )
        a, b = str(entry[0]), str(entry[1])
        if a == b:
            raise ConfigError(f"contrasts[{i}] compares {a!r} with itself; name two different estimators")
        if (a, b) in pairs or (b, a) in pairs:
            raise ConfigError(f"contrasts[{i}]: {a!r} and {b!r} are already compared by an earlier entry")
        pairs.append((a, b))
    return tuple(pairs)


def _parse_baseline(raw: Any, names: Sequence[str]) -> BaselineEntry:
    if isinstance(raw, str):
        raw = {"name": raw}
    raw = _mapping("baseline", raw)
    _known_keys("baseline", raw, ("name", "floor", "floor_at_steps", "goals"))
    if "name" not in raw:
        raise ConfigError("baseline.name is required (the estimator every cell is measured against)")
    for key in ("name", "floor"):
        value = raw.get(key)
        if value is not None and value not in names:
            raise ConfigError(f"baseline.{key}={_show(value)} is not one of the estimators {list(names)}{suggest(str(value), names)}")
    if ("floor" in raw) != ("floor_at_steps" in raw):
        raise ConfigError("baseline.floor and baseline.floor_at_steps go together (the floor is checked at that budget)")
    at = _int("baseline.floor_at_steps", raw["floor_at_steps"], 1) if "floor_at_steps" in raw else None
    goals = _mapping("baseline.goals", raw.get("goals"))
    _known_keys("baseline.goals", goals, ("poi_envs", "faster_envs", "wins_envs"))
    counts = {key: _int(f"baseline.goals.{key}", value, 1) for key, value in goals.items()}
    if "wins_envs" in counts and raw.get("floor") is None:
        raise ConfigError("baseline.goals.wins_envs needs baseline.floor (the cell a win is measured against)")
    return BaselineEntry(name=raw["name"], floor=raw.get("floor"), floor_at_steps=at, **counts)


# ------------------------------------------------------------------------------------------------
# validating the cells
# ------------------------------------------------------------------------------------------------


def _origin(key: str, env: EnvEntry, estimator: EstimatorEntry) -> str:
    """The ablation-file path of ``algo.<key>`` in a cell: the last layer that set it."""
    if key in estimator.algo:
        return f"{estimator.where}.algo.{key}" if estimator.explicit_algo else estimator.where
    if key in env.algo:
        return f"{env.where}.algo.{key}"
    return f"algo.{key}"


def _cell_error(exc: Exception, env: EnvEntry, estimator: EstimatorEntry) -> ConfigError:
    message = str(exc)
    match = re.match(r"algo\.(\w+)", message)
    where = _origin(match.group(1), env, estimator) if match else f"{env.where} x {estimator.where}"
    return ConfigError(f"{where}: {message} (cell env={env.name}, estimator={estimator.name})")


def _cell_config(ablation: Ablation, env: EnvEntry, algo: Mapping[str, Any]) -> Dict[str, Any]:
    raw = {
        "env": {"id": env.id, "n_envs": env.n_envs, "normalize": env.normalize},
        "algo": dict(algo),
        "train": {
            "total_timesteps": ablation.total_timesteps,
            "seed": ablation.seeds[0],
            "eval_episodes": ablation.eval_episodes,
            "eval_freq": ablation.eval_freq,
        },
    }
    return resolve_config(raw)


def _check_env_entry(ablation: Ablation, env: EnvEntry) -> None:
    try:
        check_env(_cell_config(ablation, env, {}))
    except ConfigError as exc:
        raise ConfigError(f"{env.where}.id: {exc}") from exc


def _check_cell(ablation: Ablation, env: EnvEntry, estimator: EstimatorEntry) -> Cell:
    """Resolve the cell as a run config and let the run engine build its env and model once."""
    algo = _merge(_merge(ablation.algo, env.algo), estimator.algo)
    try:
        config = _cell_config(ablation, env, algo)
        if config["algo"]["policy"] != "MlpPolicy":
            raise ConfigError(f"algo.policy={config['algo']['policy']!r}: ablation runs use MlpPolicy")
        check_buildable(config)
    except ConfigError as exc:
        raise _cell_error(exc, env, estimator) from exc
    # the keys as written (validated values), for listing the grid
    kwargs = {k: config["algo"][k] for k in algo if k in config["algo"] and k != "policy"}
    return Cell(env=env, estimator=estimator, algo_kwargs=kwargs, config=config)


def validate_cells(ablation: Ablation) -> Ablation:
    """Every env is checked (registered, bounded Box actions), then every (env, estimator) cell
    is resolved and its model built; returns the ablation with its ``cells``. Raises
    :class:`ConfigError` naming the ablation-file key on the first problem."""
    import torch as th

    threads = th.get_num_threads()
    th.set_num_threads(1)  # building small models: threads only cost here
    try:
        for env in ablation.envs:
            _check_env_entry(ablation, env)
        cells = tuple(_check_cell(ablation, env, est) for env in ablation.envs for est in ablation.estimators if est.runs_on(env))
    finally:
        th.set_num_threads(threads)
    return dataclasses.replace(ablation, cells=cells)


def load_ablation(path: Union[str, Path], seeds: Optional[Sequence[int]] = None) -> Ablation:
    """Read, parse and validate an ablation file (every cell included)."""
    raw = read_config_file(path)
    return validate_cells(parse_ablation(raw, default_name=Path(path).stem, seeds=seeds))


# ------------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------------


def select_estimators(ablation: Ablation, only: Optional[Sequence[str]]) -> Tuple[str, ...]:
    """The estimator names to train: ``only`` (checked against the file's estimators) or all."""
    names = [e.name for e in ablation.estimators]
    if not only:
        return tuple(names)
    for name in only:
        if name not in names:
            raise ConfigError(f"--only {name!r} is not an estimator of the ablation file (estimators: {names}){suggest(name, names)}")
    return tuple(n for n in names if n in only)


def selected_runs(ablation: Ablation, only: Optional[Sequence[str]] = None) -> List[Tuple[str, Dict[str, Any]]]:
    """:meth:`Ablation.runs` restricted to the estimators of ``only`` (all when empty)."""
    chosen = {f"{cell.env.name}__{name}" for cell in ablation.cells for name in select_estimators(ablation, only)}
    return [(label, cfg) for label, cfg in ablation.runs() if label in chosen]


def finished_results(ablation: Ablation, runs_dir: Union[str, Path]) -> Dict[str, Dict[str, List[Dict[str, Any]]]]:
    """Every finished run of the grid (the file's seeds and any --seeds), loaded: env name ->
    estimator name -> runs (grid order). A run whose files cannot be read back is left out with a
    warning naming the file: one bad run never stops a report."""
    from hybrid_pg.experiments.runner import CorruptRunError, is_finished, load_result, run_key

    runs_dir = Path(runs_dir)
    per_env: Dict[str, Dict[str, List[Dict[str, Any]]]] = {}
    for cell in ablation.cells:
        for seed in ablation.report_seeds or ablation.seeds:
            cfg = {**cell.config, "train": {**cell.config["train"], "seed": seed}}
            run_dir = runs_dir / run_key(cell.label, cfg)
            if not is_finished(run_dir):
                continue
            try:
                result = load_result(run_dir, label=cell.label)
            except CorruptRunError as exc:
                warnings.warn(f"{exc}; the run is left out of the reports", stacklevel=2)
                continue
            per_env.setdefault(cell.env.name, {}).setdefault(cell.estimator.name, []).append(result)
    return per_env


def runs_folder(ablation: Ablation, runs_dir: Union[str, Path, None] = None) -> Path:
    """Where a grid's run directories are: ``runs_dir`` where given, else the file's output folder's
    ``runs/`` (where ``hybrid-pg ablate`` writes them without ``--out``)."""
    return Path(runs_dir) if runs_dir is not None else Path(ablation.output_dir) / RUNS_SUBDIR


def goal_settings(ablation: Ablation) -> Tuple["GoalThresholds", "GridPlan"]:
    """(GoalThresholds, GridPlan) of a grid with a ``baseline`` section: how many envs each goal needs,
    and which envs and how many seeds every cell is set to run (no goal is called before they finish)."""
    from hybrid_pg.experiments.baseline_goals import GoalThresholds
    from hybrid_pg.experiments.fallback_goals import GridPlan

    if ablation.baseline is None:
        raise ValueError(f"{ablation.name}: the grid has no baseline section, so it states no goals")
    b = ablation.baseline
    planned: Dict[str, Tuple[str, ...]] = {}
    for cell in ablation.cells:
        planned[cell.estimator.name] = (*planned.get(cell.estimator.name, ()), cell.env.name)
    return GoalThresholds(b.poi_envs, b.faster_envs, b.wins_envs), GridPlan(planned, len(ablation.report_seeds or ablation.seeds))


def warn_if_uncommitted(n_runs: int) -> None:
    """Each run imports the package when it starts: from a checkout with edits in progress, runs of
    one grid can run different code. Say so once at the start (each run records its own state in
    ``provenance.git_uncommitted``)."""
    from hybrid_pg.experiments.runner import provenance

    changed = provenance().get("git_uncommitted") or []
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        warnings.warn(
            f"{n_runs} runs start from a checkout whose package files differ from its commit ({shown}); each run "
            "imports the code as it is when the run starts, so commit (or stash) before a long grid, or run it from a "
            "separate checkout",
            stacklevel=3,
        )


def run_ablation(
    ablation: Ablation,
    out_dir: Optional[Union[str, Path]] = None,
    workers: Optional[int] = None,
    progress: bool = True,
    backend: str = "local",
    address: Optional[str] = None,
    only: Optional[Sequence[str]] = None,
    train: bool = True,
    figure_format: str = "png",
) -> AblationResult:
    """Train the missing runs of a validated ablation, then write every env's report.

    :param out_dir: output folder (default: the file's ``output_dir``); run directories go to ``runs/``.
    :param workers: parallel worker processes (default: all cores; never more than the cores); with
        ``backend="ray"``, the most runs in flight (default: as many as the cluster schedules).
    :param progress: show a progress bar while training.
    :param backend: ``"local"`` or ``"ray"`` (see :func:`hybrid_pg.experiments.runner.run_grid`).
    :param address: the Ray cluster's address (``backend="ray"``).
    :param only: train only these estimators (by name); the reports still cover every finished run
        of the grid, so a grid can be filled over several invocations.
    :param train: False writes the reports from the runs already finished and trains nothing (safe
        while another invocation is filling the grid: it never touches an unfinished run).
    :param figure_format: the reports' figures as png, pdf or svg.
    """
    from hybrid_pg.experiments.ablate_report import write_env_report, write_summary
    from hybrid_pg.experiments.runner import GridOutcome, adopt_finished_runs, pending, train_grid, worker_count

    out = Path(out_dir if out_dir is not None else ablation.output_dir)
    runs_dir = out / RUNS_SUBDIR
    runs = selected_runs(ablation, only)
    if ablation.reuse_runs_from:
        adopt_finished_runs(runs, runs_dir, ablation.reuse_sources())
    todo = pending(runs, runs_dir) if train else []
    if todo:
        warn_if_uncommitted(len(todo))
    n_workers = worker_count(workers, len(todo)) if backend == "local" else workers
    outcome = GridOutcome(trained=[], held=[])
    if train:
        outcome = train_grid(runs, runs_dir, workers=n_workers, progress=progress, backend=backend, address=address)
    # the reports: every finished run of the whole grid (other estimators may come from earlier calls)
    written: List[Path] = []
    per_env = finished_results(ablation, runs_dir)
    for env in ablation.envs:
        if env.name not in per_env:
            continue
        per_estimator = dict(per_env[env.name])
        per_estimator.setdefault(ablation.reference, [])  # compared with nothing until the reference has runs
        per_env[env.name] = per_estimator
        written += write_env_report(
            out,
            env_name=env.name,
            env_id=env.id,
            results=per_estimator,
            reference=ablation.reference,
            skip_updates=ablation.skip_updates,
            total_timesteps=ablation.total_timesteps,
            figure_format=figure_format,
            contrasts=ablation.contrasts,
        )
    written += write_summary(out, per_env, ablation.reference, figure_format=figure_format)
    if ablation.baseline is not None and per_env:
        from hybrid_pg.experiments.baseline_goals import write_goals

        b = ablation.baseline
        thresholds, plan = goal_settings(ablation)
        written.append(
            write_goals(
                out,
                per_env,
                b.name,
                b.floor,
                b.floor_at_steps,
                ablation.skip_updates,
                title=ablation.name,
                total_timesteps=ablation.total_timesteps,
                thresholds=thresholds,
                plan=plan,
            )
        )
    if ablation.optimum_floor is not None and per_env:
        from hybrid_pg.experiments.optimum_goals import write_optimum_goals

        written.append(write_optimum_goals(out, per_env, ablation.optimum_floor, title=ablation.name))
    return AblationResult(
        out_dir=out,
        runs_total=len(runs),
        runs_trained=len(outcome.trained),
        workers=n_workers or 0,
        written=written,
        backend=backend,
        runs_held=len(outcome.held),
    )
