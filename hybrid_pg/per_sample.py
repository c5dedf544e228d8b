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

import dataclasses
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple

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
    blocks: Optional[Any] = None,
) -> Dict[str, BatchMoments]:
    """Moments of the per-sample gradients of ``fn`` w.r.t. the head parameters and ``log_std``.

    :param fn: single-sample function ``fn(head_params, log_std, *sample) -> Tensor[2]`` (path, score);
        each tensor of ``sample`` is one row of the corresponding ``per_sample`` tensor.
    :param head: the module whose parameters form the "mean" group.
    :param log_std: the log_std parameter ("log_std" group).
    :param per_sample: tensors with a leading sample dimension N, vmapped over.
    :param blocks: optional block label per sample (contiguous blocks, see
        :func:`hybrid_pg.correlation.block_ids`); chunks then end at block boundaries, so every
        block lies in one chunk and the merged moments carry exact batch-means statistics.
    :return: {"mean": BatchMoments, "log_std": BatchMoments, "global": BatchMoments}.
    """
    params = {k: v.detach() for k, v in head.named_parameters()}
    names = list(params)
    grad_fn = vmap(jacrev(fn, argnums=(0, 1)), in_dims=(None, None, *([0] * len(per_sample))))
    n = per_sample[0].shape[0]
    labels = None if blocks is None else th.as_tensor(blocks).reshape(-1).cpu()
    acc: Dict[str, BatchMoments] = {}
    for start, stop in _chunk_bounds(n, max(1, int(chunk_size)), labels):
        chunk = [t[start:stop] for t in per_sample]
        d_head, d_log_std = grad_fn(params, log_std.detach(), *chunk)
        # each entry: (chunk, 2, *param_shape) -> (chunk, 2, numel)
        mean_part = th.cat([d_head[k].reshape(d_head[k].shape[0], 2, -1) for k in names], dim=2)
        std_part = d_log_std.reshape(d_log_std.shape[0], 2, -1)
        for group, g in (("mean", mean_part), ("log_std", std_part)):
            m = BatchMoments.from_samples(g[:, 0].double(), g[:, 1].double(), blocks=None if labels is None else labels[start:stop])
            acc[group] = m if group not in acc else acc[group].merge(m)
    acc["global"] = BatchMoments.concat([acc[g] for g in GROUPS])
    return acc


def _chunk_bounds(n: int, chunk_size: int, labels: Optional[th.Tensor]) -> Iterable[Tuple[int, int]]:
    """[start, stop) ranges of about ``chunk_size`` samples; with block labels each range is
    extended to the end of the block it would cut."""
    start = 0
    while start < n:
        stop = min(start + chunk_size, n)
        if labels is not None:
            while stop < n and labels[stop] == labels[stop - 1]:
                stop += 1
        yield start, stop
        start = stop


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
    source: Any,
    context_keys: Sequence[str],
    log_prob: Callable[[th.Tensor, th.Tensor, th.Tensor], th.Tensor],
) -> SingleSampleFn:
    """Build ``fn(head_params, log_std, pi_features, eps, action, adv, scale, *context)``.

    ``context`` are one sample's rows of the source's context tensors, in ``context_keys`` order.
    The per-sample function unsqueezes one sample to a batch of one and calls the same batched
    ``source.value`` as the training loss, so the statistics and the update cannot disagree.
    """

    def fn(head_params, log_std, pi_features, eps, action, adv, scale, *context):
        frozen = {k: v.detach() for k, v in head_params.items()}

        def mean_fn(observations: th.Tensor) -> th.Tensor:  # future actions: no theta-gradient
            return functional_call(head, frozen, (extract_features(observations),))

        mean = functional_call(head, head_params, (pi_features[None],))
        ctx = {key: value[None] for key, value in zip(context_keys, context)}
        path = scale * source.value(mean, log_std, eps[None], ctx, mean_fn=mean_fn)[0]
        score = adv * log_prob(mean, log_std, action[None])[0]
        return th.stack([path, score])

    return fn


