"""The policy's optimizer: Adam/AdamW run torch's fused kernel unless the user chose, and the fused
kernel is the same algorithm as the loop (a training run agrees with the unfused one to float
rounding), survives save/load, and is switched off on a device torch has no kernel for."""

import numpy as np
import pytest
import torch as th

from hybrid_pg import HybridPG
from hybrid_pg.policies import make_optimizer, unfuse_where_unsupported


def _model(**policy_kwargs):
    return HybridPG("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32, n_epochs=2, seed=0, policy_kwargs=policy_kwargs or None)


def _params():
    return [th.nn.Parameter(th.ones(3))]


def test_adam_is_fused_unless_the_user_chose():
    assert _model().policy.optimizer.param_groups[0]["fused"] is True
    assert _model(optimizer_kwargs=dict(fused=False)).policy.optimizer.param_groups[0]["fused"] is False
    foreach = _model(optimizer_kwargs=dict(foreach=True)).policy.optimizer.param_groups[0]
    assert foreach["foreach"] is True and not foreach["fused"]
    # SB3's eps for Adam stays; other optimizers are left as they are
    assert _model().policy.optimizer.param_groups[0]["eps"] == 1e-5
    rms = _model(optimizer_class=th.optim.RMSprop).policy.optimizer
    assert isinstance(rms, th.optim.RMSprop) and not rms.param_groups[0].get("fused")
    assert make_optimizer(th.optim.SGD, _params(), 0.1, {}).param_groups[0].get("fused") in (None, False)


def test_the_fused_kernel_is_the_same_algorithm_as_the_loop():
    """One policy's parameters, the same losses: fused and looped Adam agree to float rounding over
    many steps (a whole training run would not do as a check: rounding differences change the next
    rollout's actions and the runs drift apart, as any two builds of torch do)."""
    steps = []
    for kwargs in ({}, dict(eps=1e-5, fused=False)):  # SB3's eps when no optimizer_kwargs are given
        policy = _model(optimizer_kwargs=kwargs).policy if kwargs else _model().policy
        generator = th.Generator().manual_seed(0)
        start = th.nn.utils.parameters_to_vector(policy.parameters()).detach().clone()
        for _ in range(50):
            obs = th.randn(32, 3, generator=generator)
            actions, values, log_prob = policy(obs)
            loss = (values**2).mean() + (policy.actor_mean(obs) ** 2).mean() + policy.log_std.sum()
            policy.optimizer.zero_grad()
            loss.backward()
            policy.optimizer.step()
        steps.append(th.nn.utils.parameters_to_vector(policy.parameters()).detach() - start)
    fused, loop = steps
    assert float(fused.norm()) > 1e-2
    assert float((fused - loop).norm()) < 1e-4 * float(fused.norm())


def test_a_fused_model_saves_and_loads(tmp_path):
    model = _model()
    model.learn(128)
    model.save(tmp_path / "m.zip")
    loaded = HybridPG.load(tmp_path / "m.zip", env=model.get_env())
    assert loaded.policy.optimizer.param_groups[0]["fused"] is True
    loaded.learn(128)
    obs = np.zeros((1, 3), dtype=np.float32)
    assert np.all(np.isfinite(loaded.predict(obs, deterministic=True)[0]))


def test_a_device_without_the_kernel_gets_the_loop():
    optimizer = make_optimizer(th.optim.Adam, _params(), 0.1, {})
    assert optimizer.param_groups[0]["fused"] is True
    unfuse_where_unsupported(optimizer, th.device("cpu"))
    assert optimizer.param_groups[0]["fused"] is True
    unfuse_where_unsupported(optimizer, th.device("meta"))
    assert optimizer.param_groups[0]["fused"] is False


@pytest.mark.parametrize("kwargs", [dict(fused=True, foreach=True)])
def test_a_contradictory_user_choice_is_torchs_error(kwargs):
    with pytest.raises(RuntimeError, match="foreach"):
        make_optimizer(th.optim.Adam, _params(), 0.1, kwargs)
