"""The one run engine and the one env factory of every command that trains.

:func:`run` trains one resolved config (:mod:`hybrid_pg.experiments.config`) and writes the same run
directory every time::

    <run_dir>/
      config.yaml         the resolved config, plus a ``provenance`` section (package versions, git commit)
      model.zip           the trained model (HybridPG.load / PPO.load / A2C.load)
      vecnormalize.pkl    the VecNormalize statistics (env.normalize only)
      progress.csv        SB3's logger, one row per rollout (+ one after training: the last update's values)
      tensorboard/        the same, for tensorboard (when it is installed)
      diagnostics.csv     one row per update: every ``hybrid/`` scalar, paired with its rollout
      evaluations.csv     deterministic evaluations (every train.eval_freq steps, and at the end)
      returns.png, lambda.png
      result.json         written last, atomically and durably: a valid one means the run finished

``train``, ``ablate``, ``bench`` and the example scripts call :func:`run` (grids through
:func:`run_grid`, which skips finished run directories and trains the rest in parallel worker
processes, or as Ray tasks on a cluster with ``backend="ray"``), and read back what it wrote with :func:`load_result`.

:func:`make_vec_env_from` is the env factory: ``env.n_envs`` Monitor-wrapped copies (dummy or
subproc) with the config's wrappers, VecNormalize with the algorithm's discount when
``env.normalize``; with ``evaluation=True`` one in-process copy seeded apart whose VecNormalize is
frozen and leaves rewards raw. The evaluation callback syncs the normalisation statistics and, for a
non-stationary env, the clock from the training env before each evaluation.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import gymnasium as gym

from hybrid_pg.experiments import run_files
from hybrid_pg.experiments.compressed import DAMAGED_FILE_ERRORS, open_text, stored
from hybrid_pg.experiments.config import (
    PROVENANCE_KEY,
    ConfigError,
    algorithm_class,
    algorithm_kwargs,
    apply_wrappers,
    dump_config,
    import_env_plugins,
    sanitise,
)
from hybrid_pg.experiments.processes import Interrupted, WorkerPool, signal_of
from hybrid_pg.experiments.results import EVALUATIONS_FILE, read_evaluations

__all__ = [
    "CONFIG_FILE",
    "CorruptRunError",
    "EVAL_SEED_OFFSET",
    "GridOutcome",
    "RESULT_FILE",
    "RunDirError",
    "RunResult",
    "BACKENDS",
    "available_cores",
    "build_model",
    "check_buildable",
    "claim_run",
    "in_training_elsewhere",
    "is_finished",
    "load_result",
    "make_env",
    "make_vec_env_from",
    "pending",
    "provenance",
    "read_result",
    "release_run",
    "run",
    "run_grid",
    "run_key",
    "set_aside",
    "train_grid",
    "worker_count",
]

EVAL_SEED_OFFSET = 10_000  # the evaluation env's seed is train.seed + this
CONFIG_FILE = "config.yaml"
RESULT_FILE = "result.json"
MODEL_FILE = "model.zip"
VECNORMALIZE_FILE = "vecnormalize.pkl"
PROGRESS_FILE = "progress.csv"


class RunDirError(Exception):
    """The run directory cannot be used (it exists and holds files)."""


class CorruptRunError(ValueError):
    """A run directory's ``result.json`` (or ``config.yaml``) cannot be read back; the message names the file."""


@dataclasses.dataclass
class RunResult:
    """What :func:`run` did (``result.json`` holds the same, minus the path)."""

    run_dir: Path
    timesteps: int
    train_seconds: float
    interrupted: bool
    final_return: Optional[float]
    eval_returns: List[float]
    #: the signal that interrupted the run (SIGINT: Ctrl-C; SIGTERM), None when it finished
    stopped_by: Optional[int] = None


# ------------------------------------------------------------------------------------------------
# envs and models
# ------------------------------------------------------------------------------------------------


def make_env(env_id: str, wrappers: Sequence[Mapping[str, Any]] = (), **env_kwargs: Any) -> gym.Env:
    """``gym.make`` after importing ``hybrid_pg_envs``, then the config's wrappers: picklable, so
    ``hybrid_pg/`` ids also work in SubprocVecEnv workers started with spawn/forkserver."""
    import_env_plugins()
    return apply_wrappers(gym.make(env_id, **env_kwargs), wrappers)


