"""Every entry point validated like the constructor: ``HybridPG.load(**kwargs)``, ``oracle_env``, the
env of a config (probed by one step before anything is written), budgets and sizes in ablation
files, unreadable CSV files in ``plot``, and the clock tick of a non-stationary env on ``load``."""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml
from stable_baselines3.common.env_util import make_vec_env

from hybrid_pg import HybridPG
from hybrid_pg.experiments.cli import main
from hybrid_pg.experiments.config import run_name
from hybrid_pg_envs import NonStationaryWrapper
from hybrid_pg_envs.clock import vec_state_dicts

KW = dict(n_steps=32, batch_size=32, n_epochs=1, seed=0, policy_kwargs={"net_arch": [8]})
TINY = ["--set", "algo.n_steps=64", "--set", "algo.batch_size=64", "--set", "train.total_timesteps=128", "--set", "train.eval_episodes=1"]


# the env that declares the wrong shape also trips gymnasium's passive checker (a warning)
pytestmark = pytest.mark.filterwarnings("ignore:.*is not within the observation space")


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def _nothing_written(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


# ------------------------------------------------------------------------------------------------
# the library: load and oracle_env
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.zip"
    HybridPG("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=1, seed=0), **KW).save(path)
    return path


@pytest.mark.parametrize("typo, meant", [("learning_rat", "learning_rate"), ("lambda_windw", "lambda_window"), ("n_step", "n_steps")])
def test_load_refuses_an_unknown_keyword_with_a_did_you_mean(saved_model, typo, meant):
    with pytest.raises(ValueError, match=rf"{typo}=.*is not a HybridPG setting or argument of load; did you mean '{meant}'\?"):
        HybridPG.load(saved_model, device="cpu", **{typo: 3})
    # the real names, SB3's own keywords and constructor arguments still pass
    loaded = HybridPG.load(saved_model, device="cpu", learning_rate=1e-4, force_reset=True, seed=1, verbose=0)
    assert loaded.learning_rate == 1e-4 and loaded.settings.learning_rate == 1e-4


@pytest.mark.parametrize("oracle_env", ["hybrid_pg/LQR-v0", "MountainCarContinuous-v0"])
def test_an_oracle_env_of_another_task_is_refused_at_construction(oracle_env):
    with pytest.raises(ValueError, match=r"oracle_env='.*': its observation_space .* is not the training env's"):
        HybridPG("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=1, seed=0), oracle_freq=1, oracle_env=oracle_env, **KW)
    # the same task (another copy of it) is fine
    HybridPG("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=1, seed=0), oracle_freq=1, oracle_env="Pendulum-v1", **KW)


def test_load_into_another_n_envs_keeps_the_new_envs_clock_tick_and_says_so(tmp_path):
    schedule = {"g": {"kind": "linear", "start": 10.0, "rate": 0.001}}

    def env(n_envs):
        # the clock counts global steps: steps_per_tick = n_envs
        return make_vec_env(lambda: NonStationaryWrapper(gym.make("Pendulum-v1"), schedule, steps_per_tick=n_envs), n_envs=n_envs, seed=0)

    model = HybridPG("MlpPolicy", env(2), **KW)
    model.learn(64)
    model.save(tmp_path / "m.zip")
    with pytest.warns(UserWarning, match=r"steps_per_tick=2 per step; the env given to load \(3 envs\) advances by 3, which is kept"):
        loaded = HybridPG.load(tmp_path / "m.zip", env=env(3), device="cpu")
    states = vec_state_dicts(loaded.env)
    assert [s["steps_per_tick"] for s in states] == [3, 3, 3] and [s["clock"] for s in states] == [64, 64, 64]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same n_envs: nothing to say
        HybridPG.load(tmp_path / "m.zip", env=env(2), device="cpu")


# ------------------------------------------------------------------------------------------------
# hybrid-pg train: exit 2 and nothing written
# ------------------------------------------------------------------------------------------------


class _WrongShapeEnv(gym.Env):
    """Declares 3-dimensional observations and returns 4-dimensional ones."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(4, np.float32), {}

    def step(self, action):
        return np.zeros(4, np.float32), 0.0, False, False, {}


gym.register("test_entry_checks/WrongShape-v0", entry_point=_WrongShapeEnv, max_episode_steps=50)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["env.env_kwargs={g: abc}"], r"env.env_kwargs=\{'g': 'abc'\}: the env failed its first reset and step: TypeError"),
        (["env.env_kwargs={render_mode: human}"], r"env.env_kwargs=\{'render_mode': 'human'\}: the env failed its first reset and step"),
        (
            ["env.id=test_entry_checks/WrongShape-v0"],
            r"reset returned an observation of shape \(4,\), but its observation_space has shape \(3,\)",
        ),
        (["train.device=banana"], r"train.device='banana': is not a torch device"),
        (
            ["algo.policy_kwargs={net_arch: [-4]}"],
            r"algo.policy_kwargs.net_arch=\[-4\]: must be a list of layer widths, each an integer >= 1",
        ),
        (["algo.policy_kwargs={net_arch: [0]}"], r"algo.policy_kwargs.net_arch=\[0\]"),
        (["algo.policy_kwargs={net_arch: {pi: [8], vf: [0]}}"], r"algo.policy_kwargs.net_arch.vf=\[0\]"),
    ],
)
def test_bad_values_exit_2_naming_the_key_and_leave_nothing_behind(tmp_path, overrides, message):
    out = tmp_path / "runs"
    argv = ["train", *TINY, "--set", f"output.dir={out}", "--quiet"]
    for text in overrides:
        argv += ["--set", text]
    status, _, err = _run(argv)
    assert status == 2, err
    assert re.search(message, err), err
    assert _nothing_written(out)


def _drift_mass(rate: float):
    return ["--set", f"env.wrappers=[{{name: nonstationary, kwargs: {{schedules: {{m: {{kind: linear, start: 1.0, rate: {rate}}}}}}}}}]"]


def test_a_schedule_is_checked_over_the_whole_run(tmp_path):
    # 4 envs x 64 steps: the clock reaches 64. At rate -0.05 the mass is <= 0 from clock 20 on
    status, _, err = _run(["train", *TINY, *_drift_mass(-0.05), "--set", f"output.dir={tmp_path / 'runs'}", "--quiet"])
    assert status == 2 and _nothing_written(tmp_path / "runs"), err
    assert re.search(
        r"env.wrappers: the schedule of 'm' leaves the env's valid range at clock 2\d \(the run reaches clock 64\).*must be > 0", err
    )
    # at -0.001 it ends at 0.936: valid, and the run trains
    status, _, err = _run(["train", *TINY, *_drift_mass(-0.001), "--out", str(tmp_path / "run"), "--quiet"])
    assert status == 0, err


def test_train_run_names_never_repeat_within_a_second():
    config = {"output": {"name": None}, "env": {"id": "Pendulum-v1"}, "algo": {"algorithm": "hybrid_pg"}, "train": {"seed": 0}}
    names = {run_name(config, "20250101-120000") for _ in range(50)}
    assert len(names) == 50


# ------------------------------------------------------------------------------------------------
# hybrid-pg ablate: bounded sizes
# ------------------------------------------------------------------------------------------------

ABLATION = {
    "name": "bounded",
    "seeds": 1,
    "total_timesteps": 128,
    "algo": {"n_steps": 64, "batch_size": 64},
    "envs": ["Pendulum-v1"],
    "estimators": ["hybrid", "reinforce"],
}


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"algo": {"n_steps": 10**12}},
            r"algo.n_steps=1000000000000: a rollout of 1000000000000 steps x 1 envs x 10 floats needs .* GiB, more than",
        ),
        ({"seeds": 1000000}, r"seeds must be <= 10000 \(seeds per cell\), got 1000000"),
        ({"total_timesteps": 1e300}, r"total_timesteps must be <= 1000000000000 \(env steps per run\)"),
    ],
)
def test_ablation_sizes_are_bounded_with_a_clear_message(tmp_path, change, message):
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump({**ABLATION, **change}))
    status, _, err = _run(["ablate", str(path), "--out", str(tmp_path / "out"), "--dry-run"])
    assert status == 2, err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------
# hybrid-pg plot
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, content", [("diagnostics.csv", bytes(range(256)) * 4), ("diagnostics.csv.gz", b"plain text, not gzip")])
def test_plot_of_a_garbage_diagnostics_csv_exits_2_naming_the_file(tmp_path, name, content):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / name).write_bytes(content)
    status, _, err = _run(["plot", str(run_dir)])
    assert status == 2 and f"{run_dir / name} is not a CSV file" in err, err
    assert not (run_dir / "returns.png").exists()


def test_load_accepts_the_base_classes_arguments_through_a_subclass_with_star_kwargs(tmp_path):
    """SB3's peer suite loads through a subclass whose __init__ takes *args, **kwargs: load must still
    accept HybridPG's own arguments (policy_kwargs) there, and still refuse a typo."""
    from hybrid_pg import HybridPG

    class Wrapped(HybridPG):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)

    model = Wrapped("MlpPolicy", "Pendulum-v1", n_steps=32, batch_size=32, policy_kwargs=dict(net_arch=[8]), device="cpu")
    model.save(tmp_path / "m.zip")
    Wrapped.load(tmp_path / "m.zip", policy_kwargs=dict(net_arch=[8]), device="cpu")
    with pytest.raises(ValueError, match="learning_rat"):
        Wrapped.load(tmp_path / "m.zip", learning_rat=1e-4, device="cpu")
