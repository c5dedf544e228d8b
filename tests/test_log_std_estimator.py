"""log_std_estimator='score': the spread follows the score-function estimator alone, the mean still
mixes (a candidate of the weight rules; the default 'mix' leaves behaviour and run names unchanged)."""

import pytest
import torch as th

from hybrid_pg import HybridPG
from hybrid_pg.experiments.config import resolve_config
from hybrid_pg.experiments.runner import run_key
from hybrid_pg.settings import SettingsError


def _model(**kwargs):
    settings = dict(n_steps=128, batch_size=64, n_epochs=2, lambda_warmup=0, seed=0, device="cpu")
    return HybridPG("MlpPolicy", "Pendulum-v1", **{**settings, **kwargs})


def test_score_for_log_std_applies_no_pathwise_term_to_log_std():
    model = _model(log_std_estimator="score")
    model.learn(512)
    assert model.last_lambda["log_std"] == 0.0
    assert model.last_lambda["mean"] == model.last_lambda["global"]
    assert model.last_lambda["mean"] > 0.0  # the mean network still mixes
    assert model.logger.name_to_value["hybrid/lambda_log_std"] == 0.0


def test_log_std_gradient_is_the_score_gradient_alone():
    """With lam(log_std) = 0 the update's log_std gradient does not depend on the pathwise source:
    scaling the source's values leaves it unchanged (one step at lr 0 gives the gradient)."""
    grads = []
    for factor in (1.0, 10.0):
        # lr 0 and no gradient clipping: .grad after one full-batch step is the update's gradient
        model = _model(log_std_estimator="score", learning_rate=0.0, fixed_lambda=0.5, n_epochs=1, batch_size=128, max_grad_norm=1e12)
        model.learn(128)  # builds the source
        source = model.pathwise
        value = source.value
        source.value = lambda *a, _v=value, _f=factor, **k: _f * _v(*a, **k)
        model.learn(128, reset_num_timesteps=False)
        grads.append((model.policy.log_std.grad.clone(), model.policy.action_net.bias.grad.clone()))
    th.testing.assert_close(grads[0][0], grads[1][0])
    assert not th.allclose(grads[0][1], grads[1][1])  # the mean's gradient does see the source


def test_default_mix_keeps_behaviour_and_run_names():
    assert _model().settings.log_std_estimator == "mix"
    config = resolve_config({"env": {"id": "Pendulum-v1"}, "algo": {}, "train": {"total_timesteps": 100}})
    explicit = resolve_config({"env": {"id": "Pendulum-v1"}, "algo": {"log_std_estimator": "mix"}, "train": {"total_timesteps": 100}})
    other = resolve_config({"env": {"id": "Pendulum-v1"}, "algo": {"log_std_estimator": "score"}, "train": {"total_timesteps": 100}})
    assert run_key("c", config) == run_key("c", explicit) != run_key("c", other)
    key_without = run_key("c", {**config, "algo": {k: v for k, v in config["algo"].items() if k != "log_std_estimator"}})
    assert run_key("c", config) == key_without  # the name a run had before the setting existed


def test_bad_values_are_refused():
    with pytest.raises((SettingsError, ValueError), match="log_std_estimator"):
        _model(log_std_estimator="pathwise")