def make_vec_env_from(env: Mapping[str, Any], seed: int, evaluation: bool = False, gamma: float = 0.99):
    """The VecEnv of a resolved ``env`` section (see the module docstring).

    :param env: the config's env section.
    :param seed: the training seed (the evaluation env uses ``seed + EVAL_SEED_OFFSET``).
    :param evaluation: one in-process copy with a frozen, reward-raw VecNormalize.
    :param gamma: VecNormalize's discount for the return it normalises rewards by: the algorithm's.
    """
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

    subproc = env.get("vec_env", "dummy") == "subproc" and not evaluation
    venv = make_vec_env(
        functools.partial(make_env, env["id"], env.get("wrappers", ())),
        n_envs=1 if evaluation else env.get("n_envs", 1),
        seed=seed + EVAL_SEED_OFFSET if evaluation else seed,
        env_kwargs=env.get("env_kwargs") or None,
        vec_env_cls=SubprocVecEnv if subproc else DummyVecEnv,
    )
    if env.get("normalize"):
        if evaluation:
            return VecNormalize(venv, training=False, norm_reward=False, gamma=gamma)
        return VecNormalize(venv, gamma=gamma)
    return venv


def _gamma(config: Mapping[str, Any]) -> float:
    return float(config["algo"].get("gamma", 0.99))


def _physical_memory() -> Optional[int]:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - no sysconf
        return None


def _check_rollout_memory(config: Mapping[str, Any], vec_env: Any) -> None:
    """Refuse a rollout buffer larger than this machine's memory (``n_steps: 1e12`` would try to
    allocate terabytes): float32 observations, actions and six scalars per step of every env copy."""
    import numpy as np

    n_steps = config["algo"].get("n_steps")
    memory = _physical_memory()
    if not n_steps or memory is None:
        return
    floats = int(np.prod(vec_env.observation_space.shape or (1,))) + int(np.prod(vec_env.action_space.shape or (1,))) + 6
    need = int(n_steps) * vec_env.num_envs * floats * 4
    if need > memory:
        raise ConfigError(
            f"algo.n_steps={n_steps}: a rollout of {n_steps} steps x {vec_env.num_envs} envs x {floats} floats needs "
            f"{need / 2**30:.1f} GiB, more than this machine's {memory / 2**30:.1f} GiB of memory"
        )


def build_model(config: Mapping[str, Any], vec_env: Any, run_dir: Optional[Path] = None, verbose: int = 0):
    """The algorithm of the ``algo`` section on ``vec_env``; a rejected value (or a rollout buffer
    that cannot fit in memory) becomes a :class:`ConfigError` naming ``algo.<key>``. Creates nothing on disk."""
    _check_rollout_memory(config, vec_env)
    algo = config["algo"]
    cls = algorithm_class(algo.get("algorithm", "hybrid_pg"))
    kwargs = algorithm_kwargs(algo)
    from hybrid_pg.experiments.run_logger import tensorboard_available

    tensorboard = str(run_dir / "tensorboard") if run_dir is not None and tensorboard_available() else None
    try:
        return cls(
            algo["policy"],
            vec_env,
            seed=config["train"]["seed"],
            device=config["train"].get("device", "cpu"),
            verbose=verbose,
            tensorboard_log=tensorboard,
            **kwargs,
        )
    except TypeError as exc:
        if "keyword argument" not in str(exc):
            raise
        raise ConfigError(f"algo.policy_kwargs={algo.get('policy_kwargs')!r} rejected by the policy: {exc}") from exc
    except ValueError as exc:
        message = str(exc)
        head = message.split("=", 1)[0]
        if head.isidentifier() and (head in algo or head == "policy"):
            raise ConfigError(f"algo.{message}") from exc
        raise ConfigError(f"{cls.__name__} rejected this config: {message}") from exc


def check_buildable(config: Mapping[str, Any]) -> None:
    """Build the config's env and model once (nothing trained, nothing written): every error a run
    would meet at construction surfaces here as a :class:`ConfigError`."""
    vec_env = make_vec_env_from(config["env"], config["train"]["seed"], gamma=_gamma(config))
    try:
        build_model(config, vec_env)
    finally:
        vec_env.close()


# ------------------------------------------------------------------------------------------------
# one run
# ------------------------------------------------------------------------------------------------


