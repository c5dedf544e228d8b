"""FrozenModule: the module's output, gradients to its inputs and none to its weights, current
after optimizer steps and state-dict loads, in the module's train/eval mode."""

import torch as th
from torch import nn

from hybrid_pg.surrogates import FrozenModule


def _net():
    th.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 1))


def test_same_output_gradient_to_the_input_only():
    net = _net().eval()
    frozen = FrozenModule(net)
    x = th.randn(5, 3, requires_grad=True)
    out = frozen(x)
    assert th.equal(out, net(x))
    out.sum().backward()
    expected = th.autograd.grad(net(x).sum(), x)[0]
    assert th.allclose(x.grad, expected)
    assert all(p.grad is None for p in net.parameters())


def test_it_follows_optimizer_steps_and_loaded_weights():
    net = _net().eval()
    frozen = FrozenModule(net)
    x = th.randn(5, 3)
    optimizer = th.optim.Adam(net.parameters(), lr=0.1, fused=True)
    net(x).pow(2).sum().backward()
    optimizer.step()
    assert th.equal(frozen(x), net(x))
    net.load_state_dict(_net().state_dict())
    assert th.equal(frozen(x), _net().eval()(x))


def test_it_follows_train_and_eval_mode():
    net = _net()
    frozen = FrozenModule(net)
    x = th.ones(64, 3)
    net.eval()
    assert th.equal(frozen(x), net(x))
    net.train()
    th.manual_seed(1)
    a = frozen(x)
    th.manual_seed(1)
    assert th.equal(a, net(x))  # dropout active in both, same mask


def test_a_shared_submodule_and_buffers():
    layer = nn.Linear(2, 2)
    net = nn.Sequential(layer, nn.BatchNorm1d(2), layer).eval()
    frozen = FrozenModule(net)
    x = th.randn(4, 2)
    net[1].running_mean.add_(1.0)  # in place, as BatchNorm updates it
    assert th.equal(frozen(x), net(x))
