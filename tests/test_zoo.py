"""``python -m hybrid_pg.experiments.zoo``: HybridPG registered with the RL Zoo (skipped without rl_zoo3)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

rl_zoo3 = pytest.importorskip("rl_zoo3")
optuna = pytest.importorskip("optuna")

import hybrid_pg.experiments.zoo as zoo  # noqa: E402
from hybrid_pg import HybridPG  # noqa: E402
from hybrid_pg.experiments.zoo import (  # noqa: E402
    ALGO_NAME,
    DEFAULT_ZOO_CONFIG,
    convert_hybrid_pg_params,
    main,
    register,
    sample_hybrid_pg_params,
    zoo_argv,
)

REPO = Path(__file__).resolve().parents[1]
ZOO_CONFIG = REPO / "configs" / "zoo" / "hybrid_pg.yml"


def _quiet_main(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def test_register_fills_the_zoo_tables():
    import rl_zoo3.hyperparams_opt as hyperparams_opt

    register()
    register()  # idempotent
    assert rl_zoo3.ALGOS[ALGO_NAME] is HybridPG
    assert hyperparams_opt.HYPERPARAMS_SAMPLER[ALGO_NAME] is sample_hybrid_pg_params
    if hasattr(hyperparams_opt, "HYPERPARAMS_CONVERTER"):
        assert hyperparams_opt.HYPERPARAMS_CONVERTER[ALGO_NAME] is convert_hybrid_pg_params


def test_sampled_hyperparameters_build_a_model():
    import gymnasium as gym
    from torch import nn

    trial = optuna.trial.FixedTrial(
        {
            "n_steps_pow": 6,
            "batch_size_pow": 7,
            "one_minus_gamma": 0.01,
            "one_minus_gae_lambda": 0.05,
            "learning_rate": 3e-4,
            "clip_range": 0.2,
            "n_epochs": 5,
            "max_grad_norm": 0.5,
            "net_arch": "tiny",
            "activation_fn": "relu",
            "lambda_window": 8,
            "bias_correction": False,
        }
    )
    params = sample_hybrid_pg_params(trial, n_actions=1, n_envs=1, additional_args={})
    assert params["n_steps"] == 64 and params["batch_size"] == 64  # 2**7 capped at the 64-sample rollout
    assert params["gamma"] == pytest.approx(0.99) and params["gae_lambda"] == pytest.approx(0.95)
    assert params["policy_kwargs"] == {"net_arch": {"pi": [64], "vf": [64]}, "advantage_net_arch": [64], "activation_fn": nn.ReLU}
    assert params["lambda_window"] == 8 and params["bias_correction"] is False
    model = HybridPG("MlpPolicy", gym.make("Pendulum-v1"), device="cpu", **params)
    assert model.n_steps == 64 and model.policy.advantage_net_arch == [64]


def test_train_then_enjoy_through_the_zoo(tmp_path):
    """No -conf: the packaged hyperparameters; one torch thread by default."""
    logs = tmp_path / "logs"
    status, out, err = _quiet_main(
        [
            "train", "--algo", ALGO_NAME, "--env", "Pendulum-v1",
            "-n", "256", "-params", "n_envs:1", "n_steps:128", "n_epochs:1",
            "--eval-freq", "-1", "-f", str(logs), "--seed", "0", "--verbose", "0",
        ]
    )  # fmt: skip
    assert status == 0, err
    run_dir = logs / ALGO_NAME / "Pendulum-v1_1"
    # the zoo saves the hyperparameters it used as a YAML OrderedDict (a file this test just wrote)
    saved = dict(yaml.unsafe_load((run_dir / "Pendulum-v1" / "config.yml").read_text()))
    assert saved["estimator"] == "hybrid" and saved["n_steps"] == 128 and saved["n_envs"] == 1
    args = dict(yaml.unsafe_load((run_dir / "Pendulum-v1" / "args.yml").read_text()))
    assert args["num_threads"] == 1 and args["conf_file"] == str(DEFAULT_ZOO_CONFIG)
    model = HybridPG.load(run_dir / "Pendulum-v1.zip", device="cpu")
    assert model.num_timesteps == 256 and model.estimator == "hybrid"
    status, out, err = _quiet_main(
        ["enjoy", "--algo", ALGO_NAME, "--env", "Pendulum-v1", "-f", str(logs), "-n", "200", "--no-render", "--deterministic"]
    )
    assert status == 0, err
    assert "Episode Reward" in out or "Mean reward" in out


def test_two_trial_optimize_on_a_tiny_budget(tmp_path):
    status, out, err = _quiet_main(
        [
            "train", "--algo", ALGO_NAME, "--env", "Pendulum-v1", "-n", "64", "-optimize",
            "--n-trials", "2", "--n-jobs", "1", "--sampler", "random", "--pruner", "none",
            "--n-evaluations", "1", "--eval-episodes", "1", "--no-optim-plots",
            "-params", "n_envs:1", "n_epochs:1",
            "-f", str(tmp_path / "logs"), "--seed", "0", "--verbose", "0",
        ]
    )  # fmt: skip
    assert status == 0, err
    reports = list((tmp_path / "logs" / ALGO_NAME).rglob("report_Pendulum-v1_2-trials-*.csv"))
    assert len(reports) == 1, list((tmp_path / "logs").rglob("*"))


def test_default_arguments_and_their_overrides():
    assert zoo_argv("train", ["--env", "X"]) == ["--env", "X", "--num-threads", "1", "-conf", str(DEFAULT_ZOO_CONFIG)]
    assert zoo_argv("train", ["--num-threads", "4", "--conf-file", "my.yml"]) == ["--num-threads", "4", "--conf-file", "my.yml"]
    assert zoo_argv("train", ["--num-threads=-1", "-conf", "a.yml"]) == ["--num-threads=-1", "-conf", "a.yml"]
    assert zoo_argv("enjoy", ["-f", "logs"]) == ["-f", "logs", "--num-threads", "1"]  # enjoy takes no -conf


def test_the_zoo_hyperparameters_are_packaged():
    import fnmatch

    import tomllib

    assert DEFAULT_ZOO_CONFIG.is_file() and ZOO_CONFIG.resolve() == DEFAULT_ZOO_CONFIG
    assert {"Pendulum-v1", "hybrid_pg/Pendulum-v0"} <= set(yaml.safe_load(DEFAULT_ZOO_CONFIG.read_text()))
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["hybrid_pg.experiments"]
    relative = DEFAULT_ZOO_CONFIG.relative_to(REPO / "hybrid_pg" / "experiments").as_posix()
    assert any(fnmatch.fnmatch(relative, p) for p in patterns), (relative, patterns)
    extra = pyproject["project"]["optional-dependencies"]["zoo"]
    assert any(req.startswith("requests") for req in extra)  # rl_zoo3's enjoy imports it undeclared


def test_a_missing_zoo_dependency_is_a_message_not_a_traceback(monkeypatch):
    def missing(command):
        raise ModuleNotFoundError("No module named 'requests'", name="requests")

    monkeypatch.setattr(zoo, "_entry_point", missing)
    status, _, err = _quiet_main(["enjoy", "--algo", ALGO_NAME, "--env", "Pendulum-v1"])
    assert status == 2 and "'requests'" in err and 'pip install "hybrid-pg[zoo]"' in err and "Traceback" not in err


def test_usage_errors():
    assert _quiet_main([])[0] == 2
    status, _, err = _quiet_main(["plot"])
    assert status == 2 and "unknown command 'plot'" in err
    assert _quiet_main(["--help"])[0] == 0