def _git(*args: str) -> Optional[str]:
    """``git args`` in the checkout the package runs from (None outside one)."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _git_commit() -> Optional[str]:
    out = _git("rev-parse", "HEAD")
    return None if out is None else out.strip() or None


def _git_uncommitted() -> Optional[List[str]]:
    """The package's files that differ from the commit (the library and its envs; None outside a
    checkout): a run started while they were being edited ran code that no commit holds."""
    out = _git("status", "--porcelain", "--", "hybrid_pg", "envs")
    return None if out is None else sorted(line[3:] for line in out.splitlines() if line.strip())


def provenance() -> Dict[str, Any]:
    """Package versions, the git commit and the package files that differed from it (when the
    package runs from a checkout)."""
    import numpy as np
    import stable_baselines3
    import torch

    import hybrid_pg

    return {
        "versions": {
            "hybrid_pg": hybrid_pg.__version__,
            "stable_baselines3": stable_baselines3.__version__,
            "gymnasium": gym.__version__,
            "torch": str(torch.__version__),
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "git_commit": _git_commit(),
        "git_uncommitted": _git_uncommitted(),
    }


def _check_run_dir_free(run_dir: Path) -> None:
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise RunDirError(f"run directory {run_dir} already exists; refusing to overwrite it (pick another --out or output.name)")


def _claim_run_dir(run_dir: Path) -> None:
    """Make ``run_dir`` this run's, atomically: every run creates its ``config.yaml`` first, with
    ``O_EXCL``, so of two processes handed the same (absent or empty) directory exactly one gets it
    and the other gets :class:`RunDirError`; nothing of the loser is written there."""
    _check_run_dir_free(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(run_dir / CONFIG_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise RunDirError(f"run directory {run_dir} was just taken by another run; refusing to share it (pick another --out)") from None
    os.close(fd)


def _write_json_atomically(path: Path, data: Mapping[str, Any]) -> None:
    # a killed run, or a power loss, never leaves a half-written result behind
    run_files.write_atomically(path, json.dumps(data, indent=2))


def run(
    config: Mapping[str, Any], run_dir: Union[str, Path], quiet: bool = True, callbacks: Sequence[Any] = (), figure_format: str = "png"
) -> RunResult:
    """Train one resolved, env-checked config and write its run directory (module docstring); its
    ``returns`` and ``lambda`` figures as ``figure_format`` (png, pdf or svg).

    The env and model are built (so every config error surfaces) before ``run_dir`` is created;
    ``run_dir`` must not exist or be empty, and is claimed atomically (two processes never share it).
    ``callbacks`` are extra SB3 callbacks. An interrupted run (Ctrl-C, or SIGTERM inside
    :func:`hybrid_pg.experiments.processes.sigterm_interrupts`) saves its model and plots but writes
    no ``result.json``; ``RunResult.stopped_by`` names the signal.
    """
    import torch as th
    from stable_baselines3.common.callbacks import CallbackList

    from hybrid_pg.experiments.csv_callbacks import (
        DIAGNOSTICS_FILE,
        DiagnosticsCallback,
        EvalCSVCallback,
        RolloutProgressBar,
    )
    from hybrid_pg.experiments.figure_io import figure_path
    from hybrid_pg.experiments.plots import plot_lambda, plot_returns
    from hybrid_pg.experiments.run_logger import make_run_logger

    run_dir = Path(run_dir)
    returns_figure, lambda_figure = (figure_path(run_dir, stem, figure_format) for stem in ("returns", "lambda"))  # a bad format fails now
    _check_run_dir_free(run_dir)
    train = config["train"]
    # small MLPs gain nothing from intra-op threads, and on a busy machine they lose a lot
    th.set_num_threads(train["torch_threads"])
    vec_env = make_vec_env_from(config["env"], train["seed"], gamma=_gamma(config))
    eval_env = None
    try:
        model = build_model(config, vec_env, run_dir, verbose=0 if quiet else 1)
        _claim_run_dir(run_dir)
        dump_config({**config, PROVENANCE_KEY: provenance()}, run_dir / CONFIG_FILE)
        model.set_logger(make_run_logger(run_dir))
        eval_env = make_vec_env_from(config["env"], train["seed"], evaluation=True, gamma=_gamma(config))
        evaluation = EvalCSVCallback(
            eval_env, train["eval_freq"], run_dir / EVALUATIONS_FILE, n_eval_episodes=train["eval_episodes"], print_progress=not quiet
        )
        diagnostics = DiagnosticsCallback(run_dir / DIAGNOSTICS_FILE, print_progress=not quiet, total_timesteps=train["total_timesteps"])
        if not quiet:
            _print_header(config, run_dir)
        interrupted, stopped_by, t0 = False, None, time.perf_counter()
        try:
            bar = [RolloutProgressBar()] if train["progress_bar"] and not quiet else []  # SB3's bar overshoots its total
            model.learn(train["total_timesteps"], callback=CallbackList([diagnostics, evaluation, *callbacks, *bar]))
        except KeyboardInterrupt as exc:
            interrupted, stopped_by = True, signal_of(exc)
        seconds = time.perf_counter() - t0 - evaluation.eval_seconds
        model.logger.dump(model.num_timesteps)  # SB3 dumps before train(): flush the last update's values
        model.logger.close()
        model.save(run_dir / MODEL_FILE)
        if config["env"]["normalize"]:
            vec_env.save(str(run_dir / VECNORMALIZE_FILE))
    finally:
        vec_env.close()
        if eval_env is not None:
            eval_env.close()
    try:
        plot_returns([run_dir], returns_figure)
        plot_lambda(run_dir, lambda_figure)
    except FileNotFoundError:
        if not interrupted:
            raise  # an interrupt before the first update leaves nothing to plot
    returns = evaluation.last_returns
    result = RunResult(
        run_dir=run_dir,
        timesteps=int(model.num_timesteps),
        train_seconds=seconds,
        interrupted=interrupted,
        final_return=float(sum(returns) / len(returns)) if returns and not interrupted else None,
        eval_returns=returns if not interrupted else [],
        stopped_by=stopped_by,
    )
    if not interrupted:
        summary = {k: v for k, v in dataclasses.asdict(result).items() if k not in ("run_dir", "interrupted", "stopped_by")}
        summary.update(algorithm=config["algo"]["algorithm"], env_id=config["env"]["id"], seed=train["seed"])
        _write_json_atomically(run_dir / RESULT_FILE, summary)
    if not quiet:
        state = "interrupted after" if interrupted else "trained"
        print(f"{state} {model.num_timesteps} steps in {seconds:.1f} s; wrote {', '.join(sorted(p.name for p in run_dir.iterdir()))}")
    return result


def _print_header(config: Mapping[str, Any], run_dir: Path) -> None:
    algo, env = config["algo"], config["env"]
    if algo["algorithm"] == "hybrid_pg":
        what = f"HybridPG(estimator={algo.get('estimator')}, pathwise_source={algo.get('pathwise_source')})"
    else:
        what = f"SB3 {algo['algorithm'].upper()}"
    print(
        f"hybrid-pg: {what} on {env['id']} x{env['n_envs']}{' (VecNormalize)' if env['normalize'] else ''}, "
        f"{config['train']['total_timesteps']} steps, seed {config['train']['seed']}"
    )
    print(f"run directory: {run_dir}", flush=True)


# ------------------------------------------------------------------------------------------------
# reading a run back
# ------------------------------------------------------------------------------------------------


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: what a ``result.json`` must hold, and what each field must be (a file without them is corrupt)
RESULT_FIELDS: Dict[str, Tuple[str, Any]] = {
    "timesteps": ("an integer", _whole),
    "train_seconds": ("a number", _number),
    "final_return": ("a number", lambda v: v is None or _number(v)),
    "eval_returns": ("a list of numbers", lambda v: isinstance(v, list) and all(_number(x) for x in v)),
    "algorithm": ("a string", lambda v: isinstance(v, str)),
    "env_id": ("a string", lambda v: isinstance(v, str)),
    "seed": ("an integer", _whole),
}


def read_result(run_dir: Union[str, Path]) -> Dict[str, Any]:
    """A run directory's ``result.json``, checked (:data:`RESULT_FIELDS`). Raises
    :class:`FileNotFoundError` when there is none and :class:`CorruptRunError`, naming the file and
    what is wrong, when it does not parse or lacks a field."""
    path = Path(run_dir) / RESULT_FILE
    raw = path.read_bytes()
    try:
        result = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        what = "is empty" if not raw.strip() else f"is not valid JSON ({exc})"
        raise CorruptRunError(f"{path} {what}") from None
    if not isinstance(result, dict):
        raise CorruptRunError(f"{path} holds {type(result).__name__}, not a mapping of results")
    for key, (kind, valid) in RESULT_FIELDS.items():
        if key not in result:
            raise CorruptRunError(f"{path} lacks the field {key!r}")
        if not valid(result[key]):
            raise CorruptRunError(f"{path}: {key}={result[key]!r} is not {kind}")
    return result


def result_problem(run_dir: Union[str, Path]) -> Optional[str]:
    """Why the run's ``result.json`` is corrupt; None when it is valid or absent."""
    try:
        read_result(run_dir)
    except FileNotFoundError:
        return None
    except CorruptRunError as exc:
        return str(exc)
    return None


