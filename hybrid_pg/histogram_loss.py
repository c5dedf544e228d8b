"""Regression as classification: the HL-Gauss histogram loss (Imani & White 2018; Farebrother et al.
2024, "Stop Regressing"), the value loss of REPPO's critic (Voelcker et al. 2025).

A head predicts logits over ``bins`` equal-width bins covering ``[low, high]``; its value is the
mean of that histogram, ``sum_i softmax(logits)_i * centre_i``, a smooth function of the head's
inputs (so dQ/da exists for the pathwise gradient). It is trained by cross-entropy against the
histogram of a Gaussian centred on the target with standard deviation ``sigma`` (by default 0.75 bin
widths): the probability the Gaussian puts in each bin, renormalised to the support. Targets
outside the support are clipped to its ends first (their mass would otherwise leave the support).

Why it is a candidate here: the advantage head is regressed on single-sample GAE advantages, which
are noisy and heavy-tailed; the cross-entropy's gradient per sample is bounded (the histogram moves
at most by the target's probabilities) where the squared error's grows with the target, so one
outlying advantage cannot sharpen the head's action-gradient. Whether that makes the pathwise
gradient truer is measured against the reference gradient, not assumed.
"""

from __future__ import annotations

import math

import torch as th
from torch.nn import functional as F

#: sigma as a multiple of the bin width (Farebrother et al. 2024's recommended ratio)
SIGMA_BIN_RATIO = 0.75


def check_support(low: float, high: float, bins: int) -> None:
    """Raise ValueError unless ``low < high`` are finite and ``bins >= 2`` is an int."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"the histogram needs an int number of bins >= 2, got {bins!r}")
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"the histogram's support must be finite with low < high, got ({low!r}, {high!r})")


def bin_edges(low: float, high: float, bins: int) -> th.Tensor:
    """The ``bins + 1`` edges of equal-width bins covering ``[low, high]``."""
    check_support(low, high, bins)
    return th.linspace(low, high, bins + 1)


def bin_centres(edges: th.Tensor) -> th.Tensor:
    return 0.5 * (edges[:-1] + edges[1:])


def gaussian_histogram(targets: th.Tensor, edges: th.Tensor, sigma: float) -> th.Tensor:
    """Shape (B, bins): the mass a N(target, sigma^2) puts in each bin, clipped targets, summing to 1.

    Bins far from the target get exactly 0 (the erf saturates); the normaliser (the mass inside the
    support) is at least 1/2 because clipped targets lie inside it.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    y = th.clamp(targets.reshape(-1, 1), edges[0], edges[-1])  # tensor bounds: no host sync on a GPU
    cdf = th.special.erf((edges.reshape(1, -1) - y) / (math.sqrt(2.0) * sigma))
    mass = cdf[:, 1:] - cdf[:, :-1]
    return mass / (cdf[:, -1:] - cdf[:, :1])


def histogram_mean(logits: th.Tensor, centres: th.Tensor) -> th.Tensor:
    """The value a head predicts: the mean of its histogram, shape ``logits.shape[:-1]``."""
    return th.softmax(logits, dim=-1) @ centres


def hl_gauss_loss(logits: th.Tensor, targets: th.Tensor, edges: th.Tensor, sigma: float) -> th.Tensor:
    """Mean cross-entropy between ``logits`` (B, bins) and the Gaussian histograms of ``targets`` (B,)."""
    with th.no_grad():
        target_probs = gaussian_histogram(targets.to(logits.dtype), edges.to(logits.dtype), sigma)
    return -(target_probs * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