# ----------------------------------------------------------------------------------------------
# Fast exact path for MLP heads: per-sample gradients of Linear layers are outer products
# ----------------------------------------------------------------------------------------------


def supports_outer_product_moments(head: nn.Module) -> bool:
    """True when every parameter of ``head`` belongs to an ``nn.Linear`` (an MLP head)."""
    for module in head.modules():
        own = list(module.parameters(recurse=False))
        if own and not isinstance(module, nn.Linear):
            return False
    return True


def outer_product_group_moments(
    head: nn.Module,
    features: th.Tensor,
    log_std: th.Tensor,
    path_fn: Callable[[th.Tensor, th.Tensor], th.Tensor],
    score_fn: Callable[[th.Tensor, th.Tensor], th.Tensor],
    blocks: Optional[th.Tensor] = None,
) -> Dict[str, BatchMoments]:
    """The same moments as :func:`per_sample_group_moments`, without materialising per-sample grads.

    Valid when sample i's surrogates depend on the parameters only through (mu(s_i), log_std), i.e.
    the critic source and the one-step model source. Then the per-sample gradient is the chain
    rule J_i^T u_i, and for a Linear layer with input h_i and output cotangent delta_i it is the
    outer product delta_i h_i^T (bias: delta_i), whose norms and inner products factor:
        <delta_i h_i^T, delta'_i h_i^T> = <delta_i, delta'_i> ||h_i||^2.
    Two backward passes through the head (one per surrogate) give every delta; sums of squares are
    then sum_i <g_i, g'_i> - n <mean g, mean g'> in float64.

    With ``blocks`` (a block label per sample, see :func:`hybrid_pg.correlation.block_ids`), the
    per-block gradient sums dp[block].T @ h[block] also give the batch-means (long-run) statistics.
    """
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    inputs: list = []
    outputs: list = []

    def capture(_module: nn.Module, inp: tuple, out: th.Tensor) -> None:  # must return None
        inputs.append(inp[0])
        outputs.append(out)

    hooks = [m.register_forward_hook(capture) for m in linears]
    try:
        mean = head(features.detach())
    finally:
        for h in hooks:
            h.remove()
    n, act_dim = mean.shape
    mean_leaf = mean.detach().requires_grad_(True)
    log_std_leaf = log_std.detach().expand(n, act_dim).clone().requires_grad_(True)
    u_path, v_path = th.autograd.grad(path_fn(mean_leaf, log_std_leaf).sum(), [mean_leaf, log_std_leaf], allow_unused=True)
    u_score, v_score = th.autograd.grad(score_fn(mean_leaf, log_std_leaf).sum(), [mean_leaf, log_std_leaf], allow_unused=True)
    u_path = th.zeros_like(mean_leaf) if u_path is None else u_path
    v_path = th.zeros_like(log_std_leaf) if v_path is None else v_path
    deltas_path = th.autograd.grad(mean, outputs, grad_outputs=u_path, retain_graph=True)
    deltas_score = th.autograd.grad(mean, outputs, grad_outputs=u_score)

    means_p, means_m = [], []
    sum_pp = sum_mm = sum_pm = 0.0
    block_index = None
    if blocks is not None:
        _, block_index, block_len = th.unique(th.as_tensor(blocks, device=mean.device).reshape(-1), return_inverse=True, return_counts=True)
        padded = _padded_block_rows(block_index, block_len)
        lr = [0.0, 0.0, 0.0]
    for layer, h, dp, dm in zip(linears, inputs, deltas_path, deltas_score):
        h, dp, dm = h.detach().double(), dp.double(), dm.double()
        if block_index is not None:
            # ||sum_{i in j} delta_i h_i^T||^2 = sum_{i,i' in j} <delta_i, delta_i'> <h_i, h_i'>: Gram
            # matrices within each block, O(n L (out + in)) without forming any outer product
            hb = th.cat([h, th.ones_like(h[:, :1])], 1) if layer.bias is not None else h
            for k, value in enumerate(_block_gram_sums(padded, block_len, dp, dm, hb)):
                lr[k] += value
        h_sq = (h * h).sum(1) + (1.0 if layer.bias is not None else 0.0)
        sum_pp += float(((dp * dp).sum(1) * h_sq).sum())
        sum_mm += float(((dm * dm).sum(1) * h_sq).sum())
        sum_pm += float(((dp * dm).sum(1) * h_sq).sum())
        means_p.append((dp.T @ h / n).flatten())
        means_m.append((dm.T @ h / n).flatten())
        if layer.bias is not None:
            means_p.append(dp.mean(0))
            means_m.append(dm.mean(0))
    mean_part = _moments_from_sums(n, th.cat(means_p), th.cat(means_m), sum_pp, sum_mm, sum_pm)
    if block_index is not None:
        mp, mm = mean_part.mean_path, mean_part.mean_score
        mean_part = dataclasses.replace(
            mean_part,
            n_blocks=int(block_len.shape[0]),
            lr_ss_path=max(lr[0] - n * float(mp @ mp), 0.0),
            lr_ss_score=max(lr[1] - n * float(mm @ mm), 0.0),
            lr_ss_cross=lr[2] - n * float(mp @ mm),
        )
    std_part = BatchMoments.from_samples(v_path.double(), v_score.double(), blocks=None if block_index is None else block_index.cpu())
    return {"mean": mean_part, "log_std": std_part, "global": BatchMoments.concat([mean_part, std_part])}