def is_finished(run_dir: Union[str, Path]) -> bool:
    """Whether the run directory holds a valid ``result.json`` (a corrupt one is unfinished)."""
    try:
        read_result(run_dir)
    except (FileNotFoundError, NotADirectoryError, CorruptRunError):
        return False
    return True


#: a run directory whose result.json is corrupt is renamed ``<name>.corrupt-<time>``, kept whole
CORRUPT_MARK = ".corrupt-"


def set_aside(run_dir: Union[str, Path], why: str) -> Path:
    """Rename a run directory whose ``result.json`` is corrupt out of the grid's way (nothing is
    deleted) and say so; returns the new path. Call it holding the run's lock."""
    run_dir = Path(run_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}{CORRUPT_MARK}{stamp}-{uuid.uuid4().hex[:6]}")
    os.rename(run_dir, target)
    run_files.fsync_dir(run_dir.parent)
    warnings.warn(
        f"{why}; the run counts as unfinished: its directory was moved aside to {target} (kept) and the run trains again", stacklevel=2
    )
    return target


def _progress_rows(path: Path) -> List[Dict[str, float]]:
    """SB3's progress.csv (or progress.csv.gz) as one dict per dump, holding only the keys that dump
    logged (numbers)."""
    found = stored(path)
    if found is None:
        return []
    rows = []
    try:
        with open_text(path) as fh:
            for raw in csv.DictReader(fh):
                row = {}
                for key, text in raw.items():
                    if key is None or not isinstance(text, str) or text == "":
                        continue
                    try:
                        row[key] = float(text)
                    except ValueError:
                        continue
                rows.append(row)
    except DAMAGED_FILE_ERRORS as exc:
        raise CorruptRunError(f"{found} cannot be read: {type(exc).__name__}: {exc}") from None
    return rows


