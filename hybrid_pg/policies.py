"""Policies for HybridPG: SB3's actor-critic policies plus an action-value critic head.

The pathwise estimator needs dQ/da. With ``pathwise_source="critic"`` it comes from a learned
advantage head A_phi(s, a): Q_phi(s, a) = V(s) + A_phi(s, a), and only A_phi depends on the action,
so only A_phi is needed for the pathwise gradient and only A_phi is regressed on the rollout's
advantages (V already explains the state-dependent part, which makes the regression easier than
fitting Q from scratch).

The actions the critic sees are the actions the environment saw: clipped to the Box bounds, then
rescaled to [-1, 1] for conditioning.

Adam and AdamW run torch's fused kernel by default where torch has one for the parameters' device
(CPU since torch 2.4, CUDA): the same algorithm in one kernel instead of a Python loop over the
parameter tensors, which for the small networks of control tasks is a large share of an update's
time. ``policy_kwargs=dict(optimizer_kwargs=dict(fused=False))`` (or any ``fused``/``foreach``
choice) keeps the user's.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, NatureCNN, create_mlp
from stable_baselines3.common.type_aliases import Schedule
from torch import nn
from torch.nn import functional as F

from hybrid_pg import histogram_loss

#: the HL-Gauss head's default bins' range: advantages normalised over the rollout have unit spread
DEFAULT_ADVANTAGE_SUPPORT = (-5.0, 5.0)


class AdvantageHead(nn.Module):
    """A_phi(features, a): an MLP on [features, a rescaled from the Box bounds to [-1, 1]].

    With ``layer_norm`` every hidden layer is Linear -> LayerNorm -> activation (the normalised
    layers of REPPO's critic, Voelcker et al. 2025): the head's inputs to each nonlinearity keep a
    fixed scale however its weights grow (tested), meant to keep its action-gradient from sharpening
    as it fits noisy advantages; whether it helps is measured on the selection seeds, not assumed.
    Without it the layers are SB3's ``create_mlp`` (saved models keep their keys).

    With ``loss="hl_gauss"`` the last layer gives logits over ``bins`` bins covering ``support`` and
    A_phi is the mean of that histogram, trained by the HL-Gauss cross-entropy
    (:mod:`hybrid_pg.histogram_loss`; REPPO's value loss); with ``loss="mse"`` (the default) it is one
    output trained by squared error. Either way ``forward`` returns A_phi, so every consumer (the
    pathwise surrogate, the audit) is unchanged.
    """

    # buffers (registered in __init__), declared for type checkers
    action_low: th.Tensor
    action_high: th.Tensor

    bin_edges: th.Tensor
    bin_centres: th.Tensor

    def __init__(
        self,
        features_dim: int,
        action_space: spaces.Box,
        net_arch: List[int],
        activation_fn: Type[nn.Module],
        layer_norm: bool = False,
        loss: str = "mse",
        bins: int = 101,
        support: Tuple[float, float] = DEFAULT_ADVANTAGE_SUPPORT,
    ) -> None:
        super().__init__()
        self.loss, bins, (low, high) = head_loss_options(loss, bins, support)
        action_dim = int(np.prod(action_space.shape))
        out_dim = 1
        if loss == "hl_gauss":
            edges = histogram_loss.bin_edges(low, high, bins)
            self.register_buffer("bin_edges", edges, persistent=False)
            self.register_buffer("bin_centres", histogram_loss.bin_centres(edges), persistent=False)
            self.sigma = histogram_loss.SIGMA_BIN_RATIO * (high - low) / bins
            out_dim = bins
        self.mlp = nn.Sequential(*_mlp(features_dim + action_dim, net_arch, activation_fn, layer_norm, out_dim))
        self.register_buffer("action_low", th.as_tensor(action_space.low, dtype=th.float32).flatten(), persistent=False)
        self.register_buffer("action_high", th.as_tensor(action_space.high, dtype=th.float32).flatten(), persistent=False)

    def clip_action(self, actions: th.Tensor) -> th.Tensor:
        return th.maximum(th.minimum(actions, self.action_high), self.action_low)

    def outputs(self, features: th.Tensor, clipped_actions: th.Tensor) -> th.Tensor:
        """The last layer's outputs: shape (B, 1) for ``loss="mse"``, the logits (B, bins) for HL-Gauss."""
        actions = clipped_actions.reshape(clipped_actions.shape[0], -1)
        width = self.action_high - self.action_low
        # a zero-width dimension (low == high, legal in gymnasium) carries no information: feed 0
        scaled = th.where(width > 0, 2.0 * (actions - self.action_low) / width.clamp_min(1e-12) - 1.0, th.zeros_like(actions))
        return self.mlp(th.cat([features, scaled], dim=1))

    def forward(self, features: th.Tensor, clipped_actions: th.Tensor) -> th.Tensor:
        out = self.outputs(features, clipped_actions)
        if self.loss == "hl_gauss":
            return histogram_loss.histogram_mean(out, self.bin_centres)
        return out.squeeze(-1)

    def regression_loss(self, features: th.Tensor, clipped_actions: th.Tensor, targets: th.Tensor) -> th.Tensor:
        """The head's loss against ``targets`` (B,): squared error, or HL-Gauss cross-entropy."""
        out = self.outputs(features, clipped_actions)
        if self.loss == "hl_gauss":
            return histogram_loss.hl_gauss_loss(out, targets, self.bin_edges, self.sigma)
        return F.mse_loss(out.squeeze(-1), targets)


#: the advantage head's training losses (``policy_kwargs=dict(advantage_loss=...)``)
ADVANTAGE_LOSSES = ("mse", "hl_gauss")


def head_loss_options(loss: Any, bins: Any, support: Any) -> Tuple[str, int, Tuple[float, float]]:
    """The advantage head's loss options checked (ValueError naming the policy keyword) and
    normalised: ``(loss, bins, (low, high))``. Bins and support are checked whatever the loss."""
    if loss not in ADVANTAGE_LOSSES:
        raise ValueError(f"advantage_loss must be one of {ADVANTAGE_LOSSES}, got {loss!r}")
    try:
        low, high = (float(v) for v in support)
    except (TypeError, ValueError):
        raise ValueError(f"advantage_support must be a pair (low, high) of numbers, got {support!r}") from None
    histogram_loss.check_support(low, high, bins)
    return loss, bins, (low, high)


def _mlp(in_dim: int, net_arch: List[int], activation_fn: Type[nn.Module], layer_norm: bool, out_dim: int = 1) -> List[nn.Module]:
    if not layer_norm:
        return create_mlp(in_dim, out_dim, net_arch, activation_fn)
    layers: List[nn.Module] = []
    for width in net_arch:
        layers += [nn.Linear(in_dim, width), nn.LayerNorm(width), activation_fn()]
        in_dim = width
    return layers + [nn.Linear(in_dim, out_dim)]


#: optimizers whose fused kernel is the same algorithm as their loop (torch.optim's docs)
FUSED_BY_DEFAULT = (th.optim.Adam, th.optim.AdamW)


def make_optimizer(optimizer_class: Type[th.optim.Optimizer], params: Any, lr: float, kwargs: Mapping[str, Any]) -> th.optim.Optimizer:
    """``optimizer_class(params, lr, **kwargs)``, with ``fused=True`` added for Adam/AdamW when the
    user chose neither ``fused`` nor ``foreach`` and torch has the kernel for these parameters."""
    params = list(params)
    if optimizer_class in FUSED_BY_DEFAULT and not {"fused", "foreach"} & set(kwargs):
        try:
            return optimizer_class(params, lr=lr, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):  # no fused kernel for this torch or device
            pass
    return optimizer_class(params, lr=lr, **kwargs)  # type: ignore[call-arg]


def unfuse_where_unsupported(optimizer: th.optim.Optimizer, device: th.device) -> None:
    """Turn the fused kernel off when the parameters moved to a device torch has none for (the
    policy is built on the CPU and moved afterwards)."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        supported = set(_get_fused_kernels_supported_devices())
    except ImportError:  # an older torch: its fused kernels were CUDA's
        supported = {"cuda"}
    if device.type not in supported:
        for group in optimizer.param_groups:
            if group.get("fused"):
                group["fused"] = False


class HybridActorCriticPolicy(ActorCriticPolicy):
    """Diagonal-Gaussian actor, V critic (for GAE) and advantage critic A_phi(s, a).

    Accepts every argument of :class:`stable_baselines3.common.policies.ActorCriticPolicy`, plus:

    :param advantage_net_arch: hidden layer sizes of the advantage head A_phi(s, a) (default [64, 64]).
    :param advantage_layer_norm: LayerNorm after each hidden layer of the advantage head (see
        :class:`AdvantageHead`; default False).
    :param advantage_loss: how the advantage head is trained: ``"mse"`` (squared error, default) or
        ``"hl_gauss"`` (a histogram over ``advantage_bins`` bins and the HL-Gauss cross-entropy, as
        REPPO's critic; see :mod:`hybrid_pg.histogram_loss`).
    :param advantage_bins: number of bins of the ``"hl_gauss"`` head (default 101).
    :param advantage_support: ``(low, high)`` covered by the ``"hl_gauss"`` head's bins, in the
        units of the advantages it is regressed on (default (-5, 5): HybridPG normalises advantages
        over the rollout by default, so they have unit spread; set it when ``normalize_advantage=False``).
        Targets outside are clipped to its ends.
    :param q_net_arch: deprecated name of ``advantage_net_arch``.

    Adam/AdamW use torch's fused kernel unless ``optimizer_kwargs`` chooses (see the module's doc).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        *args: Any,
        advantage_net_arch: Optional[List[int]] = None,
        advantage_layer_norm: bool = False,
        advantage_loss: str = "mse",
        advantage_bins: int = 101,
        advantage_support: Tuple[float, float] = DEFAULT_ADVANTAGE_SUPPORT,
        q_net_arch: Optional[List[int]] = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(action_space, spaces.Box):
            raise ValueError(f"HybridPG policies need a Box action space, got {action_space}")
        if q_net_arch is not None:
            if advantage_net_arch is not None:
                raise ValueError("q_net_arch is the deprecated name of advantage_net_arch; give only advantage_net_arch")
            warnings.warn("policy_kwargs 'q_net_arch' is deprecated; use 'advantage_net_arch'", DeprecationWarning, stacklevel=2)
            advantage_net_arch = q_net_arch
        self.advantage_net_arch = [64, 64] if advantage_net_arch is None else list(advantage_net_arch)
        if not isinstance(advantage_layer_norm, bool):
            raise ValueError(f"advantage_layer_norm must be True or False, got {advantage_layer_norm!r}")
        self.advantage_layer_norm = advantage_layer_norm
        # checked here, before the parent builds anything, and again by the head itself
        self.advantage_loss, self.advantage_bins, self.advantage_support = head_loss_options(
            advantage_loss, advantage_bins, advantage_support
        )
        super().__init__(observation_space, action_space, lr_schedule, *args, **kwargs)

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)
        assert isinstance(self.action_space, spaces.Box)  # checked in __init__
        self.advantage_head = AdvantageHead(
            self.features_dim,
            self.action_space,
            self.advantage_net_arch,
            self.activation_fn,
            layer_norm=self.advantage_layer_norm,
            loss=self.advantage_loss,
            bins=self.advantage_bins,
            support=self.advantage_support,
        )
        # the optimizer built by the parent does not know the new head
        self.optimizer = make_optimizer(self.optimizer_class, self.parameters(), lr_schedule(1), self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> Dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            advantage_net_arch=self.advantage_net_arch,
            advantage_layer_norm=self.advantage_layer_norm,
            advantage_loss=self.advantage_loss,
            advantage_bins=self.advantage_bins,
            advantage_support=self.advantage_support,
        )
        return data

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Also reads models saved before the head was renamed (``q_net.*`` -> ``advantage_head.*``)."""
        renamed = {("advantage_head." + k[len("q_net.") :] if k.startswith("q_net.") else k): v for k, v in state_dict.items()}
        return super().load_state_dict(renamed, strict=strict, assign=assign)

    def extract_features(self, obs: th.Tensor, features_extractor: Optional[BaseFeaturesExtractor] = None) -> Any:  # type: ignore[override]
        """SB3's, except that an explicit extractor is always used: with ``share_features_extractor=False``
        SB3 ignores it and returns the ``(pi, vf)`` tuple, but HybridPG asks for one branch's features."""
        if features_extractor is None or self.share_features_extractor:
            return super().extract_features(obs, features_extractor)
        return BasePolicy.extract_features(self, obs, features_extractor)

    # -- pieces the algorithm differentiates through ------------------------------------------------

    def clip_action(self, actions: th.Tensor) -> th.Tensor:
        """The action the environment sees (SB3 clips to the Box bounds before ``env.step``).

        Gradients pass where the action is inside the bounds and are zero where it is clipped,
        exactly like the environment's response.
        """
        return self.advantage_head.clip_action(actions)

    def advantage_features(self, obs: th.Tensor) -> th.Tensor:
        """Features the advantage head conditions on (the value branch's extractor)."""
        return self.extract_features(obs, self.vf_features_extractor)

    def advantage(self, features: th.Tensor, clipped_actions: th.Tensor) -> th.Tensor:
        """A_phi(s, a) for already-clipped actions, shape (B,)."""
        return self.advantage_head(features, clipped_actions)

    def advantage_regression_loss(self, features: th.Tensor, clipped_actions: th.Tensor, advantages: th.Tensor) -> th.Tensor:
        """The advantage head's training loss against the rollout's advantages (``advantage_loss``)."""
        return self.advantage_head.regression_loss(features, clipped_actions, advantages)

    def actor_mean(self, obs: th.Tensor) -> th.Tensor:
        """Mean action mu(s), shape (B, action_dim)."""
        features = self.extract_features(obs, self.pi_features_extractor)
        return self.action_net(self.mlp_extractor.forward_actor(features))


class HybridActorCriticCnnPolicy(HybridActorCriticPolicy):
    """:class:`HybridActorCriticPolicy` with a NatureCNN features extractor (image observations)."""

    def __init__(self, *args: Any, features_extractor_class: Type[nn.Module] = NatureCNN, **kwargs: Any) -> None:
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class HybridMultiInputActorCriticPolicy(HybridActorCriticPolicy):
    """:class:`HybridActorCriticPolicy` for Dict observations (CombinedExtractor)."""

    def __init__(self, *args: Any, features_extractor_class: Type[nn.Module] = CombinedExtractor, **kwargs: Any) -> None:
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


MlpPolicy = HybridActorCriticPolicy
CnnPolicy = HybridActorCriticCnnPolicy
MultiInputPolicy = HybridMultiInputActorCriticPolicy
