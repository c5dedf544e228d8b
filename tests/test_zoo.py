"""``python -m hybrid_pg.experiments.zoo``: HybridPG registered with the RL Zoo (skipped without rl_zoo3)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

rl_zoo3 = pytest.importorskip("rl_zoo3")
optuna = pytest.importorskip("optuna")

from hybrid_pg import HybridPG  # noqa: E402
from hybrid_pg.experiments.zoo import ALGO_NAME, convert_hybrid_pg_params, main, register, sample_hybrid_pg_params  # noqa: E402

ZOO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "zoo" / "hybrid_pg.yml"


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
    logs = tmp_path / "logs"
    status, out, err = _quiet_main(
        [
            "train", "--algo", ALGO_NAME, "--env", "Pendulum-v1", "-conf", str(ZOO_CONFIG),
            "-n", "256", "-params", "n_envs:1", "n_steps:128", "n_epochs:1",
            "--eval-freq", "-1", "-f", str(logs), "--seed", "0", "--num-threads", "1", "--verbose", "0",
        ]
    )  # fmt: skip
    assert status == 0, err
    run_dir = logs / ALGO_NAME / "Pendulum-v1_1"
    # the zoo saves the hyperparameters it used as a YAML OrderedDict (a file this test just wrote)
    saved = dict(yaml.unsafe_load((run_dir / "Pendulum-v1" / "config.yml").read_text()))
    assert saved["estimator"] == "hybrid" and saved["n_steps"] == 128 and saved["n_envs"] == 1
    model = HybridPG.load(run_dir / "Pendulum-v1.zip", device="cpu")
    assert model.num_timesteps == 256 and model.estimator == "hybrid"
    status, out, err = _quiet_main(
        ["enjoy", "--algo", ALGO_NAME, "--env", "Pendulum-v1", "-f", str(logs), "-n", "200", "--no-render", "--deterministic"]
    )
    assert status == 0, err
    assert "Episode Reward" in out or "Mean reward" in out


def test_usage_errors():
    assert _quiet_main([])[0] == 2
    status, _, err = _quiet_main(["plot"])
    assert status == 2 and "unknown command 'plot'" in err
    assert _quiet_main(["--help"])[0] == 0
