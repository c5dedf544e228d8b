"""The change detector behind lambda_mode="adaptive", and the adaptive window it drives."""

import math

import numpy as np
import pytest
import torch as th

from hybrid_pg.change_detection import CusumDetector, lambda_coordinates
from hybrid_pg.window import WindowedLambda


def _alarm_times(stream, **kwargs):
    det = CusumDetector(stream.shape[1], **kwargs)
    return [t for t, x in enumerate(stream) if det.update(x) is not None]


def test_false_alarm_rate_on_a_stationary_stream_is_low():
    rng = np.random.default_rng(0)
    steps = 4000
    alarms = _alarm_times(rng.normal(3.0, 0.2, size=(steps, 2)))
    # theory (k = 0.5, h = 6): about one per 600 steps for four sides; allow 3x that
    assert len(alarms) <= 3 * steps / 600, alarms
    # and the threshold is what keeps it low: a trigger-happy detector alarms often on the same data
    assert len(_alarm_times(rng.normal(3.0, 0.2, size=(steps, 2)), threshold=1.0)) > 10 * max(len(alarms), 1)


@pytest.mark.parametrize("shift, max_median_delay", [(2.0, 7), (4.0, 3)])
def test_detection_delay_after_a_step_change(shift, max_median_delay):
    rng = np.random.default_rng(1)
    delays, early, change_estimates = [], 0, []
    for _ in range(60):
        x = rng.normal(0.0, 1.0, size=(80, 2))
        x[40:, 1] += shift
        det = CusumDetector(2)
        for t, v in enumerate(x):
            alarm = det.update(v)
            if alarm is not None:
                if t < 40:
                    early += 1
                    continue
                delays.append(t - 40)
                change_estimates.append(t + 1 - alarm.steps_since_change)
                break
    assert early <= 10  # 60 x 40 pre-change steps at about 1 alarm per 600: about 4 expected
    assert len(delays) >= 55  # nearly every change is found within 40 steps
    assert np.median(delays) <= max_median_delay
    # the change-point estimate (first step of the new regime) is close to the truth
    assert abs(np.median(change_estimates) - 40) <= 2


def test_constant_and_non_finite_inputs_do_not_alarm_and_bad_settings_raise():
    det = CusumDetector(2)
    for _ in range(50):
        assert det.update([1.0, math.nan]) is None
    with pytest.raises(ValueError, match="expected 2"):
        det.update([1.0])
    with pytest.raises(ValueError, match="threshold"):
        CusumDetector(1, threshold=0.0)
    with pytest.raises(ValueError, match="warmup"):
        CusumDetector(1, warmup=1)


def test_lambda_coordinates_determine_lambda_star():
    for vp, vm, cov in [(1.0, 4.0, 0.3), (2.0, 0.5, -0.4), (3.0, 3.0, 0.0)]:
        log_r, rho = lambda_coordinates(vp, vm, cov)
        r = math.exp(log_r)
        lam_from_coords = (1 - rho * math.sqrt(r)) / (1 + r - 2 * rho * math.sqrt(r))
        assert lam_from_coords == pytest.approx((vm - cov) / (vp + vm - 2 * cov))
    assert all(math.isnan(v) for v in lambda_coordinates(0.0, 1.0, 0.0))


# -- the adaptive window on a synthetic step change of known size ----------------------------------


def _regime_batch(gen, sigma_p, sigma_m, batch=512, d=4):
    """Per-sample gradients with trace moments Var_P = d sigma_p^2, Var_M = d sigma_m^2, Cov = 0."""
    g_p = 0.3 + sigma_p * th.randn(batch, d, generator=gen, dtype=th.float64)
    g_m = 0.3 + sigma_m * th.randn(batch, d, generator=gen, dtype=th.float64)
    return g_p, g_m


BEFORE, AFTER = (1.5, 1.0), (1.0, 2.0)  # lam* = 1 / 3.25 = 0.31, then 4 / 5 = 0.8
LAM_AFTER = AFTER[1] ** 2 / (AFTER[0] ** 2 + AFTER[1] ** 2)


def _recovery_time(window, seed, change_at=30, horizon=40):
    """Batches after the change until lam stays within 0.05 of the new lam* for good."""
    gen = th.Generator().manual_seed(seed)
    errors = []
    for t in range(change_at + horizon):
        window.update(*_regime_batch(gen, *(BEFORE if t < change_at else AFTER)))
        if t >= change_at:
            errors.append(abs(window.lam - LAM_AFTER))
    outside = [i for i, e in enumerate(errors) if e > 0.05]
    return outside[-1] + 2 if outside else 1  # batch count including the one that got it right


def test_adaptive_window_recovers_within_its_length_and_twice_as_fast_as_a_long_window():
    w = 16
    adaptive = [_recovery_time(WindowedLambda(w, mode="adaptive"), seed) for seed in range(8)]
    sliding = [_recovery_time(WindowedLambda(w, mode="sliding"), seed) for seed in range(8)]
    assert max(adaptive) <= w, adaptive
    assert np.median(sliding) >= 2 * np.median(adaptive), (adaptive, sliding)


def test_adaptive_window_keeps_its_full_length_when_nothing_changes():
    gen = th.Generator().manual_seed(5)
    window = WindowedLambda(8, mode="adaptive")
    for _ in range(60):
        window.update(*_regime_batch(gen, *BEFORE))
    assert window.detector.n_alarms == 0
    assert len(window) == 8


def test_adaptive_state_dict_round_trip_continues_identically():
    gen = th.Generator().manual_seed(6)
    a = WindowedLambda(8, mode="adaptive", detector=dict(threshold=5.0))
    for _ in range(10):
        a.update(*_regime_batch(gen, *BEFORE))
    b = WindowedLambda()
    b.load_state_dict(a.state_dict())
    for t in range(10):
        batch = _regime_batch(gen, *(AFTER if t > 2 else BEFORE))
        assert a.update(*batch).lam == b.update(*batch).lam
        assert len(a) == len(b)
    assert a.detector.n_alarms == b.detector.n_alarms >= 1


