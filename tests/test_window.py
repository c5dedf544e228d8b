"""WindowedLambda: pooled within-batch statistics, forgetting, health statistic, persistence."""

import copy
import math

import numpy as np
import pytest
import torch as th

from hybrid_pg import WindowedLambda, optimal_lambda


def _batch(rng, n, d=4, shift=0.0, scale_m=2.0):
    common = rng.normal(size=(n, d))
    g_p = common + 0.5 * rng.normal(size=(n, d)) + shift
    g_m = scale_m * common + rng.normal(size=(n, d)) - shift
    return g_p, g_m


def _same(a, b):
    """Equal on every field the plain estimator reports (the window adds lam_se and source)."""
    skip = {"lam_se", "source", "bias_sq_used"}
    da, db = a.as_dict(), b.as_dict()
    return all(da[k] == db[k] or (da[k] != da[k] and db[k] != db[k]) for k in da if k not in skip)


def _pooled_by_hand(batches, weights=None):
    """Centre each batch on its own mean, weight it, divide by the weighted degrees of freedom."""
    weights = weights or [1.0] * len(batches)
    ss = np.zeros(3)
    dof = 0.0
    for w, (gp, gm) in zip(weights, batches):
        cp, cm = gp - gp.mean(0), gm - gm.mean(0)
        ss += w * np.array([(cp * cp).sum(), (cm * cm).sum(), (cp * cm).sum()])
        dof += w * (len(gp) - 1)
    return ss / dof


def test_sliding_window_equals_pooled_within_batch_statistics():
    rng = np.random.default_rng(0)
    # batches with very different means: pooling must not count the mean shift as variance
    batches = [_batch(rng, n, shift=s) for n, s in ((50, 0.0), (80, 5.0), (65, -3.0))]
    win = WindowedLambda(window=3)
    for gp, gm in batches:
        win.update(gp, gm)
    est = win.estimate()
    var_p, var_m, cov = _pooled_by_hand(batches)
    assert est.var_path == pytest.approx(var_p, rel=1e-12)
    assert est.var_score == pytest.approx(var_m, rel=1e-12)
    assert est.cov == pytest.approx(cov, rel=1e-12)
    assert est.lam == pytest.approx(np.clip((var_m - cov) / (var_p + var_m - 2 * cov), 0, 1))
    assert est.n == 50 + 80 + 65 == win.effective_sample_size
    # centring on the window's grand mean instead would inflate the variances a lot
    all_p = np.concatenate([b[0] for b in batches])
    assert np.var(all_p, axis=0, ddof=1).sum() > 3 * var_p


def test_single_batch_window_equals_optimal_lambda():
    rng = np.random.default_rng(1)
    gp, gm = _batch(rng, 200)
    win = WindowedLambda(window=1)
    assert _same(win.update(gp, gm), optimal_lambda(gp, gm))


def test_sliding_window_forgets_the_oldest_batch():
    rng = np.random.default_rng(2)
    batches = [_batch(rng, 40 + 10 * i, scale_m=1.0 + i) for i in range(5)]
    win = WindowedLambda(window=2)
    for gp, gm in batches:
        win.update(gp, gm)
    assert len(win) == 2 and win.n_updates == 5
    ref = WindowedLambda(window=2)
    for gp, gm in batches[-2:]:
        ref.update(gp, gm)
    assert win.estimate() == ref.estimate()


def test_ema_weights_match_the_pooled_formula_and_bound_memory():
    rng = np.random.default_rng(3)
    batches = [_batch(rng, 30, scale_m=1.0 + 0.3 * i) for i in range(6)]
    win = WindowedLambda(window=3, mode="ema", trend=False)  # the level: the pooled formula
    assert win.decay == pytest.approx(0.5)
    for gp, gm in batches:
        win.update(gp, gm)
    weights = [0.5**k for k in range(5, -1, -1)]
    var_p, var_m, cov = _pooled_by_hand(batches, weights)
    est = win.estimate()
    assert est.var_path == pytest.approx(var_p) and est.cov == pytest.approx(cov)
    assert est.n == pytest.approx(sum(w * 30 for w in weights) ** 2 / sum(w * w * 30 for w in weights))
    for _ in range(200):
        win.update(*_batch(rng, 30))
    # 0.5 ** 10 < 1e-3: at most 10 batches are ever held
    assert len(win) <= 10


