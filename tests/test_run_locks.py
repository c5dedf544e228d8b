"""Two grid invocations on one folder: a run being trained is claimed by a lock file, never trained
twice or wiped by the other; a lock left by a dead process is taken over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import hybrid_pg.experiments.runner as runner
from hybrid_pg.experiments.runner import claim_run, release_run


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


VALID_RESULT = {
    "timesteps": 1,
    "train_seconds": 0.1,
    "final_return": 0.0,
    "eval_returns": [0.0],
    "algorithm": "a",
    "env_id": "e",
    "seed": 0,
}


def _fake_run(calls):
    def fake(config, run_dir, quiet=True):
        calls.append(Path(run_dir).name)
        Path(run_dir).mkdir(parents=True)
        (Path(run_dir) / runner.RESULT_FILE).write_text(json.dumps(VALID_RESULT))
        return runner.RunResult(Path(run_dir), 1, 0.1, False, 0.0, [0.0])

    return fake


def test_a_live_lock_keeps_the_run_and_its_directory_away_from_a_second_process(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "run", _fake_run(calls))
    run_dir = tmp_path / "cell_s0_abc"
    run_dir.mkdir()
    (run_dir / "progress.csv").write_text("being written by the other process\n")
    assert claim_run(run_dir)  # the "other process" is this one: alive
    assert runner._run_fresh({"train": {}}, str(run_dir)) is None
    assert calls == [] and (run_dir / "progress.csv").is_file()  # not trained, not wiped
    release_run(run_dir)
    assert runner._run_fresh({"train": {}}, str(run_dir)) == str(run_dir)
    assert calls == ["cell_s0_abc"] and not (tmp_path / "cell_s0_abc.lock").exists()


def test_a_lock_of_a_dead_process_is_taken_over(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "run", _fake_run(calls))
    run_dir = tmp_path / "cell_s1_abc"
    (tmp_path / "cell_s1_abc.lock").write_text(f"{_dead_pid()}@{runner.platform.node()}")
    assert runner._run_fresh({"train": {}}, str(run_dir)) == str(run_dir)
    assert calls == ["cell_s1_abc"] and runner.is_finished(run_dir)


def test_claims_are_exclusive_and_a_foreign_host_counts_as_live(tmp_path):
    run_dir = tmp_path / "r"
    assert claim_run(run_dir) and not claim_run(run_dir)
    assert (tmp_path / "r.lock").read_text() == f"{os.getpid()}@{runner.platform.node()}"
    release_run(run_dir)
    (tmp_path / "r.lock").write_text("1234@some-other-machine")
    assert not claim_run(run_dir)


def test_the_grid_leaves_a_held_run_to_its_owner_and_says_so(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "run", _fake_run(calls))
    monkeypatch.setattr(runner, "load_result", lambda path, label=None: {"key": Path(path).name})
    grid = [("a", {"env": {}, "algo": {}, "train": {"seed": s}}) for s in (0, 1)]
    held = tmp_path / runner.run_key(*grid[1])
    assert claim_run(held)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = runner.run_grid(grid, tmp_path, workers=1, progress=False)
    assert [r["key"] for r in results] == [runner.run_key(*grid[0])]
    assert calls == [runner.run_key(*grid[0])]
    assert any("another live process" in str(w.message) for w in caught)


def test_dry_run_counts_runs_in_training_elsewhere(tmp_path, monkeypatch):
    from hybrid_pg.experiments.runner import in_training_elsewhere, run_key

    grid = [("a", {"env": {}, "algo": {}, "train": {"seed": s}}) for s in (0, 1, 2)]
    assert claim_run(tmp_path / run_key(*grid[1]))  # this live process trains seed 1
    (tmp_path / (run_key(*grid[2]) + ".lock")).write_text(f"{_dead_pid()}@{runner.platform.node()}")  # stale
    assert in_training_elsewhere(grid, tmp_path) == [run_key(*grid[1])]


def test_run_key_seed_reads_back_the_seed_run_key_wrote():
    """The run-name format lives in runner: run_key writes it, run_key_seed reads it back (labels may
    themselves hold underscores and "_s<digits>")."""
    for label, seed in [("pendulum__switching_g__hybrid_sliding_4", 0), ("a_s3_b", 14), ("HalfCheetah-v5__ppo", 7)]:
        key = runner.run_key(label, {"env": {"id": "x"}, "algo": {}, "train": {"seed": seed}})
        assert runner.run_key_seed(key) == seed
    assert runner.run_key_seed("halfcheetah__stationary__ppo_s1_eb2f788") is None  # 7 hex digits: no key
    assert runner.run_key_seed("notes") is None and runner.run_key_seed("x_s2_deadbeef.lock") is None


def test_a_setting_added_later_keeps_run_names_at_its_neutral_value(monkeypatch):
    """KEY_NEUTRAL: a run that leaves a newer setting at the value reproducing the old behaviour keeps
    its old name (finished runs stay reusable); another value, or a changed default, renames it."""
    from hybrid_pg import settings
    from hybrid_pg.experiments.runner import run_key

    config = {"env": {"id": "Pendulum-v1"}, "algo": {"estimator": "reinforce"}, "train": {"seed": 3, "total_timesteps": 10}}
    before = run_key("cell", config)
    monkeypatch.setitem(settings.KEY_NEUTRAL, "new_rule", "none")
    assert run_key("cell", {**config, "algo": {"estimator": "reinforce", "new_rule": "none"}}) == before
    assert run_key("cell", {**config, "algo": {"estimator": "reinforce", "new_rule": "other"}}) != before
