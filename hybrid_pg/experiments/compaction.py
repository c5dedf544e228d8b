"""``hybrid-pg compact DIR``: the large CSV files of finished runs, gzip-compressed in place.

A finished run keeps ``result.json``, ``config.yaml`` and ``evaluations.csv`` as they are (small, and
what a reader opens first); its per-update logs, ``progress.csv`` (SB3's logger) and
``diagnostics.csv`` (every ``hybrid/`` scalar), which are nine tenths of a study's size, become
``progress.csv.gz`` and ``diagnostics.csv.gz`` (:func:`hybrid_pg.experiments.compressed.gzip_file`:
deterministic bytes, checked by reading back before the plain file goes). Every reader takes either
form (:func:`hybrid_pg.experiments.compressed.open_text`), so a study's ``--report-only`` writes the
same report, byte for byte, from a compacted folder. ``docs/results/README.md`` states the policy
for committed results.

Only finished runs (``result.json`` written) are touched, each under its run lock
(:mod:`hybrid_pg.experiments.run_files`): a run another process trains or adopts is skipped. A
folder that a process of an older version of this package still reads (a grid started before the
compressed files could be read) must be left alone until that process has finished.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, Iterator, List, Union

from hybrid_pg.experiments import run_files
from hybrid_pg.experiments.compressed import gzip_file
from hybrid_pg.experiments.csv_callbacks import DIAGNOSTICS_FILE
from hybrid_pg.experiments.runner import PROGRESS_FILE, RESULT_FILE

__all__ = ["COMPACTED_FILES", "Compacted", "compact", "compact_run", "finished_runs_below"]

#: the files of a finished run that compaction compresses
COMPACTED_FILES = (PROGRESS_FILE, DIAGNOSTICS_FILE)

PathLike = Union[str, Path]


@dataclasses.dataclass(frozen=True)
class Compacted:
    """One file compressed (or, in a dry run, that would be): its plain path and both sizes
    (``after`` is None in a dry run)."""

    path: Path
    before: int
    after: Union[int, None]


def finished_runs_below(root: PathLike) -> Iterator[Path]:
    """Every finished run directory at or below ``root`` (one holding ``result.json``), in sorted order."""
    root = Path(root)
    for result in sorted(root.rglob(RESULT_FILE)):
        if result.is_file():
            yield result.parent


def compact_run(run_dir: PathLike, dry_run: bool = False) -> List[Compacted]:
    """Compress the :data:`COMPACTED_FILES` a finished run still holds plain; nothing for an
    unfinished run or one whose lock another process holds."""
    run_dir = Path(run_dir)
    todo = [run_dir / name for name in COMPACTED_FILES if (run_dir / name).is_file()]
    if not todo or not (run_dir / RESULT_FILE).is_file():
        return []
    if dry_run:
        return [Compacted(path, path.stat().st_size, None) for path in todo] if not run_files.is_locked(run_dir) else []
    if not run_files.claim(run_dir):
        return []
    try:
        done = []
        for path in todo:
            before = path.stat().st_size
            done.append(Compacted(path, before, gzip_file(path).stat().st_size))
        return done
    finally:
        run_files.release(run_dir)


def compact(roots: Iterable[PathLike], dry_run: bool = False) -> List[Compacted]:
    """:func:`compact_run` on every finished run at or below each of ``roots``."""
    done: List[Compacted] = []
    for root in roots:
        if not Path(root).is_dir():
            raise NotADirectoryError(f"{root}: not a directory")
        for run_dir in finished_runs_below(root):
            done += compact_run(run_dir, dry_run=dry_run)
    return done
