"""The two RL surrogates whose gradients HybridPG mixes, written once for batches.

Per rollout sample i (state s_i, stored action a_i, GAE advantage A_i):

    eps_i   = (a_i - mu_old(s_i)) / sigma_old            the noise that produced a_i
    score_i = A_i * log pi_theta(a_i | s_i)              gradient: A_i dlog pi / dtheta  (REINFORCE)
    path_i  = c * Q~(s_i, clip(mu_theta(s_i) + sigma_theta * eps_i))
                                                         gradient: c dQ~/da da/dtheta    (pathwise)

At theta = theta_old both gradients estimate the same thing, the policy gradient of E[Q(s, a)] at
state s_i, and the pathwise action is exactly the action the environment saw (same clip). c is the
factor the advantages were divided by when normalised (1 otherwise), so both terms stay on the same
scale.

Q~ comes from a pathwise source (:mod:`hybrid_pg.sources`): the learned advantage head A_phi (its
parameters frozen in these surrogates) or a k-step return through a differentiable model of the
environment. The batched training loss and the per-sample statistics (:mod:`hybrid_pg.per_sample`)
call the same ``source.value``, so the update and its statistics cannot disagree.
"""

from __future__ import annotations

import copy
import math
from typing import Optional

import torch as th
from torch import nn

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def gaussian_log_prob(mean: th.Tensor, log_std: th.Tensor, actions: th.Tensor) -> th.Tensor:
    """log N(actions; mean, diag exp(log_std)^2), summed over action dimensions -> (B,)."""
    z = (actions - mean) * th.exp(-log_std)
    return (-0.5 * z * z - log_std - _LOG_SQRT_2PI).sum(-1)


def clipped_surrogate(ratio: th.Tensor, weights: th.Tensor, clip_range: Optional[float]) -> th.Tensor:
    """PPO's per-sample surrogate min(r w, clip(r, 1 - eps, 1 + eps) w) (plain r w without a clip
    range): its gradient at theta_old is w dlog pi, and later epochs stop pushing a sample once its
    ratio has left the clip range in the direction w favours."""
    obj = ratio * weights
    if clip_range is not None:
        obj = th.min(obj, th.clamp(ratio, 1 - clip_range, 1 + clip_range) * weights)
    return obj


def gaussian_entropy(log_std: th.Tensor) -> th.Tensor:
    """Entropy of a diagonal Gaussian (state-independent std): sum(log_std + 0.5 log(2 pi e))."""
    return (log_std + _LOG_SQRT_2PI + 0.5).sum(-1)


def gaussian_kl(mean_p: th.Tensor, log_std_p: th.Tensor, mean_q: th.Tensor, log_std_q: th.Tensor) -> th.Tensor:
    """KL(N(mean_p, std_p^2) || N(mean_q, std_q^2)) per row, summed over action dimensions."""
    var_ratio = th.exp(2.0 * (log_std_p - log_std_q))
    return (log_std_q - log_std_p + 0.5 * (var_ratio + (mean_p - mean_q) ** 2 * th.exp(-2.0 * log_std_q)) - 0.5).sum(-1)


def scale_gradient(x: th.Tensor, weight: float) -> th.Tensor:
    """Same value as ``x``; the gradient flowing back through it is multiplied by ``weight``.

    This is how one loss, path(mu_p, log_std_p) + score(mu_s, log_std_s), yields the mixed gradient
    lam * g_P + (1 - lam) * g_M in a single backward pass, with a separate lam per parameter group
    (the mean network reaches the loss only through mu, log_std only through log_std).
    """
    if weight == 1.0:
        return x
    if weight == 0.0:
        return x.detach()
    return x * weight + x.detach() * (1.0 - weight)


class FrozenModule:
    """Call ``module`` with its parameters detached: gradients reach the inputs, never the weights.

    The pathwise surrogate differentiates Q~ with respect to the *action* only; without this, the
    actor's objective would push the critic's weights towards larger Q. A twin of the module is made
    once whose parameters are detached views of the live ones (same storage, so in-place optimizer
    steps and ``load_state_dict`` reach it) and whose buffers are the live buffers; calling it is a
    plain forward. (``torch.func.functional_call`` does the same per call, at a cost that was 8% of
    an update with the advantage head.) The twin follows the module's train/eval mode. It is a copy
    made once: it sees the module's weights as they change, not a ``forward`` replaced on the
    instance afterwards (subclass the module instead).
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self._twin = _detached_twin(module)

    def __call__(self, *args: th.Tensor) -> th.Tensor:
        if self._twin.training != self.module.training:
            self._twin.train(self.module.training)
        return self._twin(*args)


def _detached_twin(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters are plain tensors sharing the live parameters' storage
    (detached: no gradient reaches the live weights) and whose buffers are the live buffers."""
    twin = copy.deepcopy(module)
    for (_, twin_sub), (_, live_sub) in zip(twin.named_modules(remove_duplicate=False), module.named_modules(remove_duplicate=False)):
        for name, param in live_sub._parameters.items():
            if name in twin_sub._parameters:  # a submodule used twice is visited twice
                del twin_sub._parameters[name]
                setattr(twin_sub, name, None if param is None else param.detach())
        for name, buffer in live_sub._buffers.items():
            twin_sub._buffers[name] = buffer
    return twin


class ValueHead(nn.Module):
    """V(features) = value_net(mlp_extractor.value_net(features)) as one module (for FrozenModule)."""

    def __init__(self, latent_value_net: nn.Module, value_net: nn.Module) -> None:
        super().__init__()
        self.latent_value_net = latent_value_net
        self.value_net = value_net

    def forward(self, features: th.Tensor) -> th.Tensor:
        return self.value_net(self.latent_value_net(features)).squeeze(-1)


class ActorHead(nn.Module):
    """mu(features) = action_net(mlp_extractor.policy_net(features)) as one module.

    Its parameters are the 'mean network' parameter group of the statistics.
    """

    def __init__(self, latent_policy_net: nn.Module, action_net: nn.Module) -> None:
        super().__init__()
        self.latent_policy_net = latent_policy_net
        self.action_net = action_net

    def forward(self, features: th.Tensor) -> th.Tensor:
        return self.action_net(self.latent_policy_net(features))
