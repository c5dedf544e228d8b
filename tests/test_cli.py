"""The hybrid-pg command line: config validation, a tiny training run, plots, the console script."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml
from stable_baselines3.common.env_util import make_vec_env

from hybrid_pg import HybridPG
from hybrid_pg.experiments.cli import main
from hybrid_pg.experiments.config import (
    ConfigError,
    apply_overrides,
    check_env,
    default_config_path,
    import_env_plugins,
    load_config,
    parse_override,
    read_config_file,
    resolve_config,
)
from hybrid_pg.experiments.csv_callbacks import WideCSVWriter, read_csv_columns
from hybrid_pg.experiments.plots import plot_lambda, plot_returns

REPO = Path(__file__).resolve().parents[1]

# 2 envs x 128 steps = 256-sample rollouts, 2 updates; warmup 1 so the second update mixes in the pathwise term
TINY = [
    "--set", "env.n_envs=2",
    "--set", "algo.n_steps=128",
    "--set", "algo.batch_size=64",
    "--set", "algo.n_epochs=2",
    "--set", "algo.lambda_warmup=1",
    "--set", "algo.policy_kwargs={net_arch: [16, 16]}",
    "--set", "train.total_timesteps=512",
    "--set", "train.eval_freq=256",
    "--set", "train.eval_episodes=1",
    "--set", "train.progress_bar=false",
]  # fmt: skip


def _run(argv):
    """main(argv) -> (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def _read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    status, out, err = _run(["train", *TINY, "--out", str(run_dir), "--quiet"])
    assert status == 0, err
    return run_dir, out


# ------------------------------------------------------------------------------------------------
# a finished run
# ------------------------------------------------------------------------------------------------


def test_train_writes_the_run_directory(finished_run):
    run_dir, out = finished_run
    for name in ("model.zip", "config.yaml", "diagnostics.csv", "evaluations.csv", "progress.csv", "returns.png", "lambda.png"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "vecnormalize.pkl").exists()
    assert out.strip() == str(run_dir)  # --quiet prints the run directory only


def test_diagnostics_has_one_row_per_update(finished_run):
    run_dir, _ = finished_run
    rows = _read_rows(run_dir / "diagnostics.csv")
    assert [int(r["timesteps"]) for r in rows] == [256, 512]
    assert [int(r["update"]) for r in rows] == [1, 2]
    for key in ("rollout/ep_rew_mean", "hybrid/lambda", "hybrid/lambda_batch", "hybrid/var_path", "hybrid/var_score", "hybrid/cov"):
        assert key in rows[0], key
        assert np.isfinite(float(rows[1][key])), key
    assert float(rows[0]["hybrid/lambda"]) == 0.0  # warmup update
    evals = read_csv_columns(run_dir / "evaluations.csv")
    assert list(evals) == ["timesteps", "mean", "std"]
    assert evals["timesteps"].tolist() == [0, 256, 512]
    assert np.all(np.isfinite(evals["mean"]))


def _load_and_predict(run_dir, **load_kwargs):
    model = HybridPG.load(run_dir / "model.zip", device="cpu", **load_kwargs)
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == env.action_space.shape
    assert model.n_steps == 128 and model.lambda_warmup == 1


def test_saved_model_loads_and_predicts(finished_run):
    _load_and_predict(finished_run[0], env=make_vec_env("Pendulum-v1", n_envs=1, seed=0))


def test_saved_model_loads_without_an_env(finished_run):
    _load_and_predict(finished_run[0])


def test_config_yaml_is_resolved_and_reloadable(finished_run):
    run_dir, _ = finished_run
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert written["train"]["total_timesteps"] == 512
    assert written["algo"]["n_steps"] == 128
    assert written["algo"]["policy_kwargs"] == {"net_arch": [16, 16]}
    assert written["algo"]["clip_range"] == 0.2  # a HybridPG default, filled in
    assert written["output"] == {"dir": "runs", "name": None}
    provenance = written.pop("provenance")
    assert set(provenance["versions"]) == {"hybrid_pg", "stable_baselines3", "gymnasium", "torch", "numpy", "python"}
    assert "git_commit" in provenance and "git_uncommitted" in provenance
    assert load_config(run_dir / "config.yaml", check_environment=False) == written


def test_result_json_is_written_last_and_names_the_final_return(finished_run):
    run_dir, _ = finished_run
    result = json.loads((run_dir / "result.json").read_text())
    evals = read_csv_columns(run_dir / "evaluations.csv")
    assert result["final_return"] == pytest.approx(evals["mean"][-1])
    assert result["timesteps"] == 512 and result["algorithm"] == "hybrid_pg" and result["seed"] == 0
    newest = max(p.stat().st_mtime_ns for p in run_dir.iterdir() if p.is_file())
    assert (run_dir / "result.json").stat().st_mtime_ns == newest
    assert not list(run_dir.glob("*.tmp"))


def test_refuses_to_overwrite_a_run_directory(finished_run):
    run_dir, _ = finished_run
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    status, _, err = _run(["train", *TINY, "--out", str(run_dir)])
    assert status == 2
    assert "already exists" in err and str(run_dir) in err
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before


def test_plot_redraws_a_run(finished_run, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(finished_run[0], run_dir)
    for name in ("returns.png", "lambda.png"):
        (run_dir / name).unlink()
    status, out, err = _run(["plot", str(run_dir)])
    assert status == 0, err
    assert (run_dir / "returns.png").stat().st_size > 0 and (run_dir / "lambda.png").stat().st_size > 0
    assert str(run_dir / "returns.png") in out


def test_plot_overlays_runs(finished_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(finished_run[0], other)
    png = tmp_path / "plots" / "overlay.png"
    status, _, err = _run(["plot", str(finished_run[0]), str(other), "--out", str(png)])
    assert status == 0, err
    assert png.stat().st_size > 0
    status, _, err = _run(["plot", str(finished_run[0]), str(other)])
    assert status == 2 and "--out" in err


def test_train_run_name_progress_and_vecnormalize(tmp_path):
    """No --out: {output.dir}/{env id}_{estimator}_s{seed}_{timestamp}-{random hex}; non-quiet prints per update."""
    argv = ["train", *TINY, "--set", f"output.dir={tmp_path}", "--set", "algo.estimator=reinforce"]
    argv += ["--set", "train.seed=3", "--set", "env.normalize=true", "--set", "train.eval_freq=0"]
    status, out, err = _run(argv)
    assert status == 0, err
    (run_dir,) = tmp_path.iterdir()
    assert re.fullmatch(r"Pendulum-v1_reinforce_s3_\d{8}-\d{6}-[0-9a-f]{8}", run_dir.name), run_dir.name
    assert out.splitlines()[-1] == str(run_dir)
    assert len(re.findall(r"^update +\d+ \| steps", out, flags=re.M)) == 2
    assert len(re.findall(r"^update +\d+ \| steps .* \| std \d+\.\d{3} \| lam ", out, flags=re.M)) == 2  # the policy's std, every update
    assert (run_dir / "vecnormalize.pkl").is_file()
    # eval_freq 0: one evaluation, at the end (result.json's final return)
    assert read_csv_columns(run_dir / "evaluations.csv")["timesteps"].tolist() == [512]
    rows = _read_rows(run_dir / "diagnostics.csv")
    assert {float(r["hybrid/lambda"]) for r in rows} == {0.0}
    assert (run_dir / "lambda.png").is_file() and (run_dir / "returns.png").is_file()


# ------------------------------------------------------------------------------------------------
# help and config errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["plot", "--help"], ["--version"]])
def test_help_exits_zero(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "hybrid-pg" in capsys.readouterr().out


def test_no_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("training started despite an invalid config")

    monkeypatch.setattr(HybridPG, "learn", refuse)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["trian.seed=1"], ["trian is not a config section", "'train'"]),
        (["algo.n_step=128"], ["algo.n_step=128: is not a HybridPG setting", "'n_steps'"]),
        (["env.n_env=2"], ["env.n_env", "'n_envs'"]),
        (["train.total_timesteps=abc"], ["train.total_timesteps='abc': must be an integer"]),
        (["train.total_timesteps=0"], ["train.total_timesteps=0: must be >= 1"]),
        (["env.normalize=maybe"], ["env.normalize='maybe': must be true or false"]),
        (["algo.gamma=high"], ["algo.gamma='high': must be a number"]),
        (["algo.batch_size=[64]"], ["algo.batch_size=[64]: ", "integer"]),
        (["algo.algorithm=sac"], ["algo.algorithm='sac': must be one of", "'a2c'"]),
        (["algo.q_coeff=1"], ["algo.q_coeff", "'q_coef'"]),
        (["algo.gamma=2"], ["algo.gamma=2"]),  # HybridPG's own range check, prefixed with the section
        (["algo.policy=MlpPolicyy"], ["algo.policy", "'MlpPolicy'"]),
        (["algo.seed=1"], ["algo.seed", "train.seed"]),
        (["algo.policy_kwargs={activation_fn: tanhh}"], ["algo.policy_kwargs.activation_fn", "'Tanh'"]),
        (["env.wrappers=[{name: TimeLimit}]"], ["env.wrappers[0].name", "nonstationary"]),
        (["env.wrappers=[{name: nonstationary, kwargs: {schedules: {g: {kind: sinus}}}}]"], ["env.wrappers[0]", "sinus"]),
        (["env.wrappers=[{name: nonstationary, oops: 1}]"], ["env.wrappers[0].oops is not a known key", "'kwargs'"]),
        (["env.vec_env=subprocess"], ["env.vec_env='subprocess': must be one of", "'subproc'"]),
        (["env.id=Pendulum-v9"], ["env.id='Pendulum-v9' is not a registered gymnasium environment"]),
        (["env.id=NoSuchEnv-v0"], ["env.id='NoSuchEnv-v0'"]),
        (["env.id=CartPole-v1"], ["env.id='CartPole-v1'", "Box"]),
        (["env.env_kwargs={no_such_kwarg: 1}"], ["env.env_kwargs"]),
        (["train.seed"], ["--set 'train.seed'", "KEY=VALUE"]),
        (["algo=3"], ["algo must be a mapping"]),
    ],
)
def test_config_errors_name_the_key_before_training(overrides, expected, tmp_path, no_training):
    argv = ["train", *TINY, "--set", f"output.dir={tmp_path / 'runs'}"]
    for item in overrides:
        argv += ["--set", item]
    status, _, err = _run(argv)
    assert status == 2
    assert err.startswith("hybrid-pg: error: ")
    for text in expected:
        assert text in err, (text, err)
    assert not (tmp_path / "runs").exists()  # nothing written


def test_config_file_errors(tmp_path, no_training):
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: {id: Pendulum-v1}\nenvironment: {}\ntrain: {total_timesteps: 10}\n")
    status, _, err = _run(["train", str(bad)])
    assert status == 2 and "environment is not a config section" in err and "'env'" in err

    dup = tmp_path / "dup.yaml"
    dup.write_text("env: {id: Pendulum-v1}\ntrain: {total_timesteps: 10}\ntrain: {seed: 1}\n")
    status, _, err = _run(["train", str(dup)])
    assert status == 2 and "duplicate key 'train'" in err

    status, _, err = _run(["train", str(tmp_path / "missing.yaml")])
    assert status == 2 and "config file not found" in err

    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    status, _, err = _run(["train", str(empty)])
    assert status == 2 and "env.id is required" in err


# ------------------------------------------------------------------------------------------------
# config internals
# ------------------------------------------------------------------------------------------------


def test_yaml_loader_stays_safe(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("env: !!python/object/apply:os.system ['echo pwned']\ntrain: {total_timesteps: 10}\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        read_config_file(bad)


def test_baseline_algorithms_share_the_schema_and_keep_sb3_defaults():
    config = resolve_config({"env": {"id": "Pendulum-v1"}, "train": {"total_timesteps": 64}, "algo": {"algorithm": "a2c", "n_steps": 8}})
    assert config["algo"]["algorithm"] == "a2c" and config["algo"]["n_steps"] == 8
    assert config["algo"]["learning_rate"] == 7e-4  # SB3's A2C default, not HybridPG's
    with pytest.raises(ConfigError, match=r"algo.gamma=2"):
        resolve_config({"env": {"id": "Pendulum-v1"}, "train": {"total_timesteps": 64}, "algo": {"algorithm": "ppo", "gamma": 2}})
    with pytest.raises(ConfigError, match=r"algo.lambda_window is not a setting of SB3's PPO"):
        resolve_config({"env": {"id": "Pendulum-v1"}, "train": {"total_timesteps": 64}, "algo": {"algorithm": "ppo", "lambda_window": 2}})


def test_overrides_parse_yaml_values_into_dotted_keys():
    assert parse_override("algo.learning_rate=1e-3") == (["algo", "learning_rate"], 1e-3)
    assert parse_override("train.total_timesteps=40_000") == (["train", "total_timesteps"], 40000)
    assert parse_override("output.name=") == (["output", "name"], None)
    assert parse_override("algo.lambda_bounds=[0, 0.9]")[1] == [0, 0.9]
    config = apply_overrides({"algo": {"policy_kwargs": None}}, ["algo.policy_kwargs.net_arch=[8]", "train.seed=2"])
    assert config == {"algo": {"policy_kwargs": {"net_arch": [8]}}, "train": {"seed": 2}}
    with pytest.raises(ConfigError, match=r"algo.n_steps is 5, not a mapping"):
        apply_overrides({"algo": {"n_steps": 5}}, ["algo.n_steps.x=1"])
    with pytest.raises(ConfigError, match="not a valid dotted key"):
        parse_override("algo..x=1")


def test_resolve_fills_defaults_and_normalises_numbers():
    config = resolve_config({"env": {"id": "Pendulum-v1"}, "train": {"total_timesteps": 1e4}, "algo": {"gamma": 1}})
    assert config["train"] == {
        "total_timesteps": 10000, "seed": 0, "eval_freq": 0, "eval_episodes": 5, "progress_bar": False, "torch_threads": 1, "device": "cpu"
    }  # fmt: skip
    assert isinstance(config["train"]["total_timesteps"], int)
    assert config["env"] == {"id": "Pendulum-v1", "n_envs": 1, "vec_env": "dummy", "normalize": False, "env_kwargs": {}, "wrappers": []}
    assert config["algo"]["gamma"] == 1.0 and isinstance(config["algo"]["gamma"], float)
    assert config["algo"]["policy"] == "MlpPolicy" and config["algo"]["lambda_bounds"] == [0.0, 1.0]
    assert config["algo"]["algorithm"] == "hybrid_pg"
    for reserved in ("env", "seed", "verbose", "tensorboard_log", "_init_setup_model"):
        assert reserved not in config["algo"]
    assert list(config) == ["env", "algo", "train", "output"]


def test_default_config_is_packaged_and_shows_the_suggested_run():
    # one copy: the repository's configs/default.yaml (the README's quick start) is the packaged file
    assert (REPO / "configs" / "default.yaml").resolve() == default_config_path().resolve()
    assert "hybrid-pg train" in (REPO / "README.md").read_text() and "configs/default.yaml" in (REPO / "README.md").read_text()
    config = load_config()  # the packaged default, env checked
    assert config["env"]["id"] == "Pendulum-v1" and config["env"]["n_envs"] == 4
    assert config["algo"]["estimator"] == "hybrid" and config["algo"]["pathwise_source"] == "critic"
    assert config["algo"]["learning_rate"] == 1e-3
    assert config["train"]["eval_freq"] == 10_000


@pytest.mark.parametrize(
    "name", ["pendulum_model.yaml", "lqr.yaml", "switching_pendulum.yaml", "drifting_goal.yaml", "coupled_bandit.yaml"]
)
def test_shipped_env_configs(name):
    config = resolve_config(read_config_file(REPO / "configs" / name))
    import_env_plugins()
    check_env(config)


# ------------------------------------------------------------------------------------------------
# diagnostics and plots on their own
# ------------------------------------------------------------------------------------------------


def test_wide_csv_writer_widens_for_late_keys(tmp_path):
    writer = WideCSVWriter(tmp_path / "d.csv", ["step"])
    writer.write({"step": 1, "a": 0.5})
    writer.write({"step": 2, "a": 0.25, "b": float("nan")})
    writer.write({"step": 3, "b": 2.0})
    rows = _read_rows(tmp_path / "d.csv")
    assert list(rows[0]) == ["step", "a", "b"]
    assert rows == [
        {"step": "1", "a": "0.5", "b": ""},
        {"step": "2", "a": "0.25", "b": "nan"},
        {"step": "3", "a": "", "b": "2.0"},
    ]
    columns = read_csv_columns(tmp_path / "d.csv")
    assert np.isnan(columns["a"][2]) and columns["b"][2] == 2.0


def test_plots_tolerate_missing_columns(tmp_path):
    run = tmp_path / "reinforce_run"
    run.mkdir()
    (run / "diagnostics.csv").write_text(
        "update,timesteps,rollout/ep_rew_mean,hybrid/lambda,hybrid/var_path,hybrid/var_score\n"
        "1,256,-1200,0.0,1e-3,2e-2\n2,512,,0.0,2e-3,1e-2\n"
    )
    assert plot_lambda(run, tmp_path / "lam.png").stat().st_size > 0
    assert plot_returns([run], tmp_path / "ret.png").stat().st_size > 0
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "diagnostics.csv").write_text("update,timesteps\n1,256\n")
    assert plot_lambda(bare, tmp_path / "lam2.png").stat().st_size > 0
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        plot_returns([tmp_path], tmp_path / "x.png")


# ------------------------------------------------------------------------------------------------
# the console script
# ------------------------------------------------------------------------------------------------


def test_console_script_help():
    script = shutil.which("hybrid-pg", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    assert script, "no hybrid-pg console script: reinstall the project (pip install -e .) to create it"
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "plot" in result.stdout


def test_train_with_a_nonstationary_wrapper_logs_the_drifting_parameter(tmp_path):
    run_dir = tmp_path / "drift"
    schedule = "env.wrappers=[{name: nonstationary, kwargs: {schedules: {g: {kind: linear, start: 10.0, end: 12.0, duration: 512}}}}]"
    status, _, err = _run(["train", *TINY, "--set", schedule, "--out", str(run_dir), "--quiet"])
    assert status == 0, err
    progress = (run_dir / "progress.csv").read_text().splitlines()
    header = progress[0].split(",")
    assert "env/g" in header
    values = [float(row.split(",")[header.index("env/g")]) for row in progress[1:] if row.split(",")[header.index("env/g")]]
    assert values and 10.0 < values[-1] <= 12.0
