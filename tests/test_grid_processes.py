"""Real processes: ``hybrid-pg train`` twice at once, ``hybrid-pg ablate`` stopped by SIGINT (as a
terminal's Ctrl-C sends it: to the whole process group), SIGTERM and SIGKILL with one and two
workers, and two grids filling one folder. After each: no process of the grid survives, no finished
run is lost, duplicated or overwritten, nothing half-done counts as finished, and a restart trains
each unfinished run exactly once.

Every wait polls for a condition with a generous timeout (the machine may be loaded); nothing
depends on how fast a run trains."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Set, Tuple

import pytest
import yaml

RESULT = "result.json"
# 1 env x 2 estimators x 2 seeds, 256 Pendulum steps per run
GRID = {
    "name": "tiny",
    "seeds": [0, 1],
    "total_timesteps": 256,
    "eval_episodes": 1,
    "algo": {"policy_kwargs": {"net_arch": [8]}, "n_steps": 64, "batch_size": 64, "n_epochs": 1, "lambda_warmup": 1},
    "envs": [{"id": "Pendulum-v1", "algo": {"pathwise_source": "critic"}}],
    "estimators": ["hybrid", "reinforce"],
}
N_RUNS = 4
TIMEOUT = 240.0  # seconds: for a whole grid on a loaded 2-core machine


def _env(extra_path: str = "") -> Dict[str, str]:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), extra_path) if p)
    return env


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _hybrid_pg(args: List[str], logs: Path, extra_path: str = "") -> subprocess.Popen:
    """``hybrid-pg ARGS`` in its own process group (a terminal's job), its output into files under
    ``logs`` (not pipes: a process it leaves behind would hold a pipe open)."""
    logs.mkdir(parents=True, exist_ok=True)
    name = str(len(list(logs.glob("*.out"))))
    with open(logs / f"{name}.out", "w") as out, open(logs / f"{name}.err", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hybrid_pg.experiments.cli", *args],
            stdout=out,
            stderr=err,
            env=_env(extra_path),
            start_new_session=True,
            # a terminal's foreground job: SIGINT at its default, which Python turns into
            # KeyboardInterrupt. Under a non-interactive shell's background job (a CI runner's
            # `cmd &`) SIGINT arrives ignored, and Python then leaves it ignored.
            preexec_fn=_default_sigint,
        )
    proc.logs = (logs / f"{name}.out", logs / f"{name}.err")  # type: ignore[attr-defined]
    return proc


def _finish(proc: subprocess.Popen, what: str, timeout: float = TIMEOUT) -> Tuple[str, str]:
    """Wait for ``proc`` to exit; its (stdout, stderr)."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} did not exit within {timeout:.0f} s")
    out, err = proc.logs  # type: ignore[attr-defined]
    return out.read_text(), err.read_text()


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def _processes() -> Dict[int, tuple]:
    """pid -> (parent pid, state) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def _descendants(pid: int) -> Set[int]:
    table, found, frontier = _processes(), set(), [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, (ppid, _) in table.items() if ppid == parent]
        found.update(children)
        frontier += children
    return found


def _alive(pids: Set[int]) -> Set[int]:
    table = _processes()
    return {p for p in pids if p in table and table[p][1] != "Z"}  # a zombie has exited


def _kill_all(pids: Set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _runs(runs_dir: Path) -> List[Path]:
    return sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []


def _finished(runs_dir: Path) -> Dict[str, int]:
    """Run name -> mtime of its result.json, for every run with a complete, valid one."""
    done = {}
    for run_dir in _runs(runs_dir):
        if (run_dir / RESULT).is_file():
            result = json.loads((run_dir / RESULT).read_text())  # never half-written
            assert {"seed", "env_id", "final_return"} <= set(result), run_dir
            assert (run_dir / "model.zip").is_file() and (run_dir / "config.yaml").is_file(), run_dir
            done[run_dir.name] = (run_dir / RESULT).stat().st_mtime_ns
    return done


def _in_training(runs_dir: Path) -> List[Path]:
    return [d for d in _runs(runs_dir) if (d / "config.yaml").is_file() and not (d / RESULT).exists()]


def _trained_count(stdout: str) -> int:
    match = re.search(r"trained (\d+) of (\d+) runs", stdout)
    assert match and int(match.group(2)) == N_RUNS, stdout
    return int(match.group(1))


@pytest.fixture
def grid_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(GRID))
    return path


def _stop_grid_midway(grid_file: Path, out: Path, workers: int, how: str):
    """Start the grid, stop it while ``workers`` runs train (after one finished, for one worker),
    and return (exit status, stderr, the grid's processes, finished runs)."""
    grid = _hybrid_pg(["ablate", str(grid_file), "--out", str(out), "--workers", str(workers), "--quiet"], out.parent / "logs")
    runs_dir = out / "runs"
    family: Set[int] = set()
    try:
        if workers == 1:
            _wait_for(lambda: _finished(runs_dir) and _in_training(runs_dir), "a run to finish and the next to start")
        else:
            _wait_for(lambda: len(_in_training(runs_dir)) >= workers, f"{workers} runs in training at once")
        family = _descendants(grid.pid)
        if how == "SIGKILL":
            grid.kill()
        elif how == "SIGTERM":
            grid.terminate()
        else:  # Ctrl-C in a terminal: SIGINT to the whole foreground process group, once or twice
            os.killpg(grid.pid, signal.SIGINT)
            if how == "SIGINT twice":
                time.sleep(0.3)
                os.killpg(grid.pid, signal.SIGINT)
        _, err = _finish(grid, f"the grid, after {how},")
        _wait_for(lambda: not _alive(family), f"every process of the grid to end after {how} (left: {_alive(family)})", timeout=60)
        return grid.returncode, err, family, _finished(runs_dir)
    finally:
        _kill_all(_alive(family | {grid.pid}))  # on a failure: leave nothing running
        grid.wait()


def _restart_trains_the_rest_once(grid_file: Path, out: Path, finished: Dict[str, int]) -> None:
    status, stdout, err = _restart(grid_file, out)
    assert status == 0, err
    assert _trained_count(stdout) == N_RUNS - len(finished)
    after = _finished(out / "runs")
    assert len(after) == N_RUNS and len(_runs(out / "runs")) == N_RUNS  # none lost, none duplicated
    assert {k: after[k] for k in finished} == finished  # no finished run retrained or overwritten


def _restart(grid_file: Path, out: Path):
    proc = _hybrid_pg(["ablate", str(grid_file), "--out", str(out), "--workers", "2"], out.parent / "logs")
    try:
        stdout, err = _finish(proc, "the restarted grid")
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, stdout, err


@pytest.mark.parametrize(
    "how, workers",
    [
        ("SIGINT", 1),
        ("SIGKILL", 2),
        pytest.param("SIGINT", 2, marks=pytest.mark.slow),
        pytest.param("SIGKILL", 1, marks=pytest.mark.slow),  # a guard: this case already held
    ],
)
def test_a_stopped_grid_leaves_no_process_and_a_restart_trains_each_unfinished_run_once(tmp_path, grid_file, how, workers):
    out = tmp_path / "out"
    status, err, _, finished = _stop_grid_midway(grid_file, out, workers, how)
    if how == "SIGINT":
        assert status == 130, err
        assert "Traceback" not in err, err
    else:
        assert status == -signal.SIGKILL
    # nothing half-done counts as finished, and no run started after the stop
    assert len(_runs(out / "runs")) <= len(finished) + workers
    _restart_trains_the_rest_once(grid_file, out, finished)


@pytest.mark.parametrize("how, status", [("SIGTERM", 143), ("SIGINT twice", 130)])
def test_sigterm_and_a_second_ctrl_c_stop_a_parallel_grid_with_its_workers(tmp_path, grid_file, how, status):
    out = tmp_path / "out"
    returncode, err, family, finished = _stop_grid_midway(grid_file, out, 2, how)
    assert returncode == status, err
    assert len(family) >= 2  # the workers were there, and are gone (checked by _stop_grid_midway)
    assert len(_runs(out / "runs")) <= len(finished) + 2


def test_two_grids_on_one_folder_train_each_run_once(tmp_path, grid_file):
    out = tmp_path / "out"
    grids = [_hybrid_pg(["ablate", str(grid_file), "--out", str(out), "--workers", "1"], tmp_path / "logs") for _ in range(2)]
    outputs = []
    try:
        for grid in grids:
            outputs.append(_finish(grid, "a grid"))
    finally:
        for grid in grids:
            grid.kill()
            grid.wait()
    assert [g.returncode for g in grids] == [0, 0], [err for _, err in outputs]
    trained = [_trained_count(stdout) for stdout, _ in outputs]
    assert sum(trained) == N_RUNS, outputs  # each run trained by exactly one of them
    assert len(_finished(out / "runs")) == N_RUNS and len(_runs(out / "runs")) == N_RUNS


SLOW_ENV = '''
import time

import gymnasium as gym
from gymnasium.envs.classic_control.pendulum import PendulumEnv


class SlowPendulum(PendulumEnv):
    """Pendulum that takes 3 s to build: two runs started together overlap between their checks and their writes."""

    def __init__(self, **kwargs):
        time.sleep(3.0)
        super().__init__(**kwargs)


gym.register("SlowPendulum-v0", entry_point=SlowPendulum, max_episode_steps=200)
'''


def test_two_train_runs_started_together_never_share_a_run_directory(tmp_path):
    (tmp_path / "slow_env.py").write_text(SLOW_ENV)
    run_dir = tmp_path / "same"
    common = ["--set", "env.id=slow_env:SlowPendulum-v0", "--set", "env.n_envs=1", "--set", "algo.n_steps=64"]
    common += ["--set", "algo.batch_size=64", "--set", "train.total_timesteps=128", "--set", "train.eval_episodes=1"]
    procs = [
        _hybrid_pg(["train", *common, "--set", f"train.seed={seed}", "--out", str(run_dir), "--quiet"], tmp_path / "logs", str(tmp_path))
        for seed in (0, 1)
    ]
    try:
        outputs = [_finish(proc, "a train run") for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    statuses = sorted(proc.returncode for proc in procs)
    assert statuses == [0, 2], outputs  # one trains, the other is refused
    loser = outputs[[proc.returncode for proc in procs].index(2)][1]
    assert "refusing" in loser and str(run_dir) in loser, loser
    # the run directory is one run's, from every file
    result = json.loads((run_dir / RESULT).read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["train"]["seed"] == result["seed"]
    with (run_dir / "diagnostics.csv").open(newline="") as fh:
        assert [int(row["timesteps"]) for row in csv.DictReader(fh)] == [64, 128]  # one run's rows, not two interleaved