def load_result(run_dir: Union[str, Path], label: Optional[str] = None) -> Dict[str, Any]:
    """A finished run as one dict: ``result.json``'s fields, ``config`` (config.yaml), ``rows``
    (progress.csv: row ``i`` holds the step and ``rollout/`` statistics after rollout ``i`` and the
    ``train/``/``hybrid/`` values of update ``i - 1``; the extra last row the last update's values),
    and ``spec`` (label, seed, algo, env_id) for grouping."""
    import yaml

    run_dir = Path(run_dir)
    result = read_result(run_dir)
    try:
        config = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CorruptRunError(f"{run_dir / CONFIG_FILE} cannot be read: {exc}") from None
    try:
        evaluations = read_evaluations(run_dir / EVALUATIONS_FILE)
    except ValueError as exc:
        raise CorruptRunError(str(exc)) from None
    result.update(
        run_dir=str(run_dir),
        key=run_dir.name,
        config=config,
        rows=_progress_rows(run_dir / PROGRESS_FILE),
        evaluations=evaluations,
        spec={"label": label or run_dir.name, "seed": result["seed"], "algo": result["algorithm"], "env_id": result["env_id"]},
    )
    return result


# ------------------------------------------------------------------------------------------------
# grids: resumable, in parallel
# ------------------------------------------------------------------------------------------------


def _run_identity(config: Mapping[str, Any]) -> Dict[str, Any]:
    """What a run's name hashes, and what adoption compares: the env, algo and train sections, less
    what changes no result."""
    from hybrid_pg.settings import KEY_NEUTRAL

    what = {k: v for k, v in config.items() if k in ("env", "algo", "train")}
    what["train"] = {k: v for k, v in what["train"].items() if k != "progress_bar"}
    # a setting added after the name format, at the value that reproduces the earlier behaviour,
    # leaves the name as it was (hybrid_pg.settings.KEY_NEUTRAL)
    what["algo"] = {k: v for k, v in what.get("algo", {}).items() if not (k in KEY_NEUTRAL and v == KEY_NEUTRAL[k])}
    return what


