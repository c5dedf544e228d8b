"""The SB3 logger a run writes its ``progress.csv`` and tensorboard events with, safe against Ctrl-C.

A ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM under
:func:`hybrid_pg.experiments.processes.sigterm_interrupts`) can land anywhere. Two places break SB3's
:class:`~stable_baselines3.common.logger.Logger` for the flush an interrupted run still does:

* inside ``record``, between its two assignments: a key then has a value but no exclusion entry,
  and every later ``dump`` fails (``zip() argument 2 is shorter than argument 1``), so the
  interrupted run lost its model instead of saving it;
* inside ``dump``, half-way through a CSV row: the next row is appended to the broken line.

:class:`InterruptSafeLogger` dumps with signals held (once per update: cheap) and, before writing,
gives a half-recorded key the exclusion ``record`` gives by default (written everywhere), so the
value recorded just before the interrupt is kept rather than dropped. ``record`` itself stays
SB3's: holding signals for every logged value would cost more than the rest of logging.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from stable_baselines3.common import logger as sb3_logger
from stable_baselines3.common.logger import Logger, make_output_format

from hybrid_pg.experiments.processes import interrupts_deferred

__all__ = ["InterruptSafeLogger", "make_run_logger", "tensorboard_available"]


class InterruptSafeLogger(Logger):
    """SB3's logger whose ``dump`` survives an interrupt that landed in ``record`` or in ``dump`` (module docstring)."""

    def dump(self, step: int = 0) -> None:
        with interrupts_deferred():
            for key in self.name_to_value.keys() - self.name_to_excluded.keys():
                self.name_to_excluded[key] = self.to_tuple(None)
            super().dump(step)


def tensorboard_available() -> bool:
    """Whether SB3 found tensorboard's ``SummaryWriter`` (tensorboard is an optional extra)."""
    return getattr(sb3_logger, "SummaryWriter", None) is not None


def make_run_logger(run_dir: Union[str, Path]) -> InterruptSafeLogger:
    """``progress.csv`` in ``run_dir``, and tensorboard events under ``run_dir/tensorboard`` where
    tensorboard is installed."""
    run_dir = Path(run_dir)
    formats = [make_output_format("csv", str(run_dir))]
    if tensorboard_available():
        formats.append(make_output_format("tensorboard", str(run_dir / "tensorboard")))
    return InterruptSafeLogger(folder=str(run_dir), output_formats=formats)
