"""The advantage head's options: LayerNorm (its layers, invariance to the scale of each layer's
pre-activations) and the HL-Gauss histogram loss (its value is the histogram's mean, a fit recovers a
known advantage and its action-gradient); the pathwise gradient through both, save/load, bad values."""

import warnings

import pytest
import torch as th
from gymnasium import spaces
from torch import nn

from hybrid_pg import HybridPG
from hybrid_pg.histogram_loss import hl_gauss_loss
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


def test_the_hl_gauss_head_returns_its_histograms_mean_and_trains_on_cross_entropy():
    th.manual_seed(0)
    head = AdvantageHead(3, BOX, [8, 8], nn.Tanh, loss="hl_gauss", bins=21, support=(-2.0, 2.0))
    features, actions = th.randn(5, 3), th.rand(5, 2) * 4 - 2
    logits = head.outputs(features, actions)
    assert logits.shape == (5, 21)
    centres = th.linspace(-2.0, 2.0, 22)[:-1] + 2.0 / 21
    assert th.allclose(head(features, actions), th.softmax(logits, -1) @ centres, atol=1e-6)
    targets = th.randn(5)
    expected = hl_gauss_loss(logits, targets, th.linspace(-2.0, 2.0, 22), 0.75 * 4.0 / 21)
    assert th.allclose(head.regression_loss(features, actions, targets), expected)
    # the default head's loss is the squared error of its one output
    th.manual_seed(0)
    plain = AdvantageHead(3, BOX, [8, 8], nn.Tanh)
    assert th.allclose(plain.regression_loss(features, actions, targets), ((plain(features, actions) - targets) ** 2).mean())


@pytest.mark.parametrize("layer_norm", [False, True])
def test_the_frozen_hl_gauss_head_passes_action_gradients_and_none_to_its_weights(layer_norm):
    th.manual_seed(0)
    head = AdvantageHead(3, BOX, [8, 8], nn.Tanh, layer_norm=layer_norm, loss="hl_gauss", bins=31)
    features, actions = th.randn(4, 3), (th.rand(4, 2) * 2 - 1).requires_grad_(True)
    FrozenModule(head)(features, actions).sum().backward()
    expected = th.autograd.functional.jacobian(lambda a: head(features, a).sum(), actions.detach())
    assert th.allclose(actions.grad, expected, atol=1e-6)
    assert actions.grad.abs().sum() > 0
    assert all(p.grad is None for p in head.parameters())


@pytest.mark.parametrize("loss", ["mse", "hl_gauss"])
def test_a_fit_on_noisy_targets_recovers_a_known_advantage_and_its_action_gradient(loss):
    """A(s, a) = sin(s0) a0 - 0.5 a1^2 + s1 a1 plus heavy-tailed noise (Student t, 3 dof): the
    fitted head's values and dA/da (what the pathwise gradient uses) are close to the truth on
    fresh points. The same budget for both losses; both must pass."""
    gen = th.Generator().manual_seed(0)
    th.manual_seed(0)
    head = AdvantageHead(2, BOX, [64, 64], nn.Tanh, loss=loss)

    def true_advantage(s, a):
        return th.sin(s[:, 0]) * a[:, 0] - 0.5 * a[:, 1] ** 2 + s[:, 1] * a[:, 1]

    opt = th.optim.Adam(head.parameters(), lr=3e-3)
    t_noise = th.distributions.StudentT(3.0)
    for _ in range(1500):
        s, a = th.randn(256, 2, generator=gen), th.rand(256, 2, generator=gen) * 2 - 1
        noise = t_noise.sample((256,)) * 0.5
        opt.zero_grad()
        head.regression_loss(s, a, true_advantage(s, a) + noise).backward()
        opt.step()
    s, a = th.randn(512, 2, generator=gen), (th.rand(512, 2, generator=gen) * 1.6 - 0.8).requires_grad_(True)
    fitted = head(s, a)
    truth = true_advantage(s, a)
    assert float(th.corrcoef(th.stack([fitted.detach(), truth.detach()]))[0, 1]) > 0.95
    (grad_fit,) = th.autograd.grad(fitted.sum(), a)
    (grad_true,) = th.autograd.grad(truth.sum(), a)
    cosine = th.nn.functional.cosine_similarity(grad_fit.flatten(), grad_true.flatten(), dim=0)
    assert float(cosine) > 0.9


def test_a_model_trains_saves_and_loads_with_the_hl_gauss_head(tmp_path):
    kwargs = dict(advantage_loss="hl_gauss", advantage_bins=51, advantage_support=(-4.0, 4.0), advantage_layer_norm=True)
    model = HybridPG("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32, n_epochs=2, seed=0, policy_kwargs=kwargs)
    assert model.policy.advantage_head.mlp[-1].out_features == 51
    before = [p.detach().clone() for p in model.policy.advantage_head.parameters()]
    model.learn(256)
    assert any(not th.equal(a, b) for a, b in zip(before, model.policy.advantage_head.parameters()))  # the head trains
    model.save(tmp_path / "m.zip")
    loaded = HybridPG.load(tmp_path / "m.zip", env=model.get_env())
    assert (loaded.policy.advantage_loss, loaded.policy.advantage_bins, loaded.policy.advantage_support) == ("hl_gauss", 51, (-4.0, 4.0))
    for a, b in zip(model.policy.parameters(), loaded.policy.parameters()):
        assert th.equal(a, b)
    features, actions = th.randn(3, loaded.policy.features_dim), th.zeros(3, 1)
    assert th.equal(model.policy.advantage(features, actions), loaded.policy.advantage(features, actions))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(advantage_loss="huber"), "advantage_loss must be one of"),
        (dict(advantage_loss="hl_gauss", advantage_bins=1), "bins >= 2"),
        (dict(advantage_loss="hl_gauss", advantage_support=(1.0, -1.0)), "low < high"),
        (dict(advantage_loss="hl_gauss", advantage_support="wide"), "advantage_support must be a pair"),
        (dict(advantage_loss="hl_gauss", advantage_support=(0.0, 1.0, 2.0)), "advantage_support must be a pair"),
    ],
)
def test_bad_hl_gauss_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HybridPG("MlpPolicy", "Pendulum-v1", n_steps=64, policy_kwargs=kwargs)


def test_unnormalised_advantages_with_the_default_support_warn():
    with pytest.warns(UserWarning, match="normalize_advantage=False"):
        HybridPG("MlpPolicy", "Pendulum-v1", n_steps=64, normalize_advantage=False, policy_kwargs=dict(advantage_loss="hl_gauss"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        HybridPG("MlpPolicy", "Pendulum-v1", n_steps=64, policy_kwargs=dict(advantage_loss="hl_gauss"))
        HybridPG(  # the user chose the range
            "MlpPolicy",
            "Pendulum-v1",
            n_steps=64,
            normalize_advantage=False,
            policy_kwargs=dict(advantage_loss="hl_gauss", advantage_support=(-300.0, 300.0)),
        )
