"""Run directories that many processes share: the lock protocol (pid reuse, other hosts, the
heartbeat), corrupt result files (named, moved aside, retrained, never crashing a report), durable
writes, and adoption of another grid's runs by their content."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import platform
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml

import hybrid_pg.experiments.runner as runner
import hybrid_pg.settings as settings
from hybrid_pg.experiments.ablate import load_ablation
from hybrid_pg.experiments.cli import main
from hybrid_pg.experiments.config import PROVENANCE_KEY, dump_config
from hybrid_pg.experiments.runner import RESULT_FILE, adopt_finished_runs, claim_run, is_finished, release_run, run_key

# 1 env x 2 estimators x 2 seeds, 128 Pendulum steps per run
TINY = {
    "name": "tiny",
    "seeds": [0, 1],
    "total_timesteps": 128,
    "eval_episodes": 1,
    "algo": {"policy_kwargs": {"net_arch": [8]}, "n_steps": 64, "batch_size": 64, "n_epochs": 1},
    "envs": ["Pendulum-v1"],
    "estimators": ["hybrid", "reinforce"],
}


def _result(cfg):
    return {
        "timesteps": cfg["train"]["total_timesteps"],
        "train_seconds": 1.0,
        "final_return": -1000.0,
        "eval_returns": [-1000.0],
        "algorithm": cfg["algo"]["algorithm"],
        "env_id": cfg["env"]["id"],
        "seed": cfg["train"]["seed"],
    }


def _fake_run(calls):
    """runner.run's stand-in: records the run and writes a valid result."""

    def fake(config, run_dir, quiet=True):
        calls.append(Path(run_dir).name)
        Path(run_dir).mkdir(parents=True)
        (Path(run_dir) / RESULT_FILE).write_text(json.dumps(_result(config)))
        dump_config(config, Path(run_dir) / runner.CONFIG_FILE)
        return runner.RunResult(Path(run_dir), 1, 1.0, False, -1000.0, [-1000.0])

    return fake


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def grid(tiny):
    return load_ablation(tiny).runs()


@pytest.fixture
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


# ------------------------------------------------------------------------------------------------
# locks
# ------------------------------------------------------------------------------------------------


def test_a_lock_naming_a_reused_pid_is_stale_and_a_live_older_holder_is_respected(tmp_path, sleeper):
    run_dir = tmp_path / "cell_s0_abc"
    lock = tmp_path / "cell_s0_abc.lock"
    lock.write_text(f"{sleeper.pid}@{platform.node()}")
    # written after the process started: that process may hold it (a version that does not flock)
    assert not claim_run(run_dir)
    # written an hour before the process with that pid started: the pid was reused, the holder is gone
    hour_ago = time.time() - 3600
    os.utime(lock, (hour_ago, hour_ago))
    assert claim_run(run_dir)
    assert lock.read_text() == f"{os.getpid()}@{platform.node()}"
    release_run(run_dir)
    assert not lock.exists()


def test_a_lock_from_another_host_counts_while_it_is_refreshed(tmp_path):
    run_dir = tmp_path / "cell_s0_abc"
    lock = tmp_path / "cell_s0_abc.lock"
    lock.write_text("4321@some-other-machine")
    assert not claim_run(run_dir)  # fresh: its holder there refreshes it every minute
    two_hours_ago = time.time() - 7200
    os.utime(lock, (two_hours_ago, two_hours_ago))
    with pytest.warns(UserWarning, match=r"a lock of pid 4321 on host 'some-other-machine', not refreshed for 72\d\d s"):
        assert claim_run(run_dir)
    release_run(run_dir)


def test_a_held_lock_is_refreshed_so_that_other_hosts_see_it_alive(tmp_path):
    from hybrid_pg.experiments import run_files

    run_dir = tmp_path / "cell_s0_abc"
    assert claim_run(run_dir)
    try:
        lock = tmp_path / "cell_s0_abc.lock"
        long_ago = time.time() - 7200
        os.utime(lock, (long_ago, long_ago))
        run_files.refresh_held_locks()  # what the heartbeat thread does every minute
        assert time.time() - lock.stat().st_mtime < 60
    finally:
        release_run(run_dir)