def _padded_block_rows(block_index: th.Tensor, block_len: th.Tensor) -> th.Tensor:
    """(K, L_max) sample indices of each block, padded with n (a zero row appended by the caller)."""
    n, k, l_max = block_index.shape[0], int(block_len.shape[0]), int(block_len.max())
    order = th.argsort(block_index, stable=True)
    starts = th.cumsum(block_len, 0) - block_len
    pos = th.arange(n, device=block_index.device) - starts[block_index[order]]
    rows = th.full((k, l_max), n, dtype=th.long, device=block_index.device)
    rows[block_index[order], pos] = order
    return rows


def _block_gram_sums(rows: th.Tensor, block_len: th.Tensor, dp: th.Tensor, dm: th.Tensor, h: th.Tensor) -> Tuple[float, float, float]:
    """sum_j (1 / L_j) <sum_{i in j} a_i h_i^T, sum_{i in j} b_i h_i^T> over the blocks ``rows``, for
    (a, b) = (dp, dp), (dm, dm), (dp, dm): each tensor gathered once, the inputs' Gram matrix shared."""

    def gather(x: th.Tensor) -> th.Tensor:
        return th.cat([x, x.new_zeros(1, x.shape[1])])[rows]  # (K, L_max, dim)

    gp, gm, gh = gather(dp), gather(dm), gather(h)
    gram_h = th.bmm(gh, gh.transpose(1, 2))
    lengths = block_len.double()

    def total(ga: th.Tensor, gb: th.Tensor) -> float:
        return float(((th.bmm(ga, gb.transpose(1, 2)) * gram_h).sum((1, 2)) / lengths).sum())

    return total(gp, gp), total(gm, gm), total(gp, gm)


def _moments_from_sums(n: int, mean_p: th.Tensor, mean_m: th.Tensor, sum_pp: float, sum_mm: float, sum_pm: float) -> BatchMoments:
    values = th.tensor([sum_pp, sum_mm, sum_pm], dtype=th.float64)
    if not (th.isfinite(values).all() and th.isfinite(mean_p).all() and th.isfinite(mean_m).all()):
        raise ValueError("per-sample gradients contain non-finite values")
    # raw second moments minus n * mean products; tiny negative values are rounding
    ss_pp = max(sum_pp - n * float(mean_p @ mean_p), 0.0)
    ss_mm = max(sum_mm - n * float(mean_m @ mean_m), 0.0)
    ss_pm = sum_pm - n * float(mean_p @ mean_m)
    return BatchMoments(n=n, mean_path=mean_p.cpu(), mean_score=mean_m.cpu(), ss_path=ss_pp, ss_score=ss_mm, ss_cross=ss_pm)
