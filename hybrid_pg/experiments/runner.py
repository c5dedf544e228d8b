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
      result.json         written last and atomically: its presence means the run finished

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
import subprocess
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import gymnasium as gym

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

__all__ = [
    "CONFIG_FILE",
    "EVAL_SEED_OFFSET",
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
    "release_run",
    "run",
    "run_grid",
    "run_key",
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


@dataclasses.dataclass
class RunResult:
    """What :func:`run` did (``result.json`` holds the same, minus the path)."""

    run_dir: Path
    timesteps: int
    train_seconds: float
    interrupted: bool
    final_return: Optional[float]
    eval_returns: List[float]


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


def _tensorboard_available() -> bool:
    from stable_baselines3.common import logger as sb3_logger

    return getattr(sb3_logger, "SummaryWriter", None) is not None


def build_model(config: Mapping[str, Any], vec_env: Any, run_dir: Optional[Path] = None, verbose: int = 0):
    """The algorithm of the ``algo`` section on ``vec_env``; a rejected value becomes a
    :class:`ConfigError` naming ``algo.<key>``. Creates nothing on disk."""
    algo = config["algo"]
    cls = algorithm_class(algo.get("algorithm", "hybrid_pg"))
    kwargs = algorithm_kwargs(algo)
    tensorboard = str(run_dir / "tensorboard") if run_dir is not None and _tensorboard_available() else None
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


def _make_logger(run_dir: Path):
    from stable_baselines3.common.logger import Logger, make_output_format

    formats = [make_output_format("csv", str(run_dir))]
    if _tensorboard_available():
        formats.append(make_output_format("tensorboard", str(run_dir / "tensorboard")))
    return Logger(folder=str(run_dir), output_formats=formats)


# ------------------------------------------------------------------------------------------------
# one run
# ------------------------------------------------------------------------------------------------


def _git_commit() -> Optional[str]:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance() -> Dict[str, Any]:
    """Package versions and the git commit (when the package runs from a checkout)."""
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
    }


def _check_run_dir_free(run_dir: Path) -> None:
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise RunDirError(f"run directory {run_dir} already exists; refusing to overwrite it (pick another --out or output.name)")


def _write_json_atomically(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)  # a killed run never leaves a half-written result behind


def run(config: Mapping[str, Any], run_dir: Union[str, Path], quiet: bool = True, callbacks: Sequence[Any] = ()) -> RunResult:
    """Train one resolved, env-checked config and write its run directory (module docstring).

    The env and model are built (so every config error surfaces) before ``run_dir`` is created;
    ``run_dir`` must not exist or be empty. ``callbacks`` are extra SB3 callbacks. An interrupted
    run (Ctrl-C) saves its model and plots but writes no ``result.json``.
    """
    import torch as th
    from stable_baselines3.common.callbacks import CallbackList

    from hybrid_pg.experiments.csv_callbacks import (
        DIAGNOSTICS_FILE,
        EVALUATIONS_FILE,
        DiagnosticsCallback,
        EvalCSVCallback,
        RolloutProgressBar,
    )
    from hybrid_pg.experiments.plots import plot_lambda, plot_returns

    run_dir = Path(run_dir)
    _check_run_dir_free(run_dir)
    train = config["train"]
    # small MLPs gain nothing from intra-op threads, and on a busy machine they lose a lot
    th.set_num_threads(train["torch_threads"])
    vec_env = make_vec_env_from(config["env"], train["seed"], gamma=_gamma(config))
    eval_env = None
    try:
        model = build_model(config, vec_env, run_dir, verbose=0 if quiet else 1)
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config({**config, PROVENANCE_KEY: provenance()}, run_dir / CONFIG_FILE)
        model.set_logger(_make_logger(run_dir))
        eval_env = make_vec_env_from(config["env"], train["seed"], evaluation=True, gamma=_gamma(config))
        evaluation = EvalCSVCallback(
            eval_env, train["eval_freq"], run_dir / EVALUATIONS_FILE, n_eval_episodes=train["eval_episodes"], print_progress=not quiet
        )
        diagnostics = DiagnosticsCallback(run_dir / DIAGNOSTICS_FILE, print_progress=not quiet, total_timesteps=train["total_timesteps"])
        if not quiet:
            _print_header(config, run_dir)
        interrupted, t0 = False, time.perf_counter()
        try:
            bar = [RolloutProgressBar()] if train["progress_bar"] and not quiet else []  # SB3's bar overshoots its total
            model.learn(train["total_timesteps"], callback=CallbackList([diagnostics, evaluation, *callbacks, *bar]))
        except KeyboardInterrupt:
            interrupted = True
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
    plot_returns([run_dir], run_dir / "returns.png")
    plot_lambda(run_dir, run_dir / "lambda.png")
    returns = evaluation.last_returns
    result = RunResult(
        run_dir=run_dir,
        timesteps=int(model.num_timesteps),
        train_seconds=seconds,
        interrupted=interrupted,
        final_return=float(sum(returns) / len(returns)) if returns and not interrupted else None,
        eval_returns=returns if not interrupted else [],
    )
    if not interrupted:
        summary = {k: v for k, v in dataclasses.asdict(result).items() if k not in ("run_dir", "interrupted")}
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


