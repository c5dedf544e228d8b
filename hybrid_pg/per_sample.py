"""Per-sample policy-parameter gradients of both surrogates, reduced to window moments.

The variance that decides lam is that of the gradient with respect to the *policy parameters*, not
with respect to the Gaussian's (mean, log_std) outputs: the network's Jacobian differs per state and
reweights the coordinates. We compute exact per-sample parameter gradients with ``torch.func``
(``vmap`` over ``jacrev`` of a single-sample function returning [path_i, score_i]), in chunks, and
reduce each chunk to :class:`~hybrid_pg.estimator.BatchMoments` immediately (merged exactly with
Chan's update), so memory is bounded by ``chunk_size x 2 x n_params`` whatever the rollout size.

Parameter groups: "mean" (the actor head: the policy latent MLP and the action layer) and
"log_std". A features extractor with its own weights (CNN, Dict inputs) is treated as fixed inside
these statistics: it receives the same mixed gradient in training, but its coordinates are left out
of the variance traces, which keeps the cost independent of the extractor's size.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Sequence, Tuple

import torch as th
from torch import nn
from torch.func import functional_call, jacrev, vmap

from hybrid_pg.estimator import BatchMoments

GROUPS: Tuple[str, ...] = ("mean", "log_std")

# sample -> stack([path_i, score_i]); arguments: (head_params, log_std, *per-sample tensors)
SingleSampleFn = Callable[..., th.Tensor]


def per_sample_group_moments(
    fn: SingleSampleFn,
    head: nn.Module,
    log_std: th.Tensor,
    per_sample: Sequence[th.Tensor],
    chunk_size: int = 256,
) -> Dict[str, BatchMoments]:
    """Moments of the per-sample gradients of ``fn`` w.r.t. the head parameters and ``log_std``.

    :param fn: single-sample function ``fn(head_params, log_std, *sample) -> Tensor[2]`` (path, score);
        each tensor of ``sample`` is one row of the corresponding ``per_sample`` tensor.
    :param head: the module whose parameters form the "mean" group.
    :param log_std: the log_std parameter ("log_std" group).
    :param per_sample: tensors with a leading sample dimension N, vmapped over.
    :return: {"mean": BatchMoments, "log_std": BatchMoments, "global": BatchMoments}.
    """
    params = {k: v.detach() for k, v in head.named_parameters()}
    names = list(params)
    grad_fn = vmap(jacrev(fn, argnums=(0, 1)), in_dims=(None, None, *([0] * len(per_sample))))
    n = per_sample[0].shape[0]
    acc: Dict[str, BatchMoments] = {}
    for start in range(0, n, max(1, int(chunk_size))):
        chunk = [t[start : start + chunk_size] for t in per_sample]
        d_head, d_log_std = grad_fn(params, log_std.detach(), *chunk)
        # each entry: (chunk, 2, *param_shape) -> (chunk, 2, numel)
        mean_part = th.cat([d_head[k].reshape(d_head[k].shape[0], 2, -1) for k in names], dim=2)
        std_part = d_log_std.reshape(d_log_std.shape[0], 2, -1)
        for group, g in (("mean", mean_part), ("log_std", std_part)):
            m = BatchMoments.from_samples(g[:, 0].double(), g[:, 1].double())
            acc[group] = m if group not in acc else acc[group].merge(m)
    acc["global"] = BatchMoments.concat([acc[g] for g in GROUPS])
    return acc


def all_finite(moments: Iterable[BatchMoments]) -> bool:
    """True when every statistic is finite (a diverged critic produces NaN/inf gradients)."""
    for m in moments:
        values = th.tensor([m.ss_path, m.ss_score, m.ss_cross], dtype=th.float64)
        if not (th.isfinite(values).all() and th.isfinite(m.mean_path).all() and th.isfinite(m.mean_score).all()):
            return False
    return True


def single_sample_surrogates(
    head: nn.Module,
    *,
    extract_features: Callable[[th.Tensor], th.Tensor],
    pathwise: Callable[..., th.Tensor],
    log_prob: Callable[[th.Tensor, th.Tensor, th.Tensor], th.Tensor],
) -> SingleSampleFn:
    """Build ``fn(head_params, log_std, pi_features, q_features, obs, eps, action, adv, future_eps, scale)``.

    The per-sample function unsqueezes one sample to a batch of one and calls the same batched
    surrogate code as the training loss, so the statistics and the update cannot disagree.
    """

    def fn(head_params, log_std, pi_features, q_features, obs, eps, action, adv, future_eps, scale):
        def mean_fn(observations: th.Tensor) -> th.Tensor:
            return functional_call(head, head_params, (extract_features(observations),))

        mean = functional_call(head, head_params, (pi_features[None],))
        path = scale * pathwise(
            mean,
            log_std,
            eps[None],
            q_features=q_features[None],
            obs=obs[None],
            mean_fn=mean_fn,
            future_eps=future_eps[None],
        )[0]
        score = adv * log_prob(mean, log_std, action[None])[0]
        return th.stack([path, score])

    return fn
