"""A Ctrl-C (or SIGTERM) that lands at an awkward moment still leaves a clean, saved run.

The grid test that stops a real ``hybrid-pg ablate`` with SIGINT found this by chance: the interrupt
landed inside SB3's ``Logger.record`` between its two assignments, the run's final flush then failed
with ``zip() argument 2 is shorter than argument 1``, and the run exited 1 without saving its model.
These tests put the interrupt exactly there (and in the other unsafe places) instead of waiting for
timing to do it.
"""

from __future__ import annotations

import csv
import os
import signal

import pytest
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import make_output_format

from hybrid_pg.experiments.ablate import load_ablation
from hybrid_pg.experiments.csv_callbacks import WideCSVWriter
from hybrid_pg.experiments.processes import Interrupted, interrupts_deferred, sigterm_interrupts
from hybrid_pg.experiments.run_logger import InterruptSafeLogger
from hybrid_pg.experiments.runner import MODEL_FILE, RESULT_FILE, run

# ------------------------------------------------------------------------------------------------
# interrupts_deferred
# ------------------------------------------------------------------------------------------------


def test_a_sigint_inside_the_block_lands_after_it():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            done.append(sum(range(100_000)))  # many bytecodes: an undeferred handler would run here
    assert done == [sum(range(100_000))]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_sigterm_inside_the_block_lands_after_it_as_the_handler_in_force_says():
    with sigterm_interrupts():
        before = signal.getsignal(signal.SIGTERM)
        with pytest.raises(Interrupted) as caught:
            with interrupts_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                sum(range(100_000))
        assert caught.value.signum == signal.SIGTERM and caught.value.exit_status == 143
        assert signal.getsignal(signal.SIGTERM) is before


def test_an_ignored_signal_stays_ignored_and_a_quiet_block_raises_nothing():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(100_000))
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    with interrupts_deferred():
        pass  # nothing held: nothing raised


# ------------------------------------------------------------------------------------------------
# the logger and the CSV writer
# ------------------------------------------------------------------------------------------------


def _read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_key_recorded_half_way_when_the_interrupt_came_is_written_not_fatal(tmp_path):
    # SB3's human-readable and tensorboard formats pair values with exclusions strictly
    formats = [make_output_format(kind, str(tmp_path)) for kind in ("csv", "log")]
    logger = InterruptSafeLogger(folder=str(tmp_path), output_formats=formats)
    logger.record("train/a", 1.0)
    logger.name_to_value["train/b"] = 2.0  # what record() leaves when interrupted between its two lines
    logger.dump(10)
    logger.record("train/a", 3.0)
    logger.dump(20)
    logger.close()
    rows = _read(tmp_path / "progress.csv")
    assert [(r["train/a"], r["train/b"]) for r in rows] == [("1.0", "2.0"), ("3.0", "")]


def test_a_sigint_during_a_csv_row_leaves_the_row_whole(tmp_path):
    writer = WideCSVWriter(tmp_path / "d.csv")
    writer.write({"a": 1, "b": 2})

    class Interrupting(dict):  # the row's cells are read inside write(): the signal arrives there
        def get(self, key, default=None):
            os.kill(os.getpid(), signal.SIGINT)
            return super().get(key, default)

    with pytest.raises(KeyboardInterrupt):
        writer.write(Interrupting(a=3, b=4))
    writer.write({"a": 5, "b": 6})
    assert [(r["a"], r["b"]) for r in _read(tmp_path / "d.csv")] == [("1", "2"), ("3", "4"), ("5", "6")]


# ------------------------------------------------------------------------------------------------
# the run engine
# ------------------------------------------------------------------------------------------------

TINY = {
    "name": "tiny",
    "seeds": [0],
    "total_timesteps": 256,
    "eval_episodes": 1,
    "algo": {"policy_kwargs": {"net_arch": [8]}, "n_steps": 64, "batch_size": 64, "n_epochs": 1},
    "envs": ["Pendulum-v1"],
    "estimators": ["hybrid"],
    "reference": "hybrid",
}


class _InterruptMidRecord(BaseCallback):
    """At the second rollout, leaves the logger as an interrupted ``record`` does and raises Ctrl-C."""

    def __init__(self, at_step: int) -> None:
        super().__init__()
        self.at_step = at_step

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.at_step:
            self.logger.name_to_value["rollout/half_recorded"] = 1.0
            raise KeyboardInterrupt
        return True


def test_a_run_interrupted_inside_the_loggers_record_still_saves_its_model_and_log(tmp_path):
    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    (_, config), *_ = load_ablation(path).runs()
    run_dir = tmp_path / "run"
    result = run(config, run_dir, callbacks=[_InterruptMidRecord(at_step=100)])
    assert result.interrupted and result.stopped_by == signal.SIGINT and result.final_return is None
    assert (run_dir / MODEL_FILE).is_file() and not (run_dir / RESULT_FILE).exists()
    rows = _read(run_dir / "progress.csv")
    assert rows and rows[-1]["rollout/half_recorded"] == "1.0"
