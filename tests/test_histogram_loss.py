"""The HL-Gauss histogram loss (hybrid_pg.histogram_loss) against closed forms: the target histogram
is the Gaussian's mass per bin, its mean and spread are the target's and sigma's (plus the bins'
rounding), the loss is minimised exactly at the target histogram, and targets off the support are
clipped to it."""

import math

import numpy as np
import pytest
import torch as th
from scipy import stats

from hybrid_pg import histogram_loss as hl

EDGES = hl.bin_edges(-5.0, 5.0, 101)
CENTRES = hl.bin_centres(EDGES)
WIDTH = 10.0 / 101
SIGMA = hl.SIGMA_BIN_RATIO * WIDTH


def test_the_target_histogram_is_the_gaussians_mass_per_bin():
    targets = th.tensor([-1.234, 0.0, 0.5, 2.71828], dtype=th.float64)
    probs = hl.gaussian_histogram(targets, EDGES.double(), SIGMA)
    for row, y in zip(probs.numpy(), targets.numpy()):
        cdf = stats.norm.cdf(EDGES.double().numpy(), loc=y, scale=SIGMA)
        expected = np.diff(cdf) / (cdf[-1] - cdf[0])
        np.testing.assert_allclose(row, expected, atol=1e-12)
        assert row.sum() == pytest.approx(1.0, abs=1e-12)


def test_its_mean_is_the_target_and_its_variance_sigma_squared_plus_the_bins_rounding():
    targets = th.linspace(-3.0, 3.0, 61, dtype=th.float64)
    probs = hl.gaussian_histogram(targets, EDGES.double(), SIGMA)
    centres = CENTRES.double()
    mean = probs @ centres
    var = probs @ centres**2 - mean**2
    # a Gaussian binned into equal bins: mean exact to O(exp(-2 pi^2 sigma^2 / w^2)) and variance
    # sigma^2 + w^2 / 12 (Sheppard's correction); with sigma = 0.75 w both hold to ~1e-4 of w
    assert th.allclose(mean, targets, atol=2e-3 * WIDTH)
    assert th.allclose(var, th.full_like(var, SIGMA**2 + WIDTH**2 / 12), rtol=1e-2)


def test_targets_off_the_support_are_clipped_to_its_ends():
    probs = hl.gaussian_histogram(th.tensor([100.0, -100.0, 5.0]), EDGES, SIGMA)
    np.testing.assert_allclose(probs[0].numpy(), probs[2].numpy())
    np.testing.assert_allclose(probs[1].numpy(), probs[0].numpy()[::-1], atol=1e-7)
    assert float(probs[0] @ CENTRES) > 5.0 - 2 * WIDTH  # mass only in the last bins
    assert float(probs[0][:-4].sum()) < 1e-6  # 4 bins = 5.3 sigma from the end


def test_the_loss_is_smallest_at_the_target_histogram_and_equals_its_entropy_there():
    targets = th.tensor([0.3, -2.0], dtype=th.float64)
    probs = hl.gaussian_histogram(targets, EDGES.double(), SIGMA)
    best = th.log(probs.clamp_min(1e-300))
    entropy = -(probs * best).sum(-1).mean()
    assert float(hl.hl_gauss_loss(best, targets, EDGES.double(), SIGMA)) == pytest.approx(float(entropy), rel=1e-9)
    gen = th.Generator().manual_seed(0)
    for _ in range(20):
        other = best + 0.1 * th.randn(best.shape, generator=gen, dtype=th.float64)
        assert float(hl.hl_gauss_loss(other, targets, EDGES.double(), SIGMA)) > float(entropy)


def test_descending_the_loss_moves_the_histograms_mean_to_the_target():
    logits = th.zeros(3, 101, requires_grad=True)
    targets = th.tensor([1.7, -0.4, 4.2])
    opt = th.optim.Adam([logits], lr=0.1)
    for _ in range(500):
        opt.zero_grad()
        hl.hl_gauss_loss(logits, targets, EDGES, SIGMA).backward()
        opt.step()
    assert th.allclose(hl.histogram_mean(logits.detach(), CENTRES), targets, atol=0.02)


def test_one_outlying_target_moves_the_logits_by_a_bounded_amount():
    """Why it is a candidate: the cross-entropy's gradient on the logits is softmax - target probs,
    at most 2 in L1 norm whatever the target, where squared error's grows with the target."""
    logits = th.zeros(1, 101, requires_grad=True)
    for y in (0.5, 50.0, 5000.0):
        logits.grad = None
        hl.hl_gauss_loss(logits, th.tensor([y]), EDGES, SIGMA).backward()
        assert float(logits.grad.abs().sum()) <= 2.0 + 1e-6


@pytest.mark.parametrize(
    "low, high, bins, match",
    [
        (0.0, 0.0, 11, "low < high"),
        (1.0, -1.0, 11, "low < high"),
        (-math.inf, 1.0, 11, "finite"),
        (-1.0, 1.0, 1, "bins >= 2"),
        (-1.0, 1.0, 2.5, "bins >= 2"),
        (-1.0, 1.0, True, "bins >= 2"),
    ],
)
def test_a_bad_support_is_refused(low, high, bins, match):
    with pytest.raises(ValueError, match=match):
        hl.bin_edges(low, high, bins)


def test_sigma_must_be_positive():
    with pytest.raises(ValueError, match="sigma must be > 0"):
        hl.gaussian_histogram(th.zeros(1), EDGES, 0.0)
