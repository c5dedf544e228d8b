"""Faults found when the project was probed (issue: reliability), each pinned by a test."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.vec_env import DummyVecEnv

from hybrid_pg import HybridPG
from hybrid_pg_envs import NonStationaryWrapper
from hybrid_pg_envs.clock import env_clock, get_clocks

KW = dict(n_steps=64, batch_size=64, n_epochs=1, seed=0)
G_SCHEDULE = {"g": {"kind": "linear", "start": 10.0, "rate": 0.01}}


def _wrapped_pendulum():
    # the README's way of making an env non-stationary: a user wrapper, not a registered id
    return DummyVecEnv([lambda: NonStationaryWrapper(gym.make("Pendulum-v1"), G_SCHEDULE)])


def test_the_oracle_sees_the_users_wrappers_and_clock():
    model = HybridPG("MlpPolicy", _wrapped_pendulum(), oracle_freq=1, oracle_samples=64, oracle_frozen_clock=0, **KW)
    model.learn(64 * 3)  # failed at the first update before: the copy had no clock
    live_env = model.oracle._live.env
    oracle_g = live_env.get_attr("current_params")[0]["g"]
    # the live oracle holds the clock of the last rollout's midpoint (lag of one rollout at most)
    assert 10.0 < oracle_g <= 10.0 + 0.01 * env_clock(model.env)
    assert model.oracle._frozen.env.get_attr("current_params")[0]["g"] == pytest.approx(10.0)


def test_the_env_clock_is_saved_with_the_model(tmp_path):
    model = HybridPG("MlpPolicy", _wrapped_pendulum(), **KW)
    model.learn(64 * 4)
    assert get_clocks(model.env) == [256]
    model.save(tmp_path / "m.zip")
    fresh = _wrapped_pendulum()
    loaded = HybridPG.load(tmp_path / "m.zip", env=fresh)
    assert get_clocks(loaded.env) == [256]  # read 0 before: the schedule replayed from the start
    loaded.learn(64, reset_num_timesteps=False)
    assert get_clocks(loaded.env) == [320]


class _BadObservation(gym.Wrapper):
    def __init__(self, env, value, at):
        super().__init__(env)
        self.value, self.at, self.t = value, at, 0

    def step(self, action):
        obs, r, term, trunc, info = self.env.step(action)
        self.t += 1
        if self.t == self.at:
            obs = np.full_like(obs, self.value)
        return obs, r, term, trunc, info


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_non_finite_observation_is_a_clear_error_and_leaves_the_parameters_alone(value):
    env = DummyVecEnv([lambda: _BadObservation(gym.make("Pendulum-v1"), value, at=70)])
    model = HybridPG("MlpPolicy", env, **KW)
    model.learn(64)
    before = [p.detach().clone() for p in model.policy.parameters()]
    with pytest.raises(ValueError, match=r"found (nan|inf) in the observation"):
        model.learn(64 * 2, reset_num_timesteps=False)
    assert all(th.equal(a, b) for a, b in zip(before, model.policy.parameters()))


def test_degenerate_rollout_shapes_are_warned():
    with pytest.warns(UserWarning, match="n_steps=1: a rollout of 1 sample"):
        HybridPG("MlpPolicy", "Pendulum-v1", n_steps=1, batch_size=1, seed=0)
    HybridPG("MlpPolicy", "Pendulum-v1", n_steps=1, batch_size=1, estimator="reinforce", seed=0)  # no weight to estimate
    with pytest.warns(UserWarning, match="is larger than the rollout"):
        HybridPG("MlpPolicy", "Pendulum-v1", n_steps=32, batch_size=64, seed=0)
    with pytest.warns(UserWarning, match="truncated mini-batch of size 36"):
        HybridPG("MlpPolicy", "Pendulum-v1", n_steps=100, batch_size=64, seed=0)


def test_train_loss_is_logged():
    from stable_baselines3.common.logger import KVWriter, Logger

    rows = []

    class Capture(KVWriter):
        def write(self, kv, excluded, step=0):
            rows.append(dict(kv))

        def close(self):
            pass

    model = HybridPG("MlpPolicy", "Pendulum-v1", **KW)
    model.set_logger(Logger(None, [Capture()]))
    model.learn(64 * 2)
    assert any("train/loss" in r and np.isfinite(r["train/loss"]) for r in rows)


def test_a_broken_model_file_names_what_is_missing(tmp_path):
    model = HybridPG("MlpPolicy", "Pendulum-v1", **KW)
    model.save(tmp_path / "m.zip")
    with zipfile.ZipFile(tmp_path / "m.zip") as src, zipfile.ZipFile(tmp_path / "broken.zip", "w") as dst:
        for item in src.infolist():
            if item.filename != "policy.optimizer.pth":
                dst.writestr(item, src.read(item.filename))
    with pytest.raises(ValueError, match="incomplete: 'policy.optimizer' is missing"):
        HybridPG.load(tmp_path / "broken.zip")


def test_import_hybrid_pg_registers_the_envs():
    code = "import gymnasium as gym, hybrid_pg\nhybrid_pg.HybridPG('MlpPolicy', 'hybrid_pg/Pendulum-v0', n_steps=16, batch_size=16)\nprint('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_the_module_prefixed_id_works_in_spawned_subprocess_workers():
    # a spawned worker has not imported hybrid_pg; the "module:id" form makes gymnasium import it there
    code = (
        "def main():\n"
        "    import hybrid_pg\n"
        "    from stable_baselines3.common.env_util import make_vec_env\n"
        "    from stable_baselines3.common.vec_env import SubprocVecEnv\n"
        "    env = make_vec_env('hybrid_pg_envs:hybrid_pg/Pendulum-v0', n_envs=2, vec_env_cls=SubprocVecEnv, vec_env_kwargs=dict(start_method='spawn'))\n"
        "    m = hybrid_pg.HybridPG('MlpPolicy', env, n_steps=16, batch_size=32, n_epochs=1, seed=0)\n"
        "    m.learn(32)\n"
        "    print(m.pathwise.name)\n"
        "    env.close()\n"
        "main()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("model")