# ------------------------------------------------------------------------------------------------
# corrupt result files
# ------------------------------------------------------------------------------------------------

CORRUPT = {"truncated": b'{"timesteps": 128, "train_sec', "empty object": b"{}", "zero length": b""}


def test_a_corrupt_result_is_named_moved_aside_kept_and_retrained(tmp_path, grid, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "run", _fake_run(calls))
    runs = grid[:4]
    keys = [run_key(label, cfg) for label, cfg in runs]
    good = tmp_path / keys[0]
    good.mkdir()
    (good / RESULT_FILE).write_text(json.dumps(_result(runs[0][1])))
    dump_config(runs[0][1], good / runner.CONFIG_FILE)
    for key, content in zip(keys[1:], CORRUPT.values()):
        (tmp_path / key).mkdir()
        (tmp_path / key / RESULT_FILE).write_bytes(content)
        (tmp_path / key / "model.zip").write_bytes(b"kept")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = runner.run_grid(runs, tmp_path, workers=1, progress=False)
    messages = "\n".join(str(w.message) for w in caught)
    for key in keys[1:]:
        assert str(tmp_path / key / RESULT_FILE) in messages, messages
    assert "moved aside" in messages and "(kept)" in messages
    assert [r["key"] for r in results] == keys  # nothing crashed; every run reported
    assert sorted(calls) == sorted(keys[1:])  # the corrupt ones trained again, the finished one not
    aside = {p.name.split(".corrupt-")[0]: p for p in tmp_path.iterdir() if ".corrupt-" in p.name}
    assert sorted(aside) == sorted(keys[1:])
    for key, content in zip(keys[1:], CORRUPT.values()):
        assert (aside[key] / RESULT_FILE).read_bytes() == content and (aside[key] / "model.zip").read_bytes() == b"kept"


