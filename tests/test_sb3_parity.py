"""SB3 behaviour parity of HybridPG: persistence, resumption, predict, callbacks, vec envs, seeding,
devices and the Dict / image observation policies.

Resumption in SB3: the zip holds the networks, the optimizer and every pickled attribute of the
algorithm (for HybridPG also ``lambda_windows``, ``_n_rollouts_trained``, ``last_lambda``), but
neither the global RNG states (torch, numpy, random) nor the environment's state. ``load`` even
re-seeds the global RNGs with ``model.seed`` (``_setup_model`` calls ``set_random_seed``). So a
resumed run equals an uninterrupted one exactly when (a) the RNG states at the save point are put
back after ``load`` (or both runs re-seed identically at that point) and (b) the env continues from
the same state: the same env object with ``force_reset=False``, or an env whose reset is
deterministic when the save falls on an episode boundary. The tests below check exactly that, on
parameters, optimizer state, lam windows and counters. ``CheckpointCallback`` saves from
``_on_step`` inside ``collect_rollouts``, i.e. before the update on the rollout in flight: its
checkpoint at step N holds N / (n_steps * n_envs) - 1 updates, and a run resumed from it re-collects
that rollout (SB3 semantics, the same for PPO/A2C).

Known HybridPG divergences after a resume are marked xfail(strict=True) with their reason.
"""

from __future__ import annotations

import copy
import random
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import (
    BaseCallback,
    CallbackList,
    CheckpointCallback,
    EvalCallback,
    StopTrainingOnRewardThreshold,
)
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

from hybrid_pg import HybridPG

TINY = dict(net_arch=[16], advantage_net_arch=[16])
KW = dict(n_steps=32, batch_size=32, n_epochs=1, lambda_warmup=0, lambda_window=3, policy_kwargs=TINY, seed=0)
GROUP_NAMES = ("global", "mean", "log_std")


# ------------------------------------------------------------------------------------------------
# tiny custom envs (Box actions)
# ------------------------------------------------------------------------------------------------


class DictObsEnv(gym.Env):
    """Move a point towards a goal; obs = {"pos", "goal"}, action = velocity in [-1, 1]^2."""

    observation_space = spaces.Dict({"pos": spaces.Box(-5, 5, (2,), np.float32), "goal": spaces.Box(-5, 5, (2,), np.float32)})
    action_space = spaces.Box(-1, 1, (2,), np.float32)

    def __init__(self, horizon: int = 16):
        self.horizon = horizon

    def _obs(self):
        return {"pos": self.pos.astype(np.float32), "goal": self.goal.astype(np.float32)}

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.pos = self.np_random.uniform(-1, 1, 2)
        self.goal = self.np_random.uniform(-1, 1, 2)
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        self.pos = np.clip(self.pos + 0.2 * np.clip(action, -1, 1), -5, 5)
        return self._obs(), -float(np.linalg.norm(self.pos - self.goal)), False, self.t >= self.horizon, {}


class ImageObsEnv(gym.Env):
    """A (36, 36, 3) uint8 image of a bar whose length is the position; action moves it."""

    observation_space = spaces.Box(0, 255, (36, 36, 3), np.uint8)
    action_space = spaces.Box(-1, 1, (1,), np.float32)

    def __init__(self, horizon: int = 16):
        self.horizon = horizon

    def _obs(self):
        img = np.zeros((36, 36, 3), np.uint8)
        img[:, : int(18 + 17 * self.x), 0] = 255
        return img

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.x = float(self.np_random.uniform(-1, 1))
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        self.x = float(np.clip(self.x + 0.2 * float(np.clip(action[0], -1, 1)), -1, 1))
        return self._obs(), -abs(self.x), False, self.t >= self.horizon, {}


