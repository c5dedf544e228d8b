"""Closed-form expected return and policy gradient of :class:`hybrid_pg_envs.lqr.LQREnv`.

The policy is linear Gaussian in the env's observation ``[x, t / T]``::

    u_t = W x_t + w_t * (t / T) + b + exp(log_std) * eps,   eps ~ N(0, I)

which is exactly what an SB3 ``ActorCriticPolicy`` with ``net_arch=dict(pi=[], vf=[...])``
computes: its ``action_net`` is ``Linear(n + 1, m)`` with weight ``[W | w_t]`` and bias ``b``
(:func:`linear_policy_params` reads them out). With no action clipping, the state stays Gaussian,
so propagating its mean and covariance gives the discounted return exactly::

    import hybrid_pg_envs
    from hybrid_pg_envs.lqr_exact import expected_return, exact_policy_gradient

    env = gym.make("hybrid_pg/LQR-v0", action_bound=1e3)  # large bound: clipping never bites
    J = expected_return(**env.unwrapped.lqr_kwargs(), gamma=0.99, W=weight, b=bias, log_std=log_std)
    grad = exact_policy_gradient(**env.unwrapped.lqr_kwargs(), gamma=0.99, W=weight, b=bias, log_std=log_std)
    grad.weight  # d J / d [W | w_t], the layout of action_net.weight

Everything is float64 torch; policy tensors that require grad keep their graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, cast

import torch as th
from torch import nn

from .lqr import validate_lqr

_F64 = th.float64


def _as_f64(value: Any) -> th.Tensor:
    if isinstance(value, th.Tensor):
        return value.to(_F64)  # keeps the autograd graph
    return th.as_tensor(value, dtype=_F64)


def _policy_tensors(W: Any, w_t: Any, b: Any, log_std: Any, n: int, m: int) -> Tuple[th.Tensor, th.Tensor, th.Tensor, Optional[th.Tensor]]:
    W = _as_f64(W)
    if W.shape == (m, n + 1):
        if w_t is not None:
            raise ValueError("W has shape (m, n + 1) and already holds w_t as its last column; pass w_t=None")
        W, w_t = W[:, :n], W[:, n]
    elif W.shape != (m, n):
        raise ValueError(f"W must have shape (m, n) = ({m}, {n}) or (m, n + 1) = ({m}, {n + 1}), got {tuple(W.shape)}")
    w_t = th.zeros(m, dtype=_F64) if w_t is None else _as_f64(w_t)
    b = th.zeros(m, dtype=_F64) if b is None else _as_f64(b)
    for name, vec in (("w_t", w_t), ("b", b)):
        if vec.shape != (m,):
            raise ValueError(f"{name} must have shape ({m},), got {tuple(vec.shape)}")
    if log_std is not None:
        log_std = _as_f64(log_std)
        if log_std.shape != (m,):
            raise ValueError(f"log_std must have shape ({m},), got {tuple(log_std.shape)}")
    return W, w_t, b, log_std


def expected_return(
    A: Any,
    B: Any,
    Q: Any,
    R: Any,
    x0_mean: Any,
    x0_std: Any,
    noise_std: float,
    horizon: int,
    gamma: float,
    W: Any,
    w_t: Any = None,
    b: Any = None,
    log_std: Any = None,
) -> th.Tensor:
    """``E[sum_{t<T} gamma^t r_t]`` (a float64 scalar tensor) of the linear Gaussian policy.

    ``W`` is (m, n), or (m, n + 1) holding ``w_t`` as its last column (an SB3 ``action_net.weight``).
    ``w_t`` and ``b`` default to 0, ``log_std=None`` means a deterministic policy; a tensor
    ``x0_mean`` keeps its autograd graph (the return as a function of the start state). Assumes no action
    clipping: match it with a large ``action_bound`` in the env.
    """
    start = x0_mean.detach().cpu().numpy() if isinstance(x0_mean, th.Tensor) else x0_mean
    cfg = validate_lqr(A, B, Q, R, horizon, start, x0_std, noise_std)
    A, B, Q, R, mu0, std0 = (th.as_tensor(cfg[k], dtype=_F64) for k in ("A", "B", "Q", "R", "x0_mean", "x0_std"))
    if isinstance(x0_mean, th.Tensor) and x0_mean.shape == mu0.shape:
        mu0 = _as_f64(x0_mean)  # keeps its graph: the return is differentiable in the start state too
    n, m = B.shape
    T = cfg["horizon"]
    W, w_t, b, log_std = _policy_tensors(W, w_t, b, log_std, n, m)
    act_var = th.zeros(m, dtype=_F64) if log_std is None else th.exp(2.0 * log_std)
    process_cov = cfg["noise_std"] ** 2 * th.eye(n, dtype=_F64)

    # x' = F x + B c_t + B sigma eps + w with F = A + B W and c_t = w_t t/T + b: Gaussian in, Gaussian out
    F = A + B @ W
    exploration_cov = B @ th.diag(act_var) @ B.T + process_cov
    mu, cov = mu0, th.diag(std0**2)
    total = th.zeros((), dtype=_F64)
    for t in range(T):
        c = w_t * (t / T) + b
        u_mean = W @ mu + c
        u_cov = W @ cov @ W.T + th.diag(act_var)
        mu = F @ mu + B @ c
        cov = F @ cov @ F.T + exploration_cov
        # E[z^T M z] = tr(M Cov) + mean^T M mean
        cost = th.trace(Q @ cov) + mu @ Q @ mu + th.trace(R @ u_cov) + u_mean @ R @ u_mean
        total = total - gamma**t * cost
    return total


@dataclass
class PolicyGradient:
    """d expected_return / d policy parameters (float64); ``log_std`` is None for a deterministic policy."""

    value: th.Tensor
    W: th.Tensor
    w_t: th.Tensor
    b: th.Tensor
    log_std: Optional[th.Tensor]

    @property
    def weight(self) -> th.Tensor:
        """Gradient w.r.t. ``[W | w_t]``, the layout of an SB3 ``action_net.weight``."""
        return th.cat([self.W, self.w_t[:, None]], dim=1)

    @property
    def bias(self) -> th.Tensor:
        return self.b


def exact_policy_gradient(
    A: Any,
    B: Any,
    Q: Any,
    R: Any,
    x0_mean: Any,
    x0_std: Any,
    noise_std: float,
    horizon: int,
    gamma: float,
    W: Any,
    w_t: Any = None,
    b: Any = None,
    log_std: Any = None,
) -> PolicyGradient:
    """Exact gradient of :func:`expected_return` by autograd; same arguments."""
    n, m = validate_lqr(A, B, Q, R, horizon, x0_mean, x0_std, noise_std)["B"].shape
    params = _policy_tensors(W, w_t, b, log_std, n, m)
    # fresh leaves: the gradient is w.r.t. exactly these values, whatever graph they came from
    W, w_t, b, log_std = (None if p is None else p.detach().clone().requires_grad_(True) for p in params)
    value = expected_return(A, B, Q, R, x0_mean, x0_std, noise_std, horizon, gamma, W, w_t, b, log_std)
    leaves = [p for p in (W, w_t, b, log_std) if p is not None]
    grads = th.autograd.grad(value, leaves)
    return PolicyGradient(value.detach(), grads[0], grads[1], grads[2], log_std=grads[3] if log_std is not None else None)


def linear_policy_params(policy: nn.Module) -> Dict[str, th.Tensor]:
    """``{"W": [W | w_t], "b": b, "log_std": log_std}`` of an SB3 ActorCriticPolicy with ``pi=[]``.

    The tensors are the policy's own parameters cast to float64 (not detached), so the closed form
    can also be backpropagated into the policy. Raises ValueError for any other policy shape.
    """
    extractor = getattr(policy, "mlp_extractor", None)
    action_net = getattr(policy, "action_net", None)
    if extractor is None or not isinstance(action_net, nn.Linear) or not hasattr(policy, "log_std"):
        raise ValueError("expected an SB3 ActorCriticPolicy with a diagonal Gaussian action distribution")
    if any(True for _ in extractor.policy_net.parameters()):
        raise ValueError("the policy is not linear in the observation: build it with net_arch=dict(pi=[], vf=[...])")
    if getattr(policy, "squash_output", False) or getattr(policy, "use_sde", False):
        raise ValueError("squashed or gSDE policies are not linear Gaussian")
    # SB3's nn.Parameter; through nn.Module's typing an attribute is only Tensor | Module
    log_std = cast(th.Tensor, policy.log_std)
    return {"W": action_net.weight.to(_F64), "b": action_net.bias.to(_F64), "log_std": log_std.to(_F64)}
