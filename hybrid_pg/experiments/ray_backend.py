"""The Ray backend of :func:`hybrid_pg.experiments.runner.run_grid`: one Ray task per grid cell.

``run_grid(runs, out_dir, backend="ray", address=None)`` trains the cells without a finished run
directory as Ray tasks (``num_cpus=1``, one torch thread each) on the cluster at ``address``
(``"auto"``: the one ``ray start`` runs on this node; ``None``: an already initialised Ray, else a
local instance on this machine's cores) and writes their run directories into the same resumable
layout as the local backend: ``<out_dir>/<run_key>/`` with ``result.json`` last, so finished cells
are skipped by the next call, whichever backend it uses, and the tables built from them are the
same.

Where results go: back to the driver. A worker trains into a temporary folder on its own node and
returns the run directory's files as bytes (a few hundred kB for the grids here); the driver
writes them under ``out_dir`` into a staging folder, ``result.json`` last, and renames the staging
folder into place (one atomic rename; every file and the folder are ``fsync``-ed first). Workers
never write ``out_dir`` themselves, so a cluster needs no shared file system, a worker killed
mid-run leaves nothing behind, and a driver killed mid-write leaves a hidden staging folder that
the next call for that run removes. With shared storage the same path works too; it costs one copy
through Ray's object store.

Locks: the driver holds each run's lock (:mod:`hybrid_pg.experiments.run_files`) from before it
submits the run until its directory is written (``run_grid`` claims them), so a run that a live
process (a local grid, another driver) is training is left to it, and a finished run directory is
never replaced: :func:`write_run_dir` refuses to.

Failures: a cell whose task raises, or whose worker process dies, is reported on stderr and
resubmitted, up to ``max_retries`` times (the retries are the driver's, so every attempt is
reported); the other cells keep running and are saved as they finish. Cells that fail every
attempt are named in the ``RuntimeError`` raised at the end; the next call trains only them.

Every node needs the same environment as the driver (``pip install -e ".[ray]"``; the run
directory's ``config.yaml`` records the worker's package versions and git commit). Ray is an
optional dependency: without it, :func:`require_ray` raises :class:`RayNotInstalledError`, which
``hybrid-pg`` turns into exit status 2.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections import deque
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from hybrid_pg.experiments import run_files

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "INSTALL_HINT",
    "RayNotInstalledError",
    "pack_run_dir",
    "require_ray",
    "run_cells",
    "train_cell",
    "write_run_dir",
]

INSTALL_HINT = 'Ray is not installed; install the ray extra: pip install -e ".[ray]" (or pip install "hybrid-pg[ray]")'
DEFAULT_MAX_RETRIES = 2
STAGING_MARK = ".incoming-"  # staging folders: .<run_key>.incoming-<hex>

#: a cell: (label, resolved config, run key = its directory name)
Cell = Tuple[str, Mapping[str, Any], str]
#: trains one config into a run directory that does not exist yet (the run engine's grid worker)
TrainFn = Callable[[Mapping[str, Any], str], Any]
#: what a task returns: the run directory's files, relative POSIX path -> bytes
Files = Dict[str, bytes]


class RayNotInstalledError(ImportError):
    """``backend="ray"`` without Ray installed."""


def require_ray():
    """The ``ray`` module, or :class:`RayNotInstalledError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise RayNotInstalledError(INSTALL_HINT) from exc
    return ray


# ------------------------------------------------------------------------------------------------
# run directories as bytes
# ------------------------------------------------------------------------------------------------


def pack_run_dir(run_dir: Union[str, Path]) -> Files:
    """Every file under ``run_dir`` (recursively) as relative POSIX path -> bytes."""
    root = Path(run_dir)
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _safe_relative(name: str) -> PurePosixPath:
    rel = PurePosixPath(name)
    if rel.is_absolute() or not rel.parts or ".." in rel.parts:
        raise ValueError(f"refusing to write {name!r} outside the run directory")
    return rel


def write_run_dir(files: Files, run_dir: Union[str, Path], result_file: str = "result.json") -> Path:
    """Write a packed run directory to ``run_dir``: into a staging folder next to it, every file
    durably, ``result_file`` last, then one rename into place (an unfinished ``run_dir`` left by an
    earlier attempt is replaced; a finished one, holding ``result_file``, never is:
    :class:`FileExistsError`). Call it holding the run's lock. Returns ``run_dir``."""
    run_dir = Path(run_dir)
    if result_file not in files:
        raise ValueError(f"the packed run directory has no {result_file}: the run did not finish")
    if (run_dir / result_file).exists():
        raise FileExistsError(f"{run_dir} holds a finished run ({result_file}); refusing to replace it")
    _remove_stale_staging(run_dir.parent, [run_dir.name])
    staging = run_dir.with_name(f".{run_dir.name}{STAGING_MARK}{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    try:
        for name in sorted(files, key=lambda n: n == result_file):  # result_file last
            path = staging / _safe_relative(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            run_files.write_atomically(path, files[name])
        if run_dir.exists():
            shutil.rmtree(run_dir)  # what an unfinished attempt (or a killed local worker) left
        os.replace(staging, run_dir)
        run_files.fsync_dir(run_dir.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return run_dir


def _remove_stale_staging(out_dir: Path, keys: Sequence[str]) -> None:
    """Staging folders an earlier driver left for these runs (whose locks this driver holds: the
    staging folders of other runs may be another driver's, being written now)."""
    for key in keys:
        for path in out_dir.glob(f".{key}{STAGING_MARK}*"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)


def train_cell(train: TrainFn, config: Mapping[str, Any], key: str) -> Files:
    """A Ray task's body: train ``config`` into a temporary folder on this node, return its files."""
    with tempfile.TemporaryDirectory(prefix="hybrid-pg-ray-") as tmp:
        run_dir = Path(tmp) / key
        train(config, str(run_dir))
        return pack_run_dir(run_dir)


# ------------------------------------------------------------------------------------------------
# the grid
# ------------------------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"hybrid-pg: {message}", file=sys.stderr, flush=True)


def _short(exc: BaseException) -> str:
    """One line for a task failure (Ray's errors carry the remote traceback)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def run_cells(
    cells: Sequence[Cell],
    out_dir: Union[str, Path],
    train: TrainFn,
    address: Optional[str] = None,
    workers: Optional[int] = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
    progress: bool = True,
    result_file: str = "result.json",
    task: Optional[Callable[[TrainFn, Mapping[str, Any], str], Files]] = None,
    log: Callable[[str], None] = _say,
) -> int:
    """Train ``cells`` as Ray tasks and write each one's run directory ``out_dir/<key>`` as it
    finishes (module docstring). Returns the number of cells trained.

    :param train: ``train(config, run_dir)``, importable on the workers (the run engine's grid worker).
    :param address: the Ray cluster (``ray.init(address=...)``); ``None``: an initialised Ray as it
        is, else a local instance (shut down again at the end).
    :param workers: at most this many cells in flight (default: as many as Ray schedules).
    :param max_retries: resubmissions of a failed cell (a raised exception or a dead worker).
    :param task: replaces :func:`train_cell` as the task's body (tests inject failures with it).
    """
    ray = require_ray()
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out, [key for _, _, key in cells])
    if not cells:
        return 0
    started = not ray.is_initialized()
    if started:
        if address is None:  # a private local instance: no dashboard
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    elif address is not None:
        log(f"Ray is already initialised in this process; using it, not address={address!r}")
    # retries are ours (reported, bounded); Ray sets OMP_NUM_THREADS=1 for a 1-CPU task and the
    # train function sets one torch thread
    remote = ray.remote(num_cpus=1, max_retries=0)(task or train_cell)
    queue: Deque[Tuple[Cell, int]] = deque((cell, 0) for cell in cells)
    in_flight: Dict[Any, Tuple[Cell, int]] = {}
    failed: List[Tuple[Cell, str]] = []
    limit = workers or len(cells)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        cpus = int(ray.cluster_resources().get("CPU", 0))
        bar = tqdm(total=len(cells), desc=f"runs (ray, {cpus} CPUs)")
    trained = 0
    try:
        while queue or in_flight:
            while queue and len(in_flight) < limit:
                (label, config, key), attempt = queue.popleft()
                in_flight[remote.remote(train, config, key)] = ((label, config, key), attempt)
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                cell, attempt = in_flight.pop(ref)
                label, config, key = cell
                try:
                    files = ray.get(ref)
                except ray.exceptions.RayError as exc:  # RayTaskError (raised), WorkerCrashedError (died), ...
                    what = f"run {key} ({label}, seed {config['train']['seed']}) failed (attempt {attempt + 1} of {max_retries + 1}): {_short(exc)}"
                    if attempt < max_retries:
                        log(f"{what}; retrying")
                        queue.append((cell, attempt + 1))
                    else:
                        log(what)
                        failed.append((cell, _short(exc)))
                    continue
                try:
                    write_run_dir(files, out / key, result_file)
                except FileExistsError as exc:  # finished meanwhile by a process that ignores locks
                    log(f"run {key}: {exc}; this attempt's files are dropped")
                    continue
                trained += 1
                if bar is not None:
                    bar.update()
    finally:
        for ref in in_flight:  # only on an exception or Ctrl-C: the finished cells are saved already
            ray.cancel(ref, force=True)
        if bar is not None:
            bar.close()
        if started:
            ray.shutdown()
    if failed:
        names = "; ".join(f"{key} ({label}): {why}" for (label, _, key), why in failed)
        raise RuntimeError(
            f"{len(failed)} of {len(cells)} runs failed after {max_retries + 1} attempts each "
            f"(the other runs are saved; running the grid again trains only these): {names}"
        )
    return trained