def is_finished(run_dir: Union[str, Path]) -> bool:
    return (Path(run_dir) / RESULT_FILE).is_file()


def _progress_rows(path: Path) -> List[Dict[str, float]]:
    """SB3's progress.csv as one dict per dump, holding only the keys that dump logged (numbers)."""
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="", encoding="utf-8") as fh:
        for raw in csv.DictReader(fh):
            row = {}
            for key, text in raw.items():
                if key is None or text in (None, ""):
                    continue
                try:
                    row[key] = float(text)
                except ValueError:
                    continue
            rows.append(row)
    return rows


def load_result(run_dir: Union[str, Path], label: Optional[str] = None) -> Dict[str, Any]:
    """A finished run as one dict: ``result.json``'s fields, ``config`` (config.yaml), ``rows``
    (progress.csv: row ``i`` holds the step and ``rollout/`` statistics after rollout ``i`` and the
    ``train/``/``hybrid/`` values of update ``i - 1``; the extra last row the last update's values),
    and ``spec`` (label, seed, algo, env_id) for grouping."""
    import yaml

    run_dir = Path(run_dir)
    result = json.loads((run_dir / RESULT_FILE).read_text())
    config = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    result.update(
        run_dir=str(run_dir),
        key=run_dir.name,
        config=config,
        rows=_progress_rows(run_dir / PROGRESS_FILE),
        spec={"label": label or run_dir.name, "seed": result["seed"], "algo": result["algorithm"], "env_id": result["env_id"]},
    )
    return result


# ------------------------------------------------------------------------------------------------
# grids: resumable, in parallel
# ------------------------------------------------------------------------------------------------


def run_key(label: str, config: Mapping[str, Any]) -> str:
    """A run directory name: label, seed and a hash of everything that changes the result."""
    what = {k: v for k, v in config.items() if k in ("env", "algo", "train")}
    what["train"] = {k: v for k, v in what["train"].items() if k != "progress_bar"}
    digest = hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:8]
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
    """The runs whose directory under ``out_dir`` holds no ``result.json`` yet."""
    return [(label, cfg) for label, cfg in runs if not is_finished(Path(out_dir) / run_key(label, cfg))]


#: a run adopted from another grid's folder names its source here (provenance: it was not trained here)
ADOPTED_FILE = "adopted_from.txt"


def _seed_and_hash(key: str) -> str:
    """``s<seed>_<hash>``: what identifies a run across grids (a :func:`run_key` without its label,
    which may itself hold underscores)."""
    return "_".join(key.rsplit("_", 2)[-2:])


def _finished_runs_by_seed_and_hash(sources: Sequence[Union[str, Path]]) -> Dict[str, Path]:
    """Each finished run directory of ``sources`` under :func:`_seed_and_hash` of its name, read once;
    sources in order, names sorted within each, the first one found wins."""
    index: Dict[str, Path] = {}
    for source in map(Path, sources):
        if not source.is_dir():
            raise FileNotFoundError(f"reuse_runs_from: {source} is not a folder")
        for run_dir in sorted(source.iterdir()):
            if run_dir.is_dir() and is_finished(run_dir):
                index.setdefault(_seed_and_hash(run_dir.name), run_dir)
    return index


def adopt_finished_runs(runs: Grid, out_dir: Union[str, Path], sources: Sequence[Union[str, Path]], dry_run: bool = False) -> List[Path]:
    """Copy into ``out_dir`` every run of ``runs`` that another grid's run folder already finished.

    Two runs are the same run when their keys agree after the label: the same seed and the same hash
    of the resolved env, algo and train settings (:func:`run_key`), so a cell that two grids share
    (a sweep's middle size = the benchmark's cell) trains once. The copy gets ``adopted_from.txt``
    naming its source. A run that already has a directory here (finished, or being trained) is left
    alone; sources are searched in order, the first finished match wins.

    :param sources: run folders of other grids (an ablation's ``<output_dir>/runs``).
    :param dry_run: copy nothing; return what would be adopted.
    :return: the run directories adopted (or, with ``dry_run``, that would be).
    """
    out = Path(out_dir)
    finished = _finished_runs_by_seed_and_hash(sources)
    adopted: List[Path] = []
    for label, cfg in runs:
        key = run_key(label, cfg)
        target, source = out / key, finished.get(_seed_and_hash(key))
        if source is None or target.exists() or _lock_path(target).exists():
            continue
        if not dry_run:
            out.mkdir(parents=True, exist_ok=True)
            tmp = out / (key + ".adopting")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(source, tmp)
            (tmp / ADOPTED_FILE).write_text(f"{source}\n", encoding="utf-8")
            os.replace(tmp, target)  # atomic: a half-copied run never looks finished
        adopted.append(target)
    return adopted