def run_key(label: str, config: Mapping[str, Any]) -> str:
    """A run directory name: label, seed and a hash of everything that changes the result."""
    digest = hashlib.sha1(json.dumps(_run_identity(config), sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{sanitise(label)}_s{config['train']['seed']}_{digest}"


#: the tail :func:`run_key` gives every run directory name: ``_s<seed>_<8 hex digits>``
_RUN_KEY_TAIL = re.compile(r"_s(\d+)_[0-9a-f]{8}$")


def run_key_seed(key: str) -> Optional[int]:
    """The seed a :func:`run_key` names (None for a name that is not a run key)."""
    match = _RUN_KEY_TAIL.search(key)
    return int(match.group(1)) if match else None


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def worker_count(requested: Optional[int], n_runs: int) -> int:
    """Worker processes for ``n_runs`` runs: ``requested`` (default: all cores), never more than
    the cores or the runs, at least 1."""
    if requested is not None and requested < 1:
        raise ValueError(f"workers must be >= 1, got {requested}")
    return max(1, min(requested or available_cores(), available_cores(), n_runs))


Grid = Sequence[Tuple[str, Mapping[str, Any]]]  # (label, resolved config) per run


def pending(runs: Grid, out_dir: Union[str, Path]) -> List[Tuple[str, Mapping[str, Any]]]:
    """The runs whose directory under ``out_dir`` holds no valid ``result.json`` yet. A corrupt one
    is named in a warning and counted as unfinished (training moves it aside: :func:`set_aside`)."""
    todo = []
    for label, cfg in runs:
        run_dir = Path(out_dir) / run_key(label, cfg)
        problem = result_problem(run_dir)
        if problem is not None:
            warnings.warn(f"{problem}; the run counts as unfinished (training moves its directory aside and trains it again)", stacklevel=2)
        if not is_finished(run_dir):
            todo.append((label, cfg))
    return todo


#: a run adopted from another grid's folder names its source here (provenance: it was not trained here)
ADOPTED_FILE = "adopted_from.txt"


def _seed_and_hash(key: str) -> str:
    """``s<seed>_<hash>``: what identifies a run across grids (a :func:`run_key` without its label,
    which may itself hold underscores)."""
    return "_".join(key.rsplit("_", 2)[-2:])


def _finished_runs_by_seed_and_hash(sources: Sequence[Union[str, Path]]) -> Dict[str, List[Path]]:
    """Each finished run directory of ``sources`` under :func:`_seed_and_hash` of its name, read once;
    sources in order, names sorted within each."""
    index: Dict[str, List[Path]] = {}
    for source in map(Path, sources):
        if not source.is_dir():
            raise FileNotFoundError(f"reuse_runs_from: {source} is not a folder")
        for run_dir in sorted(source.iterdir()):
            if run_dir.is_dir() and run_key_seed(run_dir.name) is not None and is_finished(run_dir):
                index.setdefault(_seed_and_hash(run_dir.name), []).append(run_dir)
    return index


def _flat(value: Any, prefix: str) -> Dict[str, Any]:
    """A nested mapping as ``{dotted key: value}`` (values as JSON would write them)."""
    if isinstance(value, Mapping) and value:
        out: Dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}.{key}"))
        return out
    return {prefix: json.loads(json.dumps(value, default=str))}


#: settings a grid worker sets itself (they change no result): never a reason to refuse a run
_WORKER_SETTINGS = ("train.torch_threads", "train.progress_bar")


def adoption_mismatch(source: Union[str, Path], config: Mapping[str, Any]) -> Optional[str]:
    """Why the finished run at ``source`` is not the run ``config`` describes (None: it is): the
    resolved env, algo and train settings in its ``config.yaml`` and the env id, algorithm, seed and
    budget in its ``result.json`` must be the config's. One line naming the first field that differs."""
    import yaml

    source = Path(source)
    try:
        theirs = yaml.safe_load((source / CONFIG_FILE).read_text(encoding="utf-8"))
        result = read_result(source)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, CorruptRunError) as exc:
        return f"its files cannot be read ({exc})"
    if not isinstance(theirs, dict) or not all(isinstance(theirs.get(s), dict) for s in ("env", "algo", "train")):
        return f"its {CONFIG_FILE} is not a resolved config (no env, algo and train sections)"
    ours, theirs = _run_identity(config), _run_identity(theirs)
    for section in ("env", "algo", "train"):
        mine, other = _flat(ours[section], section), _flat(theirs[section], section)
        for key in sorted(set(mine) | set(other)):
            if key in _WORKER_SETTINGS or mine.get(key, "absent") == other.get(key, "absent"):
                continue
            return f"{CONFIG_FILE} has {key}={other.get(key, 'absent')!r}, this grid's run has {mine.get(key, 'absent')!r}"
    train, algo = config["train"], config["algo"]
    for key, want in (("env_id", config["env"]["id"]), ("algorithm", algo["algorithm"]), ("seed", train["seed"])):
        if result[key] != want:
            return f"{RESULT_FILE} has {key}={result[key]!r}, this grid's run has {want!r}"
    rollout = int(algo.get("n_steps") or 1) * int(config["env"].get("n_envs", 1))
    total = train["total_timesteps"]
    if not total <= result["timesteps"] < total + rollout:
        return f"{RESULT_FILE} has timesteps={result['timesteps']}, a budget of {total} steps takes {total} to {total + rollout - 1}"
    return None


def _provenance_differences(source: Path, here: Mapping[str, Any]) -> List[str]:
    import yaml

    try:
        theirs = (yaml.safe_load((source / CONFIG_FILE).read_text(encoding="utf-8")) or {}).get(PROVENANCE_KEY) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
        return ["no provenance recorded"]
    versions = theirs.get("versions") or {}
    mine = here.get("versions") or {}
    return [f"{name} {versions.get(name, 'unknown')} (here {mine[name]})" for name in mine if versions.get(name) != mine[name]]


def adopt_finished_runs(runs: Grid, out_dir: Union[str, Path], sources: Sequence[Union[str, Path]], dry_run: bool = False) -> List[Path]:
    """Copy into ``out_dir`` every run of ``runs`` that another grid's run folder already finished.

    A candidate is a finished run of a source folder whose name has the same seed and settings hash
    (:func:`run_key` after the label), so a cell that two grids share (a sweep's middle size = the
    benchmark's cell) trains once. It is adopted only when its content agrees too
    (:func:`adoption_mismatch`: the settings in its ``config.yaml``, the env id, algorithm, seed and
    budget in its ``result.json``); a mismatch is refused with a warning naming the field, and the
    run trains here. Package versions that differ from this installation's are reported, not refused.
    The copy is made under the run's lock (:mod:`hybrid_pg.experiments.run_files`) into a temporary
    folder of its own and renamed into place, and gets ``adopted_from.txt`` naming its source. A run
    that already has a directory here (finished, or being trained) is left alone; sources are
    searched in order, the first matching run wins.

    :param sources: run folders of other grids (an ablation's ``<output_dir>/runs``).
    :param dry_run: copy nothing; return what would be adopted.
    :return: the run directories adopted (or, with ``dry_run``, that would be).
    """
    out = Path(out_dir)
    finished = _finished_runs_by_seed_and_hash(sources)
    adopted: List[Path] = []
    here: Optional[Dict[str, Any]] = None
    for label, cfg in runs:
        key = run_key(label, cfg)
        target = out / key
        candidates = finished.get(_seed_and_hash(key), [])
        if not candidates or target.exists() or run_files.is_locked(target):
            continue
        source = None
        for candidate in candidates:
            why = adoption_mismatch(candidate, cfg)
            if why is None:
                source = candidate
                break
            warnings.warn(f"reuse_runs_from: {candidate} is not adopted as {key}: {why}; the run trains here", stacklevel=2)
        if source is None:
            continue
        here = here or provenance()
        differences = _provenance_differences(source, here)
        if differences:
            warnings.warn(f"reuse_runs_from: {source} was trained with {', '.join(differences)}", stacklevel=2)
        if not dry_run:
            out.mkdir(parents=True, exist_ok=True)
            if not claim_run(target):
                continue  # another process is adopting or training it
            try:
                if target.exists():
                    continue
                for leftover in out.glob(f".{key}.adopting-*"):  # of an adopter that died (it held this lock)
                    shutil.rmtree(leftover, ignore_errors=True)
                tmp = out / f".{key}.adopting-{os.getpid()}-{uuid.uuid4().hex[:6]}"
                try:
                    shutil.copytree(source, tmp)
                    run_files.write_atomically(tmp / ADOPTED_FILE, f"{source}\n")
                    os.rename(tmp, target)  # atomic: a half-copied run never looks finished
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                run_files.fsync_dir(out)
            finally:
                release_run(target)
        adopted.append(target)
    return adopted