def test_between_within_ratio_is_about_one_when_stationary_and_large_under_drift():
    rng = np.random.default_rng(4)
    stationary = []
    for _ in range(200):
        win = WindowedLambda(window=4)
        for _ in range(4):
            win.update(*_batch(rng, 25))
        stationary.append(win.between_within()["path"])
    # E[F] = 1 exactly under the null (numerator and denominator unbiased for the same trace),
    # F has a sd of about sqrt(2/(3*4)) ~ 0.4 here: the mean over 200 windows is within ~0.1
    assert np.mean(stationary) == pytest.approx(1.0, abs=0.12)

    drift = WindowedLambda(window=4)
    for s in range(4):
        drift.update(*_batch(rng, 25, shift=2.0 * s))
    health = drift.between_within()
    assert health["path"] > 10 and health["score"] > 10
    assert math.isnan(WindowedLambda().between_within()["path"])


def test_reset_keeps_the_newest_batches():
    rng = np.random.default_rng(5)
    win = WindowedLambda(window=8)
    data = [_batch(rng, 20) for _ in range(5)]
    for gp, gm in data:
        win.update(gp, gm)
    win.reset(keep_last=1)
    assert len(win) == 1
    assert _same(win.estimate(), optimal_lambda(*data[-1]))
    win.reset()
    assert len(win) == 0 and win.estimate().degenerate and win.lam == 0.0


def test_state_dict_round_trip_is_exact_and_continues_identically():
    rng = np.random.default_rng(6)
    win = WindowedLambda(window=3, mode="ema", bias_correction=True, bounds=(0.1, 0.9))
    for _ in range(4):
        win.update(*_batch(rng, 30))
    state = copy.deepcopy(win.state_dict())
    restored = WindowedLambda()
    restored.load_state_dict(state)
    assert restored.estimate() == win.estimate()
    assert (restored.mode, restored.decay, restored.bounds, restored.bias_correction) == ("ema", 0.5, (0.1, 0.9), True)
    nxt = _batch(rng, 30)
    assert restored.update(*nxt) == win.update(*nxt)
    # survives torch.save / torch.load (how the algorithm stores it)
    import io

    buf = io.BytesIO()
    th.save(win.state_dict(), buf)
    buf.seek(0)
    again = WindowedLambda()
    again.load_state_dict(th.load(buf, weights_only=True))
    assert again.estimate() == win.estimate()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"window": 0}, "window must be an integer >= 1"),
        ({"window": 2.5}, "window must be an integer"),
        ({"mode": "adaptive-ish"}, "mode must be one of"),
        ({"decay": 1.0, "mode": "ema"}, "decay must lie in"),
        ({"bounds": (0.8, 0.2)}, "lo <= hi"),
    ],
)
def test_invalid_configuration_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WindowedLambda(**kwargs)