#: a run being trained holds ``<run dir>.lock`` (``pid@host``): two grid invocations filling the same
#: folder (two terminals, two sessions) never train, or wipe, the same run
LOCK_SUFFIX = ".lock"


def _lock_path(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + LOCK_SUFFIX)


def _lock_is_live(lock: Path) -> bool:
    """Whether the process named in ``lock`` still runs. A lock from another host cannot be checked
    and counts as live; an unreadable or half-written one younger than a minute too (its writer may
    be between creating and writing it); otherwise a dead pid makes it stale."""
    try:
        owner = lock.read_text().strip()
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    pid_text, _, host = owner.partition("@")
    if not pid_text.isdigit():
        return age < 60.0
    if host != platform.node():
        return True
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def claim_run(run_dir: Union[str, Path]) -> bool:
    """Claim a run for this process by creating its lock file exclusively; a stale lock (its process
    is gone) is taken over. False: another live process is training this run."""
    lock = _lock_path(Path(run_dir))
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _lock_is_live(lock):
                return False
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()}@{platform.node()}")
        return True
    return False


def in_training_elsewhere(runs: Grid, out_dir: Union[str, Path]) -> List[str]:
    """Run names of ``runs`` not finished under ``out_dir`` whose lock a live process holds."""
    out = Path(out_dir)
    keys = [run_key(label, cfg) for label, cfg in runs]
    return [k for k in keys if not is_finished(out / k) and _lock_is_live(_lock_path(out / k))]


def release_run(run_dir: Union[str, Path]) -> None:
    _lock_path(Path(run_dir)).unlink(missing_ok=True)


def _run_fresh(config: Mapping[str, Any], run_dir: str) -> Optional[str]:
    """A grid worker: claim the run (None: another live process trains it), clear what an
    unfinished earlier attempt left, train with one torch thread."""
    path = Path(run_dir)
    if not claim_run(path):
        return None
    try:
        if is_finished(path):  # finished by another process between our listing and our claim
            return run_dir
        if path.exists():
            shutil.rmtree(path)
        run({**config, "train": {**config["train"], "torch_threads": 1, "progress_bar": False}}, path, quiet=True)
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


def run_grid(
    runs: Grid,
    out_dir: Union[str, Path],
    workers: Optional[int] = None,
    progress: bool = True,
    backend: str = "local",
    address: Optional[str] = None,
    max_retries: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """Train every run without a finished directory under ``out_dir`` and return every run's
    :func:`load_result`, in order, labelled. A run another live process is training (it holds the
    run's lock, see :func:`claim_run`) is left to it, with a warning, and is not returned.

    ``backend="local"`` (default): up to ``workers`` spawned processes on this machine, one torch
    thread each, never more than the cores; a failed run raises after the others finished.
    ``backend="ray"``: one Ray task per run (``num_cpus=1``, one torch thread) on the cluster at
    ``address``, the run directories returned to this process and written here in the same layout,
    a failed run retried up to ``max_retries`` times (default 2) while the others go on
    (:mod:`hybrid_pg.experiments.ray_backend`); ``workers`` then caps the runs in flight.
    """
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
    if todo and backend == "ray":
        from hybrid_pg.experiments.ray_backend import DEFAULT_MAX_RETRIES, run_cells

        cells = [(label, cfg, run_key(label, cfg)) for label, cfg in todo]
        retries = DEFAULT_MAX_RETRIES if max_retries is None else max_retries
        run_cells(cells, out, _run_fresh, address=address, workers=workers, max_retries=retries, progress=progress, result_file=RESULT_FILE)
    elif todo:
        _run_local(todo, out, worker_count(workers, len(todo)), progress)
    held = in_training_elsewhere(runs, out)
    if held:
        warnings.warn(f"{len(held)} run(s) left to another live process that holds their lock: {', '.join(held)}", stacklevel=2)
    return [load_result(out / key, label=label) for key, (label, _) in zip(keys, runs) if key not in held]


def _run_local(todo: Grid, out: Path, n_workers: int, progress: bool) -> None:
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"runs ({n_workers} workers)")
    if n_workers == 1:
        for label, cfg in todo:
            with _naming_failures(label, cfg):
                _run_fresh(cfg, str(out / run_key(label, cfg)))
            if bar is not None:
                bar.update()
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=n_workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_run_fresh, cfg, str(out / run_key(label, cfg))): (label, cfg) for label, cfg in todo}
            for future in as_completed(futures):
                # on a failure the pool still finishes (and saves) the other runs, then this raises
                with _naming_failures(*futures[future]):
                    future.result()
                if bar is not None:
                    bar.update()
    if bar is not None:
        bar.close()