# a run being trained (or adopted) holds ``<run dir>.lock``: two grid invocations filling the same
# folder (two terminals, two sessions, a local and a Ray grid) never train, or wipe, the same run.
# The protocol, for every backend, is in hybrid_pg.experiments.run_files.
LOCK_SUFFIX = run_files.LOCK_SUFFIX
_lock_path = run_files.lock_path


def claim_run(run_dir: Union[str, Path]) -> bool:
    """Take the run's lock for this process (:func:`hybrid_pg.experiments.run_files.claim`); a lock
    its holder left behind (dead, however it died) is taken over. False: a live process holds it."""
    return run_files.claim(run_dir)


def release_run(run_dir: Union[str, Path]) -> None:
    run_files.release(run_dir)


def in_training_elsewhere(runs: Grid, out_dir: Union[str, Path]) -> List[str]:
    """Run names of ``runs`` not finished under ``out_dir`` whose lock a live process holds."""
    out = Path(out_dir)
    keys = [run_key(label, cfg) for label, cfg in runs]
    return [k for k in keys if not is_finished(out / k) and run_files.is_locked(out / k)]


def _prepare_claimed(path: Path) -> bool:
    """With the run's lock held: False when the run is finished (by another process, since the
    listing); else a corrupt result is moved aside (:func:`set_aside`), and True."""
    if is_finished(path):
        return False
    problem = result_problem(path)
    if problem is not None:
        set_aside(path, problem)
    return True


def _run_fresh(config: Mapping[str, Any], run_dir: str) -> Optional[str]:
    """A grid worker: claim the run, clear what an unfinished earlier attempt left, train with one
    torch thread. Returns ``run_dir`` when this call trained the run, None when it did not (another
    live process holds it, or finished it since the listing). An interrupted run raises
    :class:`~hybrid_pg.experiments.processes.Interrupted`: the grid stops, nothing counts as finished."""
    path = Path(run_dir)
    if not claim_run(path):
        return None
    try:
        if not _prepare_claimed(path):
            return None
        if path.exists():
            shutil.rmtree(path)
        result = run({**config, "train": {**config["train"], "torch_threads": 1, "progress_bar": False}}, path, quiet=True)
        if result.interrupted:
            raise Interrupted(result.stopped_by or signal.SIGINT)
    finally:
        release_run(path)
    return run_dir


@contextlib.contextmanager
def _naming_failures(label: str, config: Mapping[str, Any]) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        raise RuntimeError(f"run {run_key(label, config)} ({label}, seed {config['train']['seed']}) failed: {exc!r}") from exc


BACKENDS = ("local", "ray")


@dataclasses.dataclass
class GridOutcome:
    """What :func:`train_grid` did: the runs (their keys) this call trained, and those it left to
    another live process that holds their lock."""

    trained: List[str]
    held: List[str]


