"""The advantage head's LayerNorm option: its layers, invariance to the scale of each layer's
pre-activations, the pathwise gradient through it, save/load, and bad values."""

import pytest
import torch as th
from gymnasium import spaces
from torch import nn

from hybrid_pg import HybridPG
from hybrid_pg.policies import AdvantageHead
from hybrid_pg.surrogates import FrozenModule

BOX = spaces.Box(-2.0, 2.0, (2,))


def test_default_layers_are_sb3s_and_keep_their_keys():
    th.manual_seed(0)
    head = AdvantageHead(3, BOX, [8, 8], nn.Tanh)
    assert [type(m) for m in head.mlp] == [nn.Linear, nn.Tanh, nn.Linear, nn.Tanh, nn.Linear]
    assert sorted(k for k in head.state_dict() if k.startswith("mlp.")) == [
        "mlp.0.bias", "mlp.0.weight", "mlp.2.bias", "mlp.2.weight", "mlp.4.bias", "mlp.4.weight",
    ]  # fmt: skip


def test_layer_norm_makes_the_head_blind_to_the_scale_of_its_first_layer():
    """LayerNorm right after each hidden Linear: scaling that layer's weights and bias by c > 0
    leaves the output unchanged (up to LayerNorm's eps); without LayerNorm it changes."""
    for layer_norm in (True, False):
        th.manual_seed(0)
        head = AdvantageHead(3, BOX, [8, 8], nn.Tanh, layer_norm=layer_norm)
        features, actions = th.randn(16, 3), th.rand(16, 2) * 4 - 2
        before = head(features, actions)
        with th.no_grad():
            head.mlp[0].weight.mul_(7.0)
            head.mlp[0].bias.mul_(7.0)
        after = head(features, actions)
        assert th.allclose(before, after, atol=1e-4) == layer_norm
    assert [type(m) for m in head.mlp[:3]] == [nn.Linear, nn.Tanh, nn.Linear]
    th.manual_seed(0)
    normed = AdvantageHead(3, BOX, [8, 8], nn.Tanh, layer_norm=True)
    assert [type(m) for m in normed.mlp] == [nn.Linear, nn.LayerNorm, nn.Tanh, nn.Linear, nn.LayerNorm, nn.Tanh, nn.Linear]


def test_the_frozen_head_passes_action_gradients_through_layer_norm_and_none_to_its_weights():
    th.manual_seed(0)
    head = AdvantageHead(3, BOX, [8, 8], nn.Tanh, layer_norm=True)
    features, actions = th.randn(4, 3), (th.rand(4, 2) * 2 - 1).requires_grad_(True)
    FrozenModule(head)(features, actions).sum().backward()
    expected = th.autograd.functional.jacobian(lambda a: head(features, a).sum(), actions.detach())
    assert th.allclose(actions.grad, expected, atol=1e-6)
    assert all(p.grad is None for p in head.parameters())


def test_a_model_trains_saves_and_loads_with_the_option(tmp_path):
    model = HybridPG(
        "MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32, n_epochs=2, seed=0, policy_kwargs=dict(advantage_layer_norm=True)
    )
    assert any(isinstance(m, nn.LayerNorm) for m in model.policy.advantage_head.modules())
    model.learn(256)
    assert model.policy.advantage_head.mlp[1].weight.grad is not None  # the head's LayerNorm is trained
    model.save(tmp_path / "m.zip")
    loaded = HybridPG.load(tmp_path / "m.zip", env=model.get_env())
    assert loaded.policy.advantage_layer_norm is True
    for a, b in zip(model.policy.parameters(), loaded.policy.parameters()):
        assert th.equal(a, b)


def test_a_bad_value_is_refused():
    with pytest.raises(ValueError, match="advantage_layer_norm must be True or False"):
        HybridPG("MlpPolicy", "Pendulum-v1", n_steps=64, policy_kwargs=dict(advantage_layer_norm="yes"))
