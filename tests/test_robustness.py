"""HybridPG numerical safety and bad input.

Non-finite rewards, huge reward scales, zero-variance gradients, a near-deterministic policy, a
diverged critic, gradient clipping, and construction errors for bad spaces and hyperparameters.
Known HybridPG defects are xfail(strict=True) tests whose reason starts with "BUG:".
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.vec_env import DummyVecEnv, VecCheckNan, VecNormalize

from hybrid_pg import HybridPG

TINY = dict(net_arch=[16], advantage_net_arch=[16])
KW = dict(n_steps=16, batch_size=16, n_epochs=1, lambda_warmup=0, policy_kwargs=TINY, seed=0)


class PointEnv(gym.Env):
    """1-d point, reward -scale * x^2 (or a constant), from env step ``bad_step`` on the reward is
    ``bad``. ``steps`` counts env steps across episodes (one env per DummyVecEnv here)."""

    observation_space = spaces.Box(-10, 10, (2,), np.float32)
    action_space = spaces.Box(-1, 1, (1,), np.float32)

    def __init__(self, bad_step=None, bad=math.nan, scale=1.0, const=None, horizon=16):
        self.bad_step, self.bad, self.scale, self.const, self.horizon = bad_step, bad, scale, const, horizon
        self.steps = 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.x = 0.5 if self.const is not None else float(self.np_random.uniform(-1, 1))
        return np.array([self.x, 0.0], np.float32), {}

    def step(self, action):
        self.steps += 1
        self.t += 1
        if self.const is None:
            self.x = float(np.clip(self.x + 0.1 * float(np.clip(action[0], -1, 1)), -10, 10))
            reward = -self.scale * self.x**2
        else:
            reward = float(self.const)
        if self.bad_step is not None and self.steps >= self.bad_step:
            reward = self.bad
        return np.array([self.x, self.t / self.horizon], np.float32), reward, False, self.t >= self.horizon, {}


class SpacesEnv(gym.Env):
    """Any observation/action space; random observations, zero reward, one-step episodes."""

    def __init__(self, observation_space, action_space):
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, True, {}


class Capture(KVWriter):
    def __init__(self):
        self.rows = []

    def write(self, key_values, key_excluded, step=0):
        self.rows.append(dict(key_values))


def _vec(**kwargs):
    return DummyVecEnv([lambda: PointEnv(**kwargs)])


def _params(model) -> th.Tensor:
    return th.cat([p.detach().flatten() for p in model.policy.parameters()]).clone()


def _finite(model) -> bool:
    return all(bool(th.isfinite(p).all()) for p in model.policy.parameters())


def _captured(model) -> Capture:
    cap = Capture()
    model.set_logger(Logger(folder=None, output_formats=[cap]))
    return cap


BOX3 = spaces.Box(-1, 1, (3,), np.float32)


# ------------------------------------------------------------------------------------------------
# non-finite rewards
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_vec_check_nan_stops_training_at_the_bad_env_step(bad):
    bad_step = 40  # inside the third rollout of 16 steps
    model = HybridPG("MlpPolicy", VecCheckNan(_vec(bad_step=bad_step, bad=bad), raise_exception=True), **KW)
    with pytest.raises(ValueError, match=r"found (nan|inf) in rewards"):
        model.learn(16 * 6)
    # num_timesteps is incremented after env.step returns: the failing step is the 40th
    assert model.num_timesteps == bad_step - 1
    assert model._n_rollouts_trained == 2 and _finite(model)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_reward_raises_a_clear_error_naming_the_step_and_keeps_parameters_finite(bad):
    model = HybridPG("MlpPolicy", _vec(bad_step=40, bad=bad), **KW)
    with pytest.raises((ValueError, FloatingPointError)) as info:
        model.learn(16 * 6)
    message = str(info.value).lower()
    assert "reward" in message and "step" in message, message
    assert _finite(model), "parameters became non-finite before the error"


@pytest.mark.parametrize("normalize_advantage", [True, False])
@pytest.mark.parametrize("scale", [1e6, 1e9])
def test_huge_reward_scales_train_without_nan(scale, normalize_advantage):
    model = HybridPG("MlpPolicy", _vec(scale=scale), **{**KW, "n_steps": 32, "batch_size": 32}, normalize_advantage=normalize_advantage)
    cap = _captured(model)
    model.learn(32 * 5)
    model.logger.dump(model.num_timesteps)
    assert _finite(model)
    assert all(0.0 <= v <= 1.0 for v in model.last_lambda.values())
    assert cap.rows[-1]["hybrid/stats_valid"] == 1.0
    assert all(math.isfinite(r["train/policy_loss"]) for r in cap.rows if "train/policy_loss" in r)


# ------------------------------------------------------------------------------------------------
# degenerate gradient statistics
# ------------------------------------------------------------------------------------------------


def test_exactly_zero_gradients_leave_the_policy_alone_and_lam_falls_back():
    # reward 0, V == 0 and A_phi == 0 (zero output layers): advantages, score and pathwise
    # per-sample gradients are all exactly zero
    model = HybridPG("MlpPolicy", _vec(const=0.0), **{**KW, "n_steps": 32, "batch_size": 32}, pathwise_source="critic")
    with th.no_grad():
        for layer in (model.policy.value_net, model.policy.advantage_head.mlp[-1]):
            layer.weight.zero_()
            layer.bias.zero_()
    before = _params(model)
    cap = _captured(model)
    model.learn(32 * 4)
    model.logger.dump(model.num_timesteps)
    assert th.equal(before, _params(model))
    estimate = model.lambda_windows["global"].estimate()
    assert estimate.degenerate and estimate.lam == 0.0
    assert model.last_lambda == {"global": 0.0, "mean": 0.0, "log_std": 0.0}
    assert cap.rows[-1]["hybrid/var_path"] == 0.0 and cap.rows[-1]["hybrid/var_score"] == 0.0


def test_constant_reward_deterministic_env_does_not_crash():
    model = HybridPG("MlpPolicy", _vec(const=1.0), **{**KW, "n_steps": 32, "batch_size": 32})
    model.learn(32 * 4)
    assert _finite(model) and all(0.0 <= v <= 1.0 for v in model.last_lambda.values())


@pytest.mark.parametrize("log_std", [-20.0, -50.0])
def test_log_std_at_a_floor_does_not_crash(log_std):
    # sigma = e^-20: eps = (a - mu) / sigma is float32 rounding noise and the score gradient is ~1/sigma
    model = HybridPG("MlpPolicy", _vec(), **{**KW, "n_steps": 32, "batch_size": 32}, learning_rate=1e-4)
    with th.no_grad():
        model.policy.log_std.fill_(log_std)
    cap = _captured(model)
    model.learn(32 * 4)
    model.logger.dump(model.num_timesteps)
    assert _finite(model)
    assert all(0.0 <= v <= 1.0 for v in model.last_lambda.values())
    row = cap.rows[-1]
    if row["hybrid/stats_valid"] == 1.0:
        assert math.isfinite(row["hybrid/var_score"]) and math.isfinite(row["hybrid/lambda_batch"])
    else:  # if the statistics overflow, the update must have fallen back to the score estimator
        assert model.last_lambda["global"] == 0.0


# ------------------------------------------------------------------------------------------------
# a diverged critic
# ------------------------------------------------------------------------------------------------


def _diverge_critic(model, value: float) -> None:
    """What a diverged head looks like: non-finite weights (its output layer's), written in place as
    an optimizer step would write them, so every user of the head sees them."""
    with th.no_grad():
        model.policy.advantage_head.mlp[-1].weight.fill_(value)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_diverged_critic_falls_back_to_the_score_estimator_and_logs_stats_invalid(value):
    model = HybridPG("MlpPolicy", _vec(), **{**KW, "n_steps": 32, "batch_size": 32}, pathwise_source="critic")
    model.learn(32 * 3)
    assert model.lambda_windows["global"].lam > 0.0  # the window would apply some pathwise weight
    n_window = len(model.lambda_windows["global"])
    _diverge_critic(model, value)
    cap = _captured(model)
    model.learn(32, reset_num_timesteps=False)  # exactly one more update
    model.logger.dump(model.num_timesteps)
    row = cap.rows[-1]
    assert row["hybrid/stats_valid"] == 0.0
    assert row["hybrid/lambda"] == 0.0 and model.last_lambda == {"global": 0.0, "mean": 0.0, "log_std": 0.0}
    assert len(model.lambda_windows["global"]) == n_window  # nothing non-finite entered the window
    assert model.lambda_windows["global"].n_updates == 3


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_diverged_critic_does_not_poison_the_actor_and_value_parameters(value):
    model = HybridPG("MlpPolicy", _vec(), **{**KW, "n_steps": 32, "batch_size": 32}, pathwise_source="critic")
    model.learn(32 * 3)
    _diverge_critic(model, value)
    model.learn(32, reset_num_timesteps=False)
    actor_and_value = [p for name, p in model.policy.named_parameters() if not name.startswith("advantage_head.")]
    assert len(actor_and_value) < len(list(model.policy.parameters()))  # the head itself is left out
    assert all(bool(th.isfinite(p).all()) for p in actor_and_value)


# ------------------------------------------------------------------------------------------------
# gradient clipping
# ------------------------------------------------------------------------------------------------


def _one_step(max_grad_norm, lr, **policy_kwargs):
    """One optimizer step: one rollout, one epoch, one full-batch minibatch."""
    model = HybridPG(
        "MlpPolicy",
        "Pendulum-v1",
        n_steps=64,
        batch_size=None,
        n_epochs=1,
        learning_rate=lr,
        max_grad_norm=max_grad_norm,
        seed=0,
        policy_kwargs=policy_kwargs or None,
    )
    before = _params(model)
    model.learn(64)
    assert model._n_updates == 1
    return model, (_params(model) - before).norm().item()


def test_gradient_clipping_bounds_an_sgd_step_exactly():
    # SGD: delta = -lr * g * min(1, c / ||g||), so ||delta|| = lr * c whenever ||g|| > c
    sgd = dict(optimizer_class=th.optim.SGD, optimizer_kwargs=dict())
    _, unclipped = _one_step(1e6, 0.1, **sgd)
    assert unclipped / 0.1 > 1.0  # the raw gradient norm is far above the clip level below
    _, clipped = _one_step(1e-3, 0.1, **sgd)
    assert clipped == pytest.approx(0.1 * 1e-3, rel=1e-3)


def test_gradient_clipping_bounds_adams_first_step():
    # Adam's first step is lr * g / (|g| + eps) per coordinate (bias-corrected moments), so
    # ||delta|| <= lr * ||g|| / eps <= lr * max_grad_norm / eps; without clipping it is ~ lr * sqrt(d)
    model, clipped = _one_step(1e-9, 1e-3)
    eps = model.policy.optimizer.param_groups[0]["eps"]
    assert clipped <= 1e-3 * 1e-9 / eps * (1 + 1e-3)
    _, unclipped = _one_step(1e6, 1e-3)
    assert unclipped > 100 * 1e-3 * 1e-9 / eps


# ------------------------------------------------------------------------------------------------
# bad spaces
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "action_space",
    [spaces.Discrete(3), spaces.MultiDiscrete([2, 3]), spaces.MultiBinary(2), spaces.Dict({"a": spaces.Box(-1, 1, (1,))})],
    ids=["discrete", "multidiscrete", "multibinary", "dict"],
)
@pytest.mark.parametrize("as_vec", [False, True])
def test_non_box_action_spaces_are_rejected_at_construction(action_space, as_vec):
    env = SpacesEnv(BOX3, action_space)
    with pytest.raises(ValueError, match=r"continuous \(Box\) action spaces"):
        HybridPG("MlpPolicy", DummyVecEnv([lambda: env]) if as_vec else env)


@pytest.mark.parametrize(
    "low, high",
    [(-np.inf, np.inf), (-1.0, np.inf), (-np.inf, 1.0), (np.array([-1.0, -np.inf]), np.array([1.0, 1.0]))],
)
def test_unbounded_action_boxes_are_rejected_at_construction(low, high):
    action_space = spaces.Box(np.broadcast_to(low, (2,)).astype(np.float32), np.broadcast_to(high, (2,)).astype(np.float32))
    with pytest.raises(ValueError, match="finite action bounds"):
        HybridPG("MlpPolicy", SpacesEnv(BOX3, action_space))


def test_degenerate_action_dimension_is_rejected_or_handled():
    action_space = spaces.Box(np.array([-1.0, 0.5], np.float32), np.array([1.0, 0.5], np.float32))
    env = SpacesEnv(BOX3, action_space)
    try:
        model = HybridPG("MlpPolicy", env, **KW)
    except ValueError as exc:  # acceptable: a clear refusal at construction
        assert "action" in str(exc)
        return
    model.learn(16 * 3)
    assert _finite(model)


def test_image_observations_with_mlp_policy_are_flattened_by_sb3():
    image = spaces.Box(0, 255, (36, 36, 3), np.uint8)
    model = HybridPG("MlpPolicy", SpacesEnv(image, BOX3), **KW)
    model.learn(32)
    assert model.policy.features_dim == 36 * 36 * 3 and _finite(model)


def test_policy_and_observation_space_mismatches_fail_like_sb3():
    dict_obs = spaces.Dict({"x": BOX3})
    with pytest.raises(ValueError, match="MultiInputPolicy"):
        HybridPG("MlpPolicy", SpacesEnv(dict_obs, BOX3))
    with pytest.raises(AssertionError, match="CnnPolicy"):
        HybridPG("CnnPolicy", SpacesEnv(BOX3, BOX3))
    with pytest.raises(RuntimeError, match="Kernel size"):  # NatureCNN needs >= 36x36
        HybridPG("CnnPolicy", SpacesEnv(spaces.Box(0, 255, (20, 20, 3), np.uint8), BOX3))
    # MultiInputPolicy on a Box: SB3's own, unclear AttributeError; the same as PPO's
    for algo in (PPO, HybridPG):
        with pytest.raises(AttributeError, match="spaces"):
            algo("MultiInputPolicy", SpacesEnv(BOX3, BOX3))
    with pytest.raises(ValueError, match="Policy MLPPolicy unknown"):
        HybridPG("MLPPolicy", SpacesEnv(BOX3, BOX3))


# ------------------------------------------------------------------------------------------------
# bad hyperparameters
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(lambda_window=0), "lambda_window"),
        (dict(lambda_window=-3), "lambda_window"),
        (dict(lambda_window=2.5), "lambda_window"),
        (dict(lambda_window=True), "lambda_window"),
        (dict(lambda_bounds=(-0.1, 1.0)), "lambda_bounds"),
        (dict(lambda_bounds=(0.0, 1.5)), "lambda_bounds"),
        (dict(lambda_bounds=(0.9, 0.1)), "lambda_bounds"),
        (dict(lambda_bounds=(0.0, math.nan)), "lambda_bounds"),
        (dict(lambda_bounds=(0.0, 0.5, 1.0)), "lambda_bounds"),
        (dict(estimator="ppo"), "estimator"),
        (dict(estimator=None), "estimator"),
        (dict(pathwise_source="learned"), "pathwise_source"),
        (dict(pathwise_source=None), "pathwise_source"),
        (dict(lambda_mode="window"), "lambda_mode"),
        (dict(fixed_lambda=math.nan), "fixed_lambda"),
        (dict(pathwise_kl_limit=math.nan), "pathwise_kl_limit"),
        (dict(lambda_detector="threshold=3", lambda_mode="adaptive"), "lambda_detector"),
    ],
)
def test_invalid_hyperparameters_fail_at_construction_naming_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}="):
        HybridPG("MlpPolicy", "Pendulum-v1", **kwargs)


def test_model_pathwise_source_needs_a_model_and_invertible_observations():
    from stable_baselines3.common.vec_env import VecFrameStack

    with pytest.raises(ValueError, match="pathwise_source='model'.*differentiable model"):
        HybridPG("MlpPolicy", "Pendulum-v1", pathwise_source="model")
    import hybrid_pg_envs  # noqa: F401  (registers hybrid_pg/Pendulum-v0)

    env = VecFrameStack(make_vec_env("hybrid_pg/Pendulum-v0", n_envs=1, seed=0), 2)
    with pytest.raises(ValueError, match="pathwise_source='model'.*VecFrameStack"):
        HybridPG("MlpPolicy", env, pathwise_source="model")
    # VecNormalize is supported: the source translates units (tests/test_mujoco_source.py)
    env = VecNormalize(make_vec_env("hybrid_pg/Pendulum-v0", n_envs=1, seed=0))
    assert HybridPG("MlpPolicy", env, pathwise_source="model").pathwise.normalization is not None


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(max_grad_norm=0.0), "max_grad_norm"),
        (dict(max_grad_norm=-1.0), "max_grad_norm"),
        (dict(max_grad_norm=math.nan), "max_grad_norm"),
        (dict(clip_range=math.nan), "clip_range"),
        (dict(target_kl=math.nan), "target_kl"),
    ],
)
def test_numeric_hyperparameters_that_break_training_are_rejected(kwargs, name):
    with pytest.raises(ValueError, match=name):
        HybridPG("MlpPolicy", "Pendulum-v1", **kwargs)


@pytest.mark.parametrize("decay", [1.0, -0.5, math.nan])
def test_lambda_decay_out_of_range_names_the_parameter(decay):
    with pytest.raises(ValueError, match="lambda_decay"):
        HybridPG("MlpPolicy", "Pendulum-v1", lambda_mode="ema", lambda_decay=decay)


def test_lambda_decay_outside_ema_mode_is_refused():
    with pytest.raises(ValueError, match="lambda_decay"):
        HybridPG("MlpPolicy", "Pendulum-v1", lambda_mode="sliding", lambda_decay=0.5)


@pytest.mark.parametrize("name, value", [("lambda_window", 4), ("bias_min_samples", 64), ("oracle_freq", 2), ("oracle_samples", 64)])
def test_numpy_integers_are_accepted_like_python_integers(name, value):
    model = HybridPG("MlpPolicy", "Pendulum-v1", n_steps=np.int64(32), **{name: np.int64(value)})
    assert getattr(model, name) == value


def test_oracle_without_a_buildable_env_fails_at_construction():
    from stable_baselines3.common.vec_env import SubprocVecEnv

    # in-process envs are deep-copied (no spec needed); an env in another process without a
    # gymnasium spec cannot be copied, and that is refused at construction, not at the first update
    assert HybridPG("MlpPolicy", _vec(), oracle_freq=1, **KW).oracle is not None
    env = SubprocVecEnv([lambda: PointEnv()], start_method="fork")
    try:
        with pytest.raises(ValueError, match="oracle_env"):
            HybridPG("MlpPolicy", env, oracle_freq=1, **KW)
    finally:
        env.close()