class FixedStartEnv(gym.Env):
    """1-d point with a deterministic reset and fixed-length episodes: its state at an episode
    boundary is fully known, so a freshly made env can stand in for the interrupted one."""

    observation_space = spaces.Box(-10, 10, (2,), np.float32)
    action_space = spaces.Box(-1, 1, (1,), np.float32)

    def __init__(self, horizon: int = 16):
        self.horizon = horizon

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.x = 0, 0.7
        return np.array([self.x, 0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        self.x = float(np.clip(self.x + 0.2 * float(np.clip(action[0], -1, 1)), -10, 10))
        return np.array([self.x, self.t / self.horizon], np.float32), -(self.x**2), False, self.t >= self.horizon, {}


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


class Capture(KVWriter):
    def __init__(self):
        self.rows = []

    def write(self, key_values, key_excluded, step=0):
        self.rows.append(dict(key_values))


def _params(model) -> th.Tensor:
    return th.cat([p.detach().flatten() for p in model.policy.parameters()]).clone()


def _rng_state():
    return random.getstate(), np.random.get_state(), th.get_rng_state()


def _set_rng_state(state) -> None:
    random.setstate(state[0])
    np.random.set_state(state[1])
    th.set_rng_state(state[2])


def _assert_equal_tree(a, b, path="") -> None:
    """Exact equality of nested dicts/lists of tensors, arrays and numbers."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {set(a) ^ set(b)}"
        for k in a:
            _assert_equal_tree(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: lengths {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal_tree(x, y, f"{path}[{i}]")
    elif isinstance(a, th.Tensor):
        assert th.equal(a, b), f"{path}: tensors differ"
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=path)
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _assert_same_training_state(a: HybridPG, b: HybridPG) -> None:
    assert th.equal(_params(a), _params(b)), "policy parameters differ"
    _assert_equal_tree(a.policy.optimizer.state_dict(), b.policy.optimizer.state_dict(), "optimizer")
    for name in GROUP_NAMES:
        _assert_equal_tree(a.lambda_windows[name].state_dict(), b.lambda_windows[name].state_dict(), f"window {name}")
    assert a._n_rollouts_trained == b._n_rollouts_trained
    assert a.num_timesteps == b.num_timesteps
    assert a._n_updates == b._n_updates
    assert a.last_lambda == b.last_lambda


def _pendulum(n_envs=1, seed=0, **kwargs):
    return make_vec_env("Pendulum-v1", n_envs=n_envs, seed=seed, **kwargs)


# ------------------------------------------------------------------------------------------------
# save / load
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_env", [True, False])
def test_save_load_round_trip_with_and_without_env(tmp_path, with_env):
    model = HybridPG("MlpPolicy", _pendulum(), **KW)
    model.learn(32 * 3)
    model.save(tmp_path / "m")
    loaded = HybridPG.load(tmp_path / "m.zip", env=_pendulum(seed=1) if with_env else None)
    assert (loaded.get_env() is not None) == with_env
    assert th.equal(_params(model), _params(loaded))
    _assert_equal_tree(model.policy.optimizer.state_dict(), loaded.policy.optimizer.state_dict(), "optimizer")
    for name in GROUP_NAMES:
        _assert_equal_tree(model.lambda_windows[name].state_dict(), loaded.lambda_windows[name].state_dict(), name)
    assert loaded._n_rollouts_trained == 3 and loaded.num_timesteps == 96 and loaded.last_lambda == model.last_lambda
    obs = np.random.default_rng(0).uniform(-1, 1, (5, 3)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    if not with_env:
        loaded.set_env(_pendulum(seed=1))
    loaded.learn(32, reset_num_timesteps=False)
    assert loaded.num_timesteps == 128 and loaded._n_rollouts_trained == 4
    assert len(loaded.lambda_windows["global"]) == 3  # the window kept its length bound across the load


def test_load_then_learn_with_reset_num_timesteps_false_continues_the_counters(tmp_path):
    model = HybridPG("MlpPolicy", _pendulum(), **KW)
    model.learn(64)
    model.save(tmp_path / "m.zip")
    loaded = HybridPG.load(tmp_path / "m.zip", env=_pendulum(seed=3))
    loaded.learn(64, reset_num_timesteps=False)
    assert loaded.num_timesteps == 128
    assert loaded._n_rollouts_trained == 4 and loaded._n_updates == 4 * KW["n_epochs"]
    assert loaded.lambda_windows["global"].n_updates == 4
    # reset_num_timesteps=True restarts the step counter but (by design) not the lam statistics
    loaded.learn(32, reset_num_timesteps=True)
    assert loaded.num_timesteps == 32 and loaded._n_rollouts_trained == 5


# ------------------------------------------------------------------------------------------------
# resumption exactness
# ------------------------------------------------------------------------------------------------


RESUME_KW = dict(KW, batch_size=16, n_epochs=2, lambda_warmup=1)


@pytest.mark.parametrize(
    "extra",
    [
        dict(),
        dict(lambda_mode="ema"),
        dict(lambda_mode="adaptive", lambda_detector=dict(threshold=1.0, warmup=2)),
        dict(lambda_groups="per_group"),
    ],
    ids=["sliding", "ema", "adaptive", "per_group"],
)
def test_resume_equals_uninterrupted_run_same_env_rng_restored(tmp_path, extra):
    """save at N, load (same env object, force_reset=False), restore the RNG states of the save
    point, continue to 2N == one uninterrupted learn(2N)."""
    n_envs, half = 2, 32 * 2 * 3
    reference = HybridPG("MlpPolicy", _pendulum(n_envs), **RESUME_KW, **extra)
    reference.learn(2 * half)

    env = _pendulum(n_envs)
    first = HybridPG("MlpPolicy", env, **RESUME_KW, **extra)
    first.learn(half)
    rng = _rng_state()
    first.save(tmp_path / "m.zip")
    del first
    resumed = HybridPG.load(tmp_path / "m.zip", env=env, force_reset=False)
    _set_rng_state(rng)
    resumed.learn(half, reset_num_timesteps=False)

    _assert_same_training_state(reference, resumed)
    if extra.get("lambda_mode") == "adaptive":
        assert reference.lambda_windows["global"].detector.state_dict() == resumed.lambda_windows["global"].detector.state_dict()


def test_resume_equals_interrupted_reference_when_both_reseed(tmp_path):
    """The other standard recipe: both runs call set_random_seed(s) at the save point."""
    half = 32 * 3
    reference = HybridPG("MlpPolicy", _pendulum(), **RESUME_KW)
    reference.learn(half)
    reference.set_random_seed(123)
    reference.learn(half, reset_num_timesteps=False)

    env = _pendulum()
    first = HybridPG("MlpPolicy", env, **RESUME_KW)
    first.learn(half)
    first.save(tmp_path / "m.zip")
    resumed = HybridPG.load(tmp_path / "m.zip", env=env, force_reset=False)
    resumed.set_random_seed(123)
    resumed.learn(half, reset_num_timesteps=False)
    _assert_same_training_state(reference, resumed)


def test_resume_with_a_fresh_env_is_exact_at_a_deterministic_episode_boundary(tmp_path):
    """Default load (new env, force_reset=True) is exact when the env state at N is reproducible:
    deterministic reset and N a multiple of the episode length. (With Pendulum's random reset it
    cannot be: the env's state and np_random are not in the zip.)"""
    half = 32 * 3  # 6 episodes of 16 steps
    make = lambda: DummyVecEnv([FixedStartEnv])  # noqa: E731
    reference = HybridPG("MlpPolicy", make(), **RESUME_KW)
    reference.learn(2 * half)

    first = HybridPG("MlpPolicy", make(), **RESUME_KW)
    first.learn(half)
    rng = _rng_state()
    first.save(tmp_path / "m.zip")
    resumed = HybridPG.load(tmp_path / "m.zip", env=make())  # force_reset=True
    _set_rng_state(rng)
    resumed.learn(half, reset_num_timesteps=False)
    _assert_same_training_state(reference, resumed)


def test_checkpoint_callback_snapshot_is_the_live_state_and_resumes(tmp_path):
    n_steps, save_at = 32, 64

    class Snapshot(BaseCallback):
        """Runs right after CheckpointCallback: the live state the checkpoint should hold."""

        def __init__(self):
            super().__init__()
            self.state = None

        def _on_step(self):
            if self.num_timesteps == save_at:
                m = self.model
                self.state = dict(
                    params=_params(m),
                    optimizer=copy.deepcopy(m.policy.optimizer.state_dict()),
                    windows={k: m.lambda_windows[k].state_dict() for k in GROUP_NAMES},
                    rollouts=m._n_rollouts_trained,
                    last_lambda=dict(m.last_lambda),
                )
            return True

    model = HybridPG("MlpPolicy", _pendulum(), **{**RESUME_KW, "n_steps": n_steps})
    snap = Snapshot()
    model.learn(
        4 * n_steps, callback=CallbackList([CheckpointCallback(save_freq=save_at, save_path=str(tmp_path), name_prefix="ck"), snap])
    )
    assert sorted(p.name for p in tmp_path.glob("ck_*.zip")) == ["ck_128_steps.zip", "ck_64_steps.zip"]

    ckpt = HybridPG.load(tmp_path / "ck_64_steps.zip", env=_pendulum(seed=5))
    assert th.equal(_params(ckpt), snap.state["params"])
    _assert_equal_tree(ckpt.policy.optimizer.state_dict(), snap.state["optimizer"], "optimizer")
    for name in GROUP_NAMES:
        _assert_equal_tree(ckpt.lambda_windows[name].state_dict(), snap.state["windows"][name], name)
    # saved inside collect_rollouts, before the update on the rollout ending at step 64
    assert ckpt.num_timesteps == save_at and ckpt._n_rollouts_trained == snap.state["rollouts"] == save_at // n_steps - 1
    assert ckpt.last_lambda == snap.state["last_lambda"]

    ckpt.learn(4 * n_steps - save_at, reset_num_timesteps=False)
    assert ckpt.num_timesteps == 4 * n_steps
    assert ckpt._n_rollouts_trained == model._n_rollouts_trained - 1  # the in-flight rollout was re-collected
    assert ckpt.lambda_windows["global"].n_updates == model.lambda_windows["global"].n_updates - 1


def test_two_resumptions_from_one_checkpoint_are_identical(tmp_path):
    """load re-seeds the global RNGs with model.seed, so continuing a zip is reproducible."""
    model = HybridPG("MlpPolicy", _pendulum(), **RESUME_KW)
    model.learn(64)
    model.save(tmp_path / "m.zip")
    runs = []
    for _ in range(2):
        loaded = HybridPG.load(tmp_path / "m.zip", env=_pendulum(seed=11))
        loaded.learn(64, reset_num_timesteps=False)
        runs.append(loaded)
    _assert_same_training_state(*runs)


def _resumed_logs(tmp_path, **extra):
    """Logged rows of the second half of an uninterrupted run and of an exactly resumed one."""
    half = 32 * 3

    def second_half(model, env, resume):
        model.learn(half)
        if resume:
            rng = _rng_state()
            model.save(tmp_path / "m.zip")
            model = HybridPG.load(tmp_path / "m.zip", env=env, force_reset=False)
            _set_rng_state(rng)
        cap = Capture()
        model.set_logger(Logger(folder=None, output_formats=[cap]))
        model.learn(half, reset_num_timesteps=False)
        model.logger.dump(model.num_timesteps)
        return model, cap.rows

    rows = []
    for resume in (False, True):
        env = _pendulum()
        rows.append(second_half(HybridPG("MlpPolicy", env, **RESUME_KW, **extra), env, resume))
    (ref, ref_rows), (res, res_rows) = rows
    _assert_same_training_state(ref, res)  # training itself is exact ...
    return ref_rows, res_rows


def _diff(ref_rows, res_rows, prefix):
    def same(x, y):
        if isinstance(x, float) and isinstance(y, float):
            return x == y or (np.isnan(x) and np.isnan(y))
        return x == y

    assert len(ref_rows) == len(res_rows)
    out = []
    for i, (a, b) in enumerate(zip(ref_rows, res_rows)):
        for key in sorted(set(a) | set(b)):
            if key.startswith(prefix) and not same(a.get(key, "missing"), b.get(key, "missing")):
                out.append((i, key, a.get(key, "missing"), b.get(key, "missing")))
    return out


def test_resume_reproduces_the_drift_diagnostics(tmp_path):
    ref_rows, res_rows = _resumed_logs(tmp_path)
    assert _diff(ref_rows, res_rows, "hybrid/drift_") == []
    # the policy snapshots behind kl_to_oldest are not saved (most of a saved model's size): after
    # the resume it reads nan until the window has refilled, then matches again
    diffs = _diff(ref_rows, res_rows, "hybrid/kl_to_oldest")
    assert all(isinstance(new, float) and np.isnan(new) for _, _, _, new in diffs)


def test_resume_reproduces_the_oracle_logs(tmp_path):
    ref_rows, res_rows = _resumed_logs(tmp_path, oracle_freq=2, oracle_samples=64)
    assert any("hybrid/oracle_lambda" in r for r in res_rows)
    assert _diff(ref_rows, res_rows, "hybrid/oracle_") == []


# ------------------------------------------------------------------------------------------------
# predict
# ------------------------------------------------------------------------------------------------


def test_predict_single_and_batched_deterministic_and_stochastic():
    model = HybridPG("MlpPolicy", _pendulum(), **KW)
    model.learn(32)
    single = np.array([0.5, -0.5, 0.1], np.float32)
    batch = np.stack([single, -single, 0 * single])
    a1, state = model.predict(single, deterministic=True)
    assert a1.shape == (1,) and state is None
    ab, _ = model.predict(batch, deterministic=True)
    assert ab.shape == (3, 1)
    np.testing.assert_allclose(ab[0], a1, rtol=1e-6)
    np.testing.assert_array_equal(model.predict(batch, deterministic=True)[0], ab)
    with th.no_grad():
        mean = model.policy.actor_mean(th.as_tensor(batch)).numpy()
    np.testing.assert_allclose(ab, np.clip(mean, -2, 2), rtol=1e-6)

    with th.no_grad():
        model.policy.log_std.fill_(1.0)  # wide noise: samples differ and some get clipped
    samples = np.stack([model.predict(batch, deterministic=False)[0] for _ in range(20)])
    assert samples.shape == (20, 3, 1)
    assert np.all(samples >= -2) and np.all(samples <= 2)
    assert np.unique(samples[:, 0, 0]).size > 1
    assert model.predict(single, deterministic=False)[0].shape == (1,)


def test_predict_dict_and_image_observations_single_and_batched():
    for policy, env_cls in (("MultiInputPolicy", DictObsEnv), ("CnnPolicy", ImageObsEnv)):
        env = make_vec_env(env_cls, n_envs=2, seed=0)
        model = HybridPG(policy, env, **{**KW, "n_steps": 16, "batch_size": 16, "policy_kwargs": dict(advantage_net_arch=[16])})
        obs = env.reset()
        batched, _ = model.predict(obs, deterministic=True)
        assert batched.shape == (2, *env.action_space.shape)
        one = env_cls().reset(seed=0)[0]
        single, _ = model.predict(one, deterministic=False)
        assert single.shape == env.action_space.shape and env.action_space.contains(single.astype(np.float32))


# ------------------------------------------------------------------------------------------------
# callbacks
# ------------------------------------------------------------------------------------------------


def test_eval_callback_evaluates_and_saves_the_best_model(tmp_path):
    model = HybridPG("MlpPolicy", _pendulum(), **KW)
    eval_cb = EvalCallback(
        _pendulum(seed=9), eval_freq=64, n_eval_episodes=1, best_model_save_path=str(tmp_path), log_path=str(tmp_path), verbose=0
    )
    model.learn(128, callback=eval_cb)
    assert eval_cb.n_calls == 128
    evals = np.load(tmp_path / "evaluations.npz")
    assert list(evals["timesteps"]) == [64, 128] and evals["results"].shape == (2, 1)
    best = HybridPG.load(tmp_path / "best_model.zip")
    assert best.num_timesteps in (64, 128)
    assert np.isfinite(eval_cb.best_mean_reward)


@pytest.mark.parametrize("threshold, stops", [(-1e9, True), (1e9, False)])
def test_stop_training_on_reward_threshold_via_callback_on_new_best(tmp_path, threshold, stops):
    model = HybridPG("MlpPolicy", _pendulum(), **KW)
    stop = StopTrainingOnRewardThreshold(reward_threshold=threshold, verbose=0)
    eval_cb = EvalCallback(_pendulum(seed=9), eval_freq=32, n_eval_episodes=1, callback_on_new_best=stop, verbose=0)
    model.learn(32 * 4, callback=eval_cb)
    if stops:  # stopped at the first evaluation, before the update on that rollout
        assert model.num_timesteps == 32 and model._n_rollouts_trained == 0
    else:
        assert model.num_timesteps == 128 and model._n_rollouts_trained == 4


def test_checkpoint_callback_saves_loadable_models(tmp_path):
    model = HybridPG("MlpPolicy", _pendulum(n_envs=2), **KW)
    model.learn(32 * 2 * 3, callback=CheckpointCallback(save_freq=32, save_path=str(tmp_path), name_prefix="hp"))
    names = sorted(p.name for p in tmp_path.glob("hp_*.zip"))
    assert names == ["hp_128_steps.zip", "hp_192_steps.zip", "hp_64_steps.zip"]
    last = HybridPG.load(tmp_path / "hp_192_steps.zip")
    assert last.num_timesteps == 192 and last._n_rollouts_trained == 2


# ------------------------------------------------------------------------------------------------
# vec envs, VecNormalize
# ------------------------------------------------------------------------------------------------


def test_vecnormalize_trains_and_its_statistics_round_trip(tmp_path):
    env = VecNormalize(_pendulum(n_envs=2), norm_obs=True, norm_reward=True)
    model = HybridPG("MlpPolicy", env, **KW)
    model.learn(32 * 2 * 2)
    assert env.obs_rms.count > 100 and all(th.isfinite(p).all() for p in model.policy.parameters())
    model.save(tmp_path / "m.zip")
    env.save(str(tmp_path / "vecnorm.pkl"))

    eval_env = VecNormalize.load(str(tmp_path / "vecnorm.pkl"), _pendulum(n_envs=2, seed=4))
    eval_env.training, eval_env.norm_reward = False, False
    loaded = HybridPG.load(tmp_path / "m.zip", env=eval_env)
    raw = np.random.default_rng(1).uniform(-1, 1, (4, 3)).astype(np.float32)
    np.testing.assert_allclose(env.normalize_obs(raw), eval_env.normalize_obs(raw))
    np.testing.assert_array_equal(
        model.predict(env.normalize_obs(raw), deterministic=True)[0], loaded.predict(eval_env.normalize_obs(raw), deterministic=True)[0]
    )
    loaded.learn(64, reset_num_timesteps=False)  # and it keeps training on the loaded normaliser


def test_subproc_vec_env_fork_matches_dummy_vec_env():
    results = []
    for cls, kwargs in ((DummyVecEnv, None), (SubprocVecEnv, dict(start_method="fork"))):
        env = _pendulum(n_envs=2, vec_env_cls=cls, vec_env_kwargs=kwargs)
        try:
            model = HybridPG("MlpPolicy", env, **KW)
            model.learn(32 * 2 * 2)
            results.append(_params(model))
            assert model.predict(env.reset(), deterministic=True)[0].shape == (2, 1)
        finally:
            env.close()
    assert th.equal(results[0], results[1])  # same seeds, same trajectories


def test_multiple_envs_rollout_size_and_window_batch_size():
    model = HybridPG("MlpPolicy", _pendulum(n_envs=4), **{**KW, "n_steps": 8, "batch_size": 16})
    model.learn(8 * 4 * 2)
    assert model.rollout_buffer.buffer_size == 8 and model.n_envs == 4
    assert model.num_timesteps == 64 and model._n_rollouts_trained == 2
    assert [b.n for b in model.lambda_windows["global"].batches] == [32, 32]


# ------------------------------------------------------------------------------------------------
# seeding, parameters, devices
# ------------------------------------------------------------------------------------------------


def test_set_random_seed_reproducibility():
    def run(seed):
        model = HybridPG("MlpPolicy", _pendulum(n_envs=2, seed=seed), **{**KW, "seed": seed})
        model.learn(32 * 2 * 2)
        return model

    a, b, c = run(0), run(0), run(1)
    _assert_same_training_state(a, b)
    assert not th.equal(_params(a), _params(c))


def test_get_parameters_set_parameters_round_trip():
    source = HybridPG("MlpPolicy", _pendulum(), **KW)
    source.learn(64)
    target = HybridPG("MlpPolicy", _pendulum(seed=7), **{**KW, "seed": 7})
    assert not th.equal(_params(source), _params(target))
    params = source.get_parameters()
    assert set(params) == {"policy", "policy.optimizer"}
    assert any(k.startswith("advantage_head.") for k in params["policy"])  # the advantage head is included
    target.set_parameters(params, exact_match=True)
    assert th.equal(_params(source), _params(target))
    _assert_equal_tree(source.policy.optimizer.state_dict(), target.policy.optimizer.state_dict(), "optimizer")
    with pytest.raises(ValueError):
        target.set_parameters({"policy": params["policy"]}, exact_match=True)


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_device_cpu_and_auto(device):
    model = HybridPG("MlpPolicy", _pendulum(), device=device, **KW)
    expected = th.device("cuda" if device == "auto" and th.cuda.is_available() else "cpu")
    assert model.device.type == expected.type
    assert all(p.device.type == expected.type for p in model.policy.parameters())
    model.learn(64)
    assert all(th.isfinite(p).all() for p in model.policy.parameters())


# ------------------------------------------------------------------------------------------------
# Dict and image observations
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy, env_cls", [("MultiInputPolicy", DictObsEnv), ("CnnPolicy", ImageObsEnv)])
def test_dict_and_image_observations_train_save_and_load(tmp_path, policy, env_cls):
    env = make_vec_env(env_cls, n_envs=2, seed=0)
    model = HybridPG(policy, env, **{**KW, "n_steps": 16, "batch_size": 16, "policy_kwargs": dict(advantage_net_arch=[16])})
    model.learn(16 * 2 * 3)
    assert model._n_rollouts_trained == 3 and len(model.lambda_windows["global"]) == 3
    assert all(th.isfinite(p).all() for p in model.policy.parameters())
    assert 0.0 <= model.last_lambda["global"] <= 1.0
    model.save(tmp_path / "m.zip")
    loaded = HybridPG.load(tmp_path / "m.zip", env=make_vec_env(env_cls, n_envs=2, seed=1))
    obs = loaded.get_env().reset()
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    loaded.learn(32, reset_num_timesteps=False)


def test_oracle_with_dict_observations():
    env = make_vec_env(DictObsEnv, n_envs=2, seed=0)
    model = HybridPG(
        "MultiInputPolicy", env, **{**KW, "n_steps": 16, "batch_size": 16}, oracle_freq=1, oracle_samples=32, oracle_env=DictObsEnv
    )
    model.learn(16 * 2 * 2)
    assert model.oracle._live.calls == 2


def test_oracle_with_image_observations():
    env = make_vec_env(ImageObsEnv, n_envs=2, seed=0)
    model = HybridPG("CnnPolicy", env, **{**KW, "n_steps": 16, "batch_size": 16}, oracle_freq=1, oracle_samples=32, oracle_env=ImageObsEnv)
    model.learn(16 * 2 * 2)
    assert model.oracle._live.calls == 2


# ------------------------------------------------------------------------------------------------
# set_env and load(**kwargs)
# ------------------------------------------------------------------------------------------------


def _model_env(with_model: bool = True):
    """hybrid_pg/Pendulum-v0 (a differentiable model), or Pendulum-v1 (the same spaces, no model)."""
    import hybrid_pg_envs  # noqa: F401  (registers hybrid_pg/Pendulum-v0, which has a differentiable model)

    return make_vec_env("hybrid_pg/Pendulum-v0" if with_model else "Pendulum-v1", n_envs=1, seed=0)


def test_load_re_resolves_the_pathwise_source_for_the_new_env(tmp_path):
    model = HybridPG("MlpPolicy", _model_env(), **KW, pathwise_source="model")
    assert model.pathwise.name == "model"
    model.save(tmp_path / "m.zip")
    loaded = HybridPG.load(tmp_path / "m.zip", env=VecNormalize(_model_env()))  # supported: units translated
    assert loaded.pathwise.name == "model" and loaded.pathwise.normalization is not None
    with pytest.raises(ValueError, match="differentiable model"):
        HybridPG.load(tmp_path / "m.zip", env=_model_env(False))


def test_set_env_re_resolves_the_pathwise_source():
    model = HybridPG("MlpPolicy", _model_env(), **KW, pathwise_source="model")
    with pytest.raises(ValueError, match="differentiable model"):
        model.set_env(_model_env(False))


def test_load_kwargs_for_the_lambda_window_are_honoured_or_refused(tmp_path):
    model = HybridPG("MlpPolicy", _pendulum(), **{**KW, "lambda_window": 8})
    model.learn(32 * 4)
    model.save(tmp_path / "m.zip")
    try:
        loaded = HybridPG.load(tmp_path / "m.zip", env=_pendulum(), lambda_window=2, lambda_mode="ema")
    except ValueError as exc:  # acceptable: a clear refusal
        assert "lambda_window" in str(exc)
        return
    loaded.learn(32 * 2, reset_num_timesteps=False)
    window = loaded.lambda_windows["global"]
    assert (window.window, window.mode) == (2, "ema")


@pytest.mark.parametrize("n_envs, batch_size, warns", [(1, 63, True), (2, 48, True), (1, 128, True), (2, 32, False), (1, None, False)])
def test_truncated_minibatch_warning_like_ppo(n_envs, batch_size, warns):
    """PPO's construction warning (same text, so SB3's test_ppo_warnings regex matches) when the
    mini-batch size does not divide the rollout n_steps * n_envs; a larger size is the whole rollout."""
    env = make_vec_env("Pendulum-v1", n_envs=n_envs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        HybridPG("MlpPolicy", env, n_steps=64, batch_size=batch_size)
    messages = [str(w.message) for w in caught if "truncated mini-batch" in str(w.message)]
    if warns:
        assert len(messages) == 1 and f"truncated mini-batch of size {64 * n_envs % batch_size}" in messages[0]
    else:
        assert not messages
