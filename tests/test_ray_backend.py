"""``run_grid(backend="ray")`` / ``hybrid-pg ablate --backend ray``: the same run directories and
tables as the local backend, resumable, a dead worker costs one retry and no finished run; and a
clear exit without Ray. A local Ray instance (2 CPUs) is started once for the module."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hybrid_pg.experiments import ray_backend
from hybrid_pg.experiments.ablate import load_ablation
from hybrid_pg.experiments.cli import main
from hybrid_pg.experiments.runner import RESULT_FILE, _run_fresh, run_grid, run_key

# 1 env x 2 estimators x 2 seeds, 256 Pendulum steps per run (4 updates of 64 samples)
TINY = {
    "name": "tiny",
    "seeds": [0, 1],
    "total_timesteps": 256,
    "eval_episodes": 1,
    "reference": "reinforce",
    "algo": {"policy_kwargs": {"net_arch": [8]}, "n_steps": 64, "batch_size": 64, "n_epochs": 1, "gamma": 0.9, "lambda_warmup": 1},
    "envs": [{"id": "Pendulum-v1", "algo": {"pathwise_source": "critic"}}],
    "estimators": ["hybrid", "reinforce"],
}
# REINFORCE's variance ratio is exactly 1 on every seed: scipy's t-test warns about it
pytestmark = pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")
TABLES = ("table_Pendulum-v1.md", "table_Pendulum-v1.csv", "runs_Pendulum-v1.csv")


@pytest.fixture(scope="module")
def ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def _results(runs_dir: Path):
    """result.json of every run, minus the wall time."""
    out = {}
    for path in sorted(runs_dir.glob(f"*/{RESULT_FILE}")):
        result = json.loads(path.read_text())
        result.pop("train_seconds")
        out[path.parent.name] = result
    return out


def _mtimes(runs_dir: Path):
    return {p.relative_to(runs_dir).as_posix(): p.stat().st_mtime_ns for p in runs_dir.rglob("*") if p.is_file()}


def test_ray_grid_matches_local_and_resumes_across_only(ray, tiny, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "ray"
    status, _, err = _cli(["ablate", str(tiny), "--out", str(local), "--workers", "1", "--quiet"])
    assert status == 0, err

    # the grid over two sessions: the reference first, on Ray; its table has only that estimator
    status, _, err = _cli(["ablate", str(tiny), "--out", str(remote), "--backend", "ray", "--only", "reinforce", "--quiet"])
    assert status == 0, err
    assert sorted(_results(remote / "runs")) == sorted(k for k in _results(local / "runs") if "reinforce" in k)
    assert "| hybrid |" not in (remote / TABLES[0]).read_text()
    first = _mtimes(remote / "runs")

    status, stdout, err = _cli(["ablate", str(tiny), "--out", str(remote), "--backend", "ray"])
    assert status == 0, err
    assert "trained 2 of 4 runs (as Ray tasks)" in stdout
    assert {k: v for k, v in _mtimes(remote / "runs").items() if k in first} == first  # finished runs untouched

    # same run directories (files, result.json: returns and steps) and byte-identical tables
    assert _results(remote / "runs") == _results(local / "runs")
    for run_dir in (local / "runs").iterdir():
        names = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file() and p.parent.name != "tensorboard")
        assert names == sorted(
            p.relative_to(remote / "runs" / run_dir.name).as_posix()
            for p in (remote / "runs" / run_dir.name).rglob("*")
            if p.is_file() and p.parent.name != "tensorboard"
        )
    for name in TABLES:
        assert (remote / name).read_bytes() == (local / name).read_bytes(), name
    assert not list((remote / "runs").glob(".*"))  # no staging folder left


def test_a_killed_worker_and_a_failing_run_lose_no_finished_run(ray, tiny, tmp_path):
    runs = load_ablation(tiny).runs()[:3]
    (crash_label, crash_cfg), (fail_label, fail_cfg) = runs[1], runs[2]
    crash_key, fail_key = run_key(crash_label, crash_cfg), run_key(fail_label, fail_cfg)
    marker = tmp_path / "crashed-once"
    out = tmp_path / "runs"

    def flaky(train, config, key):  # a local function: Ray ships it by value
        if key == crash_key and not os.path.exists(marker):
            Path(marker).touch()
            os._exit(1)  # the worker process dies mid-grid
        if key == fail_key:
            raise RuntimeError("injected failure")
        return ray_backend.train_cell(train, config, key)

    messages = []
    cells = [(label, cfg, run_key(label, cfg)) for label, cfg in runs]
    with pytest.raises(RuntimeError, match=f"1 of 3 runs failed after 2 attempts.*{fail_key}.*injected failure"):
        # one run in flight: the first run finishes before the worker dies
        ray_backend.run_cells(cells, out, _run_fresh, workers=1, max_retries=1, progress=False, task=flaky, log=messages.append)
    assert marker.exists()
    assert sorted(p.parent.name for p in out.glob(f"*/{RESULT_FILE}")) == sorted([cells[0][2], crash_key])
    assert any(crash_key in m and "attempt 1 of 2" in m and "retrying" in m for m in messages), messages
    assert sum(fail_key in m for m in messages) == 2, messages
    assert not list(out.glob(".*"))

    # the next call trains only the failed run
    before = _mtimes(out)
    results = run_grid(runs, out, progress=False, backend="ray")
    assert [r["key"] for r in results] == [c[2] for c in cells]
    assert {k: v for k, v in _mtimes(out).items() if k in before} == before


def test_write_run_dir_replaces_an_unfinished_attempt_and_refuses_escapes(tmp_path):
    run_dir = tmp_path / "key"
    run_dir.mkdir()
    (run_dir / "stale.txt").write_text("left by a killed attempt")
    ray_backend.write_run_dir({"a/b.csv": b"x", RESULT_FILE: b"{}"}, run_dir)
    assert sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()) == ["a/b.csv", RESULT_FILE]
    with pytest.raises(ValueError, match="outside"):
        ray_backend.write_run_dir({"../evil": b"", RESULT_FILE: b"{}"}, tmp_path / "other")
    with pytest.raises(ValueError, match="did not finish"):
        ray_backend.write_run_dir({"progress.csv": b""}, tmp_path / "other")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]  # no staging folder left


def test_write_run_dir_never_replaces_a_finished_run(tmp_path):
    run_dir = tmp_path / "key"
    run_dir.mkdir()
    (run_dir / RESULT_FILE).write_text('{"seed": 0}')
    with pytest.raises(FileExistsError, match="holds a finished run"):
        ray_backend.write_run_dir({"progress.csv": b"new", RESULT_FILE: b'{"seed": 1}'}, run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == [RESULT_FILE] and (run_dir / RESULT_FILE).read_text() == '{"seed": 0}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]  # no staging folder left


def test_a_run_that_a_live_process_holds_is_left_alone(ray, tiny, tmp_path):
    runs = load_ablation(tiny).runs()[:2]
    out = tmp_path / "runs"
    held = out / run_key(*runs[1])
    held.mkdir(parents=True)
    (held / "progress.csv").write_text("being written by the other process\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from hybrid_pg.experiments.runner import claim_run; "
         "assert claim_run(sys.argv[1]); print('held', flush=True); time.sleep(600)", str(held)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.warns(UserWarning, match=r"1 run\(s\) left to another live process that holds their lock"):
            results = run_grid(runs, out, progress=False, backend="ray")
        assert [r["key"] for r in results] == [run_key(*runs[0])]
        # neither trained nor wiped: the other process's files are as it left them
        assert sorted(p.name for p in held.iterdir()) == ["progress.csv"]
        assert (held / "progress.csv").read_text() == "being written by the other process\n"
    finally:
        holder.kill()
        holder.wait()


def test_backend_ray_without_ray_exits_2_saying_how_to_install(monkeypatch, tiny, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    status, stdout, err = _cli(["ablate", str(tiny), "--out", str(tmp_path / "out"), "--backend", "ray"])
    assert status == 2
    assert 'pip install -e ".[ray]"' in err and "Ray is not installed" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ray_backend.RayNotInstalledError, match=r"\.\[ray\]"):
        run_grid([], tmp_path / "grid", backend="ray")
    assert not (tmp_path / "grid").exists()


def test_only_rejects_an_unknown_estimator_and_address_needs_ray(tiny, tmp_path):
    status, _, err = _cli(["ablate", str(tiny), "--out", str(tmp_path), "--only", "hybird", "--dry-run"])
    assert status == 2 and "--only 'hybird' is not an estimator" in err and "hybrid" in err
    status, _, err = _cli(["ablate", str(tiny), "--out", str(tmp_path), "--address", "auto", "--dry-run"])
    assert status == 2 and "--address is for --backend ray" in err
    status, stdout, _ = _cli(["ablate", str(tiny), "--out", str(tmp_path), "--only", "hybrid", "--dry-run"])
    assert status == 0 and "2 runs, 0 done, 2 to train" in stdout and "__reinforce" not in stdout