def train_grid(
    runs: Grid,
    out_dir: Union[str, Path],
    workers: Optional[int] = None,
    progress: bool = True,
    backend: str = "local",
    address: Optional[str] = None,
    max_retries: Optional[int] = None,
) -> GridOutcome:
    """Train every run of ``runs`` without a finished directory under ``out_dir`` (see
    :func:`run_grid`, which also reads the results back) and say which runs this call trained."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend != "ray" and (address is not None or max_retries is not None):
        raise ValueError("address and max_retries apply to backend='ray' only")
    if backend == "ray":
        from hybrid_pg.experiments.ray_backend import require_ray

        require_ray()  # before anything is created
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = [run_key(label, cfg) for label, cfg in runs]
    if len(set(keys)) != len(keys):
        raise ValueError("two runs of the grid are identical; give them different labels or seeds")
    todo = pending(runs, out)
    trained: List[str] = []
    if todo and backend == "ray":
        trained = _run_ray(todo, out, address, workers, max_retries, progress)
    elif todo:
        trained = _run_local(todo, out, worker_count(workers, len(todo)), progress)
    return GridOutcome(trained=trained, held=in_training_elsewhere(runs, out))


def run_grid(
    runs: Grid,
    out_dir: Union[str, Path],
    workers: Optional[int] = None,
    progress: bool = True,
    backend: str = "local",
    address: Optional[str] = None,
    max_retries: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """Train every run without a finished directory under ``out_dir`` and return every finished
    run's :func:`load_result`, in order, labelled. A run another live process is training (it holds
    the run's lock, see :func:`claim_run`) is left to it, with a warning, and is not returned.

    ``backend="local"`` (default): up to ``workers`` spawned processes on this machine, one torch
    thread each, never more than the cores (:class:`~hybrid_pg.experiments.processes.WorkerPool`:
    no worker outlives this process); a failed run raises after the others finished.
    ``backend="ray"``: one Ray task per run (``num_cpus=1``, one torch thread) on the cluster at
    ``address``, the run directories returned to this process and written here in the same layout,
    a failed run retried up to ``max_retries`` times (default 2) while the others go on
    (:mod:`hybrid_pg.experiments.ray_backend`); ``workers`` then caps the runs in flight. This
    process holds the lock of every run it has in flight, as a local worker would.

    Ctrl-C or SIGTERM (inside :func:`~hybrid_pg.experiments.processes.sigterm_interrupts`) stops
    the grid: the workers are stopped, nothing unfinished counts as finished, and the
    ``KeyboardInterrupt`` (:class:`~hybrid_pg.experiments.processes.Interrupted`) goes on to the caller;
    the next call trains what is left.
    """
    outcome = train_grid(runs, out_dir, workers=workers, progress=progress, backend=backend, address=address, max_retries=max_retries)
    if outcome.held:
        warnings.warn(
            f"{len(outcome.held)} run(s) left to another live process that holds their lock: {', '.join(outcome.held)}", stacklevel=2
        )
    out = Path(out_dir)
    results = []
    for label, cfg in runs:
        key = run_key(label, cfg)
        if key in outcome.held:
            continue
        if not is_finished(out / key):
            warnings.warn(f"run {key} is not finished (another process held it and stopped); the next call trains it", stacklevel=2)
            continue
        try:
            results.append(load_result(out / key, label=label))
        except CorruptRunError as exc:
            warnings.warn(f"{exc}; the run is left out of the results", stacklevel=2)
    return results


def _run_ray(
    todo: Grid, out: Path, address: Optional[str], workers: Optional[int], max_retries: Optional[int], progress: bool
) -> List[str]:
    """The Ray backend with the lock protocol: this process claims each run before it is submitted
    and holds the lock until its directory is written (or the grid ends)."""
    from hybrid_pg.experiments.ray_backend import DEFAULT_MAX_RETRIES, run_cells

    claimed: List[Path] = []
    try:
        cells = []
        for label, cfg in todo:
            key = run_key(label, cfg)
            if not claim_run(out / key):
                continue  # a live process trains it: left to it
            claimed.append(out / key)
            if _prepare_claimed(out / key):
                cells.append((label, cfg, key))
        retries = DEFAULT_MAX_RETRIES if max_retries is None else max_retries
        run_cells(cells, out, _run_fresh, address=address, workers=workers, max_retries=retries, progress=progress, result_file=RESULT_FILE)
    finally:
        for path in claimed:
            release_run(path)
    return [key for _, _, key in cells]


def _run_local(todo: Grid, out: Path, n_workers: int, progress: bool) -> List[str]:
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"runs ({n_workers} workers)")
    trained: List[str] = []
    try:
        if n_workers == 1:
            for label, cfg in todo:
                with _naming_failures(label, cfg):
                    if _run_fresh(cfg, str(out / run_key(label, cfg))) is not None:
                        trained.append(run_key(label, cfg))
                if bar is not None:
                    bar.update()
        else:
            failures = []
            calls = [(cfg, str(out / run_key(label, cfg))) for label, cfg in todo]
            with WorkerPool(_run_fresh, n_workers) as pool:
                for index, ok, value in pool.imap_unordered(calls):
                    label, cfg = todo[index]
                    if not ok:  # the others still finish (and are saved); this raises at the end
                        failures.append(f"run {run_key(label, cfg)} ({label}, seed {cfg['train']['seed']}) failed: {value}")
                    elif value is not None:
                        trained.append(run_key(label, cfg))
                    if bar is not None:
                        bar.update()
            if failures:
                raise RuntimeError(f"{len(failures)} of {len(todo)} runs failed (the others are saved): " + "; ".join(failures))
    finally:
        if bar is not None:
            bar.close()
    return trained