def test_detector_settings_need_adaptive_mode():
    with pytest.raises(ValueError, match="adaptive"):
        WindowedLambda(4, mode="sliding", detector=dict(threshold=3.0))


def test_a_new_regime_is_not_absorbed_into_the_reference():
    # a short reference (the detector was just reset) and a large step: the first post-change
    # points must not inflate the in-control spread, or the alarm comes many steps late
    rng = np.random.default_rng(3)
    delays = []
    for _ in range(40):
        x = np.concatenate([rng.normal(0.0, 1.0, size=(7, 1)), rng.normal(8.0, 1.0, size=(20, 1))])
        det = CusumDetector(1)
        for t, v in enumerate(x):
            if det.update(v) is not None:
                delays.append(t - 7)
                break
    assert len(delays) == 40 and min(delays) >= 0
    assert np.median(delays) <= 1, delays


def _switch_delays(before, after, n_seeds=20, **kwargs):
    delays = []
    for seed in range(n_seeds):
        rng = np.random.default_rng(seed)
        x = np.stack([rng.normal(before, 0.3, 60), rng.normal(0.2, 0.05, 60)], 1)
        x[40:, 0] += after - before
        times = [t for t in _alarm_times(x, **kwargs) if t >= 40]
        delays.append(times[0] - 40 if times else 99)
    return delays


@pytest.mark.parametrize("before, after", [(-1.0, 1.0), (1.0, -1.0)])  # log r: low -> high, high -> low
def test_trend_reference_alarms_on_a_variance_switch_within_a_few_rollouts(before, after):
    delays = _switch_delays(before, after, reference="trend")
    assert max(delays) <= 3, delays


def test_trend_reference_does_not_alarm_on_a_slow_linear_drift():
    drift = np.linspace(0.0, 3.0, 200)[:, None]  # 3 sd over 200 rollouts, both components
    trend = sum(len(_alarm_times(np.random.default_rng(s).normal(size=(200, 2)) + drift, reference="trend")) for s in range(8))
    level = sum(len(_alarm_times(np.random.default_rng(s).normal(size=(200, 2)) + drift, reference="level")) for s in range(8))
    assert trend <= 1 and level >= 10, (trend, level)


def test_trend_reference_false_alarm_rate_on_a_stationary_stream_is_low():
    alarms = _alarm_times(np.random.default_rng(0).normal(3.0, 0.2, size=(2000, 2)), reference="trend")
    assert len(alarms) <= 3 * 2000 / 600, alarms


def test_trend_state_round_trip_and_old_saves_compare_with_the_level():
    x = np.random.default_rng(4).normal(size=(30, 2))
    a = CusumDetector(2, reference="trend")
    for v in x[:20]:
        a.update(v)
    b = CusumDetector(1)
    b.load_state_dict(a.state_dict())
    assert [a.update(v) for v in x[20:]] == [b.update(v) for v in x[20:]]
    old = CusumDetector(2).state_dict()
    del old["config"]["reference"], old["config"]["forgetting"]
    for s in old["streams"]:
        del s["sums"]
    c = CusumDetector(2, reference="trend")
    c.load_state_dict(old)
    assert c.reference == "level"


def _biased_stream(rng, n_batches=40, switch=20, n=512, d=3, bias=0.3):
    """Batches whose pathwise mean jumps by ``bias`` per coordinate at ``switch``; the variances and
    the correlation of the two estimators stay the same (the variance coordinates cannot see it)."""
    for k in range(n_batches):
        z, e = rng.normal(size=(n, d)), rng.normal(size=(n, d))
        yield z + (bias if k >= switch else 0.0), z + e


def test_watching_the_bias_detects_a_bias_jump_the_variance_coordinates_miss():
    from hybrid_pg.window import WindowedLambda

    alarms = {}
    for watch in (False, True):
        rng = np.random.default_rng(0)
        win = WindowedLambda(window=16, mode="adaptive", bias_correction=True, detector={"watch_bias": watch})
        at = []
        for k, (gp, gm) in enumerate(_biased_stream(rng)):
            win.update(gp, gm)
            if win.last_alarm is not None:
                at.append(k)
        alarms[watch] = at
    assert alarms[False] == []  # variances and correlation never moved
    assert alarms[True] and 20 <= alarms[True][0] <= 23 and all(k >= 20 for k in alarms[True])


def test_watch_bias_is_validated_and_survives_a_state_round_trip():
    from hybrid_pg.settings import SettingsError, validate_settings
    from hybrid_pg.window import WindowedLambda

    assert validate_settings(lambda_mode="adaptive", lambda_detector={"watch_bias": True}).lambda_detector == {"watch_bias": True}
    with pytest.raises(SettingsError, match="watch_bias"):
        validate_settings(lambda_mode="adaptive", lambda_detector={"watch_bias": "yes"})
    rng = np.random.default_rng(1)
    win = WindowedLambda(window=8, mode="adaptive", detector={"watch_bias": True})
    for gp, gm in list(_biased_stream(rng, n_batches=6)):
        win.update(gp, gm)
    twin = WindowedLambda()
    twin.load_state_dict(win.state_dict())
    assert twin.watch_bias and twin.detector.state_dict() == win.detector.state_dict()
    gp, gm = next(_biased_stream(np.random.default_rng(2), n_batches=1))
    win.update(gp, gm), twin.update(gp, gm)
    assert twin.lam == win.lam and twin.detector.state_dict() == win.detector.state_dict()