def test_dry_run_counts_a_corrupt_result_as_unfinished_and_reports_do_not_crash(tmp_path, tiny, grid):
    out = tmp_path / "out"
    key = run_key(*grid[0])
    (out / "runs" / key).mkdir(parents=True)
    (out / "runs" / key / RESULT_FILE).write_text("{}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status, stdout, err = _cli(["ablate", str(tiny), "--out", str(out), "--dry-run"])
        assert status == 0, err
        assert "4 runs, 0 done, 4 to train" in stdout
        assert any(f"{out / 'runs' / key / RESULT_FILE} lacks the field" in str(w.message) for w in caught)
        # a finished run whose config.yaml is garbage: left out of the reports, named
        other = out / "runs" / run_key(*grid[1])
        other.mkdir()
        (other / RESULT_FILE).write_text(json.dumps(_result(grid[1][1])))
        (other / runner.CONFIG_FILE).write_bytes(b"env: [unclosed\n\xff\xfe")
        status, stdout, err = _cli(["ablate", str(tiny), "--out", str(out), "--report-only", "--quiet"])
    assert status == 0, err
    assert any(f"{other / runner.CONFIG_FILE} cannot be read" in str(w.message) for w in caught)
    assert (out / "runs" / key / RESULT_FILE).read_text() == "{}"  # a report moves nothing


@pytest.mark.parametrize(
    "name, content",
    [
        ("progress.csv", b"time/total_timesteps,rollout/ep_rew_mean\n64,\xff\xfe-1.0\n"),  # not UTF-8
        ("progress.csv.gz", gzip.compress(b"time/total_timesteps\n64\n")[:-6]),  # a truncated gzip
        ("evaluations.csv", b"timesteps,mean,std\n64,not a number,0\n"),
        ("evaluations.csv", b"steps,mean\n64,-1.0\n"),  # not the evaluations' columns
        ("evaluations.csv.gz", b"plain text, not gzip"),
    ],
)
def test_a_finished_run_with_an_unreadable_log_is_named_and_left_out_of_the_reports(tmp_path, tiny, grid, name, content):
    """A log the reports read (progress.csv, evaluations.csv, plain or compacted) that cannot be read
    back leaves its run out of the reports with a warning naming the file; the other runs are
    reported and nothing is changed on disk."""
    out = tmp_path / "out"
    good, bad = (out / "runs" / run_key(*grid[i]) for i in (0, 1))
    for (_label, cfg), run_dir in zip(grid[:2], (good, bad)):
        run_dir.mkdir(parents=True)
        (run_dir / RESULT_FILE).write_text(json.dumps(_result(cfg)))
        dump_config(cfg, run_dir / runner.CONFIG_FILE)
        (run_dir / "evaluations.csv").write_text("timesteps,mean,std\n64,-1000.0,0.0\n")
    (bad / "evaluations.csv").unlink()
    (bad / name).write_bytes(content)
    with pytest.raises(runner.CorruptRunError, match=re.escape(str(bad / name)) + " cannot be read"):
        runner.load_result(bad)
    assert runner.load_result(good)["evaluations"][1].tolist() == [-1000.0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status, _, err = _cli(["ablate", str(tiny), "--out", str(out), "--report-only", "--quiet"])
    assert status == 0, err
    assert any(f"{bad / name} cannot be read" in str(w.message) and "left out of the reports" in str(w.message) for w in caught)
    table = (out / "table_Pendulum-v1.md").read_text()
    assert "| hybrid | 1 |" in table  # the readable run of the two
    assert (bad / name).read_bytes() == content


def test_results_are_written_durably(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}") if os.path.isdir("/proc/self/fd") else None)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    runner._write_json_atomically(tmp_path / RESULT_FILE, {"seed": 0})
    assert json.loads((tmp_path / RESULT_FILE).read_text()) == {"seed": 0}
    assert synced == [False, True]  # the file, then the folder that holds the rename
    assert sorted(p.name for p in tmp_path.iterdir()) == [RESULT_FILE]


# ------------------------------------------------------------------------------------------------
# adoption by content
# ------------------------------------------------------------------------------------------------


def _source_run(folder: Path, label, cfg, versions=None) -> Path:
    """A finished run of another grid, as the run engine writes it (config.yaml with provenance, result.json)."""
    run_dir = folder / run_key(label, cfg)
    run_dir.mkdir(parents=True)
    prov = runner.provenance()
    prov["versions"].update(versions or {})
    dump_config({**cfg, PROVENANCE_KEY: prov}, run_dir / runner.CONFIG_FILE)
    (run_dir / RESULT_FILE).write_text(json.dumps(_result(cfg)))
    return run_dir


def test_adoption_compares_content_and_reports_provenance(tmp_path, grid):
    source = tmp_path / "other" / "runs"
    (label0, cfg0), (label1, cfg1), (label2, cfg2), (label3, cfg3) = grid[:4]
    older = _source_run(source, label0, cfg0)  # the same run, written before a later setting existed: adopted
    theirs = yaml.safe_load((older / runner.CONFIG_FILE).read_text())
    for key in getattr(settings, "KEY_NEUTRAL", {}):  # settings added later, at values that reproduce the earlier behaviour
        theirs["algo"].pop(key, None)
    dump_config(theirs, older / runner.CONFIG_FILE)
    tampered = _source_run(source, label1, cfg1)
    theirs = yaml.safe_load((tampered / runner.CONFIG_FILE).read_text())
    theirs["algo"]["n_steps"], theirs["algo"]["estimator"] = 999, "pathwise"
    dump_config(theirs, tampered / runner.CONFIG_FILE)
    mixed = _source_run(source, label2, cfg2)
    (mixed / RESULT_FILE).write_text(json.dumps({**_result(cfg2), "final_return": 12345.0, "env_id": "CartPole-v1"}))
    _source_run(source, label3, cfg3, versions={"hybrid_pg": "0.0.1"})  # older code: adopted, and said so
    out = tmp_path / "here"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adopted = adopt_finished_runs(grid[:4], out, [source])
    messages = [str(w.message) for w in caught]
    assert [p.name for p in adopted] == [run_key(label0, cfg0), run_key(label3, cfg3)]
    assert all(is_finished(p) and (p / runner.ADOPTED_FILE).is_file() for p in adopted)
    assert not (out / run_key(label1, cfg1)).exists() and not (out / run_key(label2, cfg2)).exists()
    assert any(f"{tampered} is not adopted" in m and "config.yaml has algo.estimator='pathwise'" in m for m in messages), messages
    assert any(f"{mixed} is not adopted" in m and "result.json has env_id='CartPole-v1'" in m for m in messages), messages
    assert any("was trained with hybrid_pg 0.0.1 (here " in m for m in messages), messages


def test_adoption_leaves_another_adopters_copy_and_a_held_run_alone(tmp_path, grid, sleeper):
    source = tmp_path / "other" / "runs"
    (label0, cfg0), (label1, cfg1) = grid[:2]
    _source_run(source, label0, cfg0)
    _source_run(source, label1, cfg1)
    out = tmp_path / "here"
    busy = out / (run_key(label0, cfg0) + ".adopting")  # another process copying into its temporary folder now
    busy.mkdir(parents=True)
    (busy / "half-copied").write_text("x")
    lock = out / (run_key(label1, cfg1) + ".lock")
    lock.write_text(f"{sleeper.pid}@{platform.node()}")  # a live process holds this run
    adopted = adopt_finished_runs(grid[:2], out, [source])
    assert [p.name for p in adopted] == [run_key(label0, cfg0)]
    assert (busy / "half-copied").is_file()
    assert lock.read_text() == f"{sleeper.pid}@{platform.node()}" and not (out / run_key(label1, cfg1)).exists()
    assert sorted(p.name for p in out.iterdir()) == sorted([busy.name, lock.name, run_key(label0, cfg0)])


def test_provenance_names_the_package_files_that_differ_from_the_commit(monkeypatch):
    """A run started while the library was being edited ran code no commit holds: provenance lists
    those files (git status of hybrid_pg/ and envs/), and [] for a clean checkout."""
    from hybrid_pg.experiments import runner

    calls = []

    def fake_git(*args):
        calls.append(args)
        return " M hybrid_pg/rollout.py\n?? envs/new_env.py\n" if args[0] == "status" else "abc123\n"

    monkeypatch.setattr(runner, "_git", fake_git)
    p = runner.provenance()
    assert p["git_commit"] == "abc123" and p["git_uncommitted"] == ["envs/new_env.py", "hybrid_pg/rollout.py"]
    assert ("status", "--porcelain", "--", "hybrid_pg", "envs") in calls
    monkeypatch.setattr(runner, "_git", lambda *args: "" if args[0] == "status" else "abc123\n")
    assert runner.provenance()["git_uncommitted"] == []
    monkeypatch.setattr(runner, "_git", lambda *args: None)  # not a checkout (an installed package)
    assert runner.provenance()["git_commit"] is None and runner.provenance()["git_uncommitted"] is None


def test_a_grid_started_from_an_edited_checkout_says_so(monkeypatch):
    from hybrid_pg.experiments import ablate, runner

    monkeypatch.setattr(runner, "_git", lambda *args: " M hybrid_pg/rollout.py\n" if args[0] == "status" else "abc\n")
    with pytest.warns(UserWarning, match=r"3 runs start from a checkout whose package files differ .*hybrid_pg/rollout.py"):
        ablate.warn_if_uncommitted(3)
    monkeypatch.setattr(runner, "_git", lambda *args: "" if args[0] == "status" else "abc\n")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ablate.warn_if_uncommitted(3)  # a clean checkout: silent