def test_bad_updates_raise_and_leave_the_window_untouched():
    rng = np.random.default_rng(7)
    win = WindowedLambda(window=4)
    win.update(*_batch(rng, 20))
    before = win.estimate()
    gp, gm = _batch(rng, 20)
    gp[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        win.update(gp, gm)
    with pytest.raises(ValueError, match="dimension changed"):
        win.update(*_batch(rng, 20, d=3))
    assert win.estimate() == before and len(win) == 1
    with pytest.raises(ValueError, match="not a WindowedLambda state"):
        win.load_state_dict({"weights": []})


def test_chunked_moments_merge_to_the_one_pass_moments():
    from hybrid_pg import BatchMoments

    rng = np.random.default_rng(8)
    gp, gm = _batch(rng, 103, shift=4.0)
    whole = BatchMoments.from_samples(gp, gm)
    merged = BatchMoments.from_samples(gp[:40], gm[:40])
    for lo, hi in ((40, 41), (41, 90), (90, 103)):
        merged = merged.merge(BatchMoments.from_samples(gp[lo:hi], gm[lo:hi]))
    assert merged.n == whole.n
    for attr in ("ss_path", "ss_score", "ss_cross"):
        assert getattr(merged, attr) == pytest.approx(getattr(whole, attr), rel=1e-12)
    assert th.allclose(merged.mean_path, whole.mean_path) and th.allclose(merged.mean_score, whole.mean_score)


def _drifting_stream(rng, k, n=1024, d=2, growth=0.1):
    """Batch k: Var_P = d (1 + growth k)^2, Var_M = 10 d, Cov = d (1 + growth k) (lam* falls with k)."""
    z, e = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    return z * (1 + growth * k), z + 3 * e


def _lam_star(k, d=2, growth=0.1):
    s = 1 + growth * k
    vp, vm, c = d * s * s, 10.0 * d, d * s
    return (vm - c) / (vp + vm - 2 * c)


def test_trend_removes_the_lag_of_a_drifting_window():
    """Moments drifting steadily: the level lags the next batch's lam* by ~W/2 batches, the trend does not."""
    rng = np.random.default_rng(0)
    level, trend = WindowedLambda(window=8, trend=False), WindowedLambda(window=8)
    err_level, err_trend = [], []
    for k in range(20):
        gp, gm = _drifting_stream(rng, k)
        level.update(gp, gm), trend.update(gp, gm)
        if k >= 8:
            err_level.append(abs(level.lam - _lam_star(k + 1)))
            err_trend.append(abs(trend.lam - _lam_star(k + 1)))
    assert np.mean(err_level) > 0.08
    assert np.mean(err_trend) < 0.25 * np.mean(err_level)


def test_trend_stays_near_the_level_on_a_stationary_stream():
    rng = np.random.default_rng(1)
    level, trend = WindowedLambda(window=8, trend=False), WindowedLambda(window=8)
    diffs, ses = [], []
    for _ in range(40):
        gp, gm = _batch(rng, 256)
        level.update(gp, gm), trend.update(gp, gm)
        if len(trend) == 8:
            diffs.append(trend.lam - level.lam)
            ses.append(level.estimate(with_se=True).lam_se)
    # the shrunk slope is followed only when it stands out of its noise
    assert np.sqrt(np.mean(np.square(diffs))) < np.mean(ses)


def test_a_trend_that_leaves_the_covariance_cone_is_followed_to_its_boundary():
    """The correlation of the two estimators climbs towards 1 (lam* passes 1): the three linear
    trends cannot all continue, so the prediction stops where the moments are still a covariance,
    rather than falling back to the window's lagging level."""
    from hybrid_pg.estimator import BatchMoments, lambda_from_moments
    from hybrid_pg.weight_rule import pool, trend_moments

    rng = np.random.default_rng(5)
    batches = []
    for k in range(8):
        rho = 0.6 + 0.05 * k  # 0.60 .. 0.95; the line runs past 1 within the next batches
        z, e = rng.normal(size=(4096, 1)), rng.normal(size=(4096, 1))
        gp = z
        gm = 2.0 * (rho * z + math.sqrt(1 - rho * rho) * e)
        batches.append(BatchMoments.from_samples(gp, gm))
    w = [1.0] * len(batches)
    level = pool(batches, w)
    lvl = (level.var_path, level.var_score, level.cov)
    vp, vm, c = trend_moments(batches, w, lvl)
    assert c * c <= vp * vm * (1 + 1e-9) and vp >= 0 and vm >= 0
    assert c * c > 0.99 * vp * vm  # it went as far as the boundary
    # followed, not dropped: the weight moves past the level's, as lam* does
    assert lambda_from_moments(vp, vm, c, bounds=None).lam_unclipped > lambda_from_moments(*lvl, bounds=None).lam_unclipped + 0.2


def test_trend_needs_four_batches_and_a_valid_covariance():
    from hybrid_pg.weight_rule import pool

    rng = np.random.default_rng(2)
    win = WindowedLambda(window=8)
    for k in range(3):
        win.update(*_drifting_stream(rng, 5 * k))
    assert pool(win.batches, win.weights, trend=True) == pool(win.batches, win.weights)


def test_states_saved_before_the_trend_option_continue_without_it():
    rng = np.random.default_rng(3)
    win = WindowedLambda(window=8, trend=False)
    for k in range(6):
        win.update(*_drifting_stream(rng, k))
    state = win.state_dict()
    del state["config"]["trend"]
    restored = WindowedLambda()
    restored.load_state_dict(state)
    assert restored.trend is False and restored.lam == win.lam
