"""Statistics that never overclaim: the run floor, paired comparisons, IQM only where it is not the
mean, probability of improvement and performance profiles (numpy and rliable agree), the summary
across envs. Pure numpy on tiny arrays: no training."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from hybrid_pg.experiments.ablate_report import contrast, estimator_summary, markdown_table, write_env_report, write_summary
from hybrid_pg.experiments.aggregate import (
    MIN_RUNS_FOR_SIGNIFICANCE,
    below_minimum_test,
    bootstrap_difference_ci,
    compare,
    normalise_min_max,
    performance_profile,
    probability_of_improvement,
    rliable_available,
    wilcoxon_p_value,
)


def _runs(values, seeds=None):
    """per-run metric dicts as ablate_report.run_metrics returns them (only final_return varies)."""
    return [{"final_return": v, "auc": v, "var_applied": 1.0, "variance_ratio": 1.0} for v in values]


def test_two_seeds_are_never_significant():
    # the case: two seeds per cell, a large difference; the percentile CI of 2 values is [min, max]
    c = compare([-150.0, -160.0], [-400.0, -420.0], seeds_a=[0, 1], seeds_b=[0, 1])
    assert c.verdict == "too few runs" and not c.significant
    ref = _runs([-400.0, -420.0])
    row = estimator_summary("hybrid", _runs([-150.0, -160.0]), ref, [0, 1], [0, 1])
    md = markdown_table("t", [row], "reinforce")
    assert "significant" not in md.replace("no significant", "").replace("Significant", "").replace("**Significant**", "")
    assert "too few runs (n = 2 and 2; a verdict needs >= 5 each)" in md


def test_floor_is_five_and_paired_needs_wilcoxon_too():
    assert MIN_RUNS_FOR_SIGNIFICANCE == 5
    a = np.array([10.0, 11.0, 12.0, 13.0, 14.0])
    # five seeds, all five paired differences positive: the CI excludes 0 but Wilcoxon's exact p is 2/32
    c = compare(a, a - 5.0, seeds_a=range(5), seeds_b=range(5))
    assert c.paired and c.diff.excludes(0.0) and c.p_value == pytest.approx(0.0625)
    assert c.verdict == "not significant"
    c6 = compare(np.arange(6.0), np.arange(6.0) - 5.0, seeds_a=range(6), seeds_b=range(6))
    assert c6.verdict == "significant" and c6.p_value == pytest.approx(2 / 64)


def test_pairing_removes_the_shared_seed_effect():
    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0.0, 100.0, size=8)  # what a seed does to both estimators
    a = seed_effect + 5.0 + rng.normal(0.0, 0.5, size=8)
    b = seed_effect
    paired = compare(a, b, seeds_a=range(8), seeds_b=range(8))
    unpaired = compare(a, b)
    assert paired.paired and paired.test == "wilcoxon" and paired.verdict == "significant"
    assert not unpaired.paired and unpaired.test == "welch" and unpaired.verdict == "not significant"
    # pairs are matched by seed, not by position
    shuffled = compare(a, b[::-1], seeds_a=range(8), seeds_b=list(range(8))[::-1])
    assert shuffled.diff == paired.diff and shuffled.p_value == paired.p_value
    # different seed sets: unpaired
    assert not compare(a, b, seeds_a=range(8), seeds_b=range(1, 9)).paired
    point = bootstrap_difference_ci(a, b, paired=True)
    assert point.point == pytest.approx(np.mean(a - b))
    assert math.isnan(wilcoxon_p_value([1.0, 2.0], [1.0, 2.0]))


def test_iqm_is_a_dash_below_four_runs():
    ref = _runs([0.0, 1.0, 2.0])
    row = estimator_summary("hybrid", _runs([3.0, 4.0, 5.0]), ref, [0, 1, 2], [0, 1, 2])
    assert math.isnan(row["final_return"]["iqm"].point) and row["final_return"]["mean"].point == pytest.approx(4.0)
    line = next(l for l in markdown_table("t", [row], "reinforce").splitlines() if l.startswith("| hybrid | 3 |"))
    assert "| —" in line
    row4 = estimator_summary("hybrid", _runs([0.0, 1.0, 2.0, 100.0]), None)
    assert row4["final_return"]["iqm"].point == pytest.approx(1.5)


def test_probability_of_improvement_and_profile_by_hand():
    x = [np.array([1.0, 2.0, 3.0]), np.array([0.0, 0.0])]
    y = [np.array([2.0, 2.0]), np.array([0.0, 1.0])]
    poi = probability_of_improvement(x, y, reps=200, backend="numpy")
    # task 1: pairs (1,2)<, (2,2)=, (3,2)> -> (2 + 0.5*2)/6 = 0.5; task 2: ties (0,0) x2 -> 0.25, (0,1) x2 -> 0 -> 0.25
    assert poi.point == pytest.approx((0.5 + 0.25) / 2)
    assert poi.low <= poi.point <= poi.high
    profile, low, high = performance_profile([np.array([0.1, 0.5, 0.9]), np.array([0.2])], [0.0, 0.3, 0.95], reps=200, backend="numpy")
    assert np.allclose(profile, [(1.0 + 1.0) / 2, (2 / 3 + 0.0) / 2, 0.0])
    assert np.all(low <= profile) and np.all(profile <= high)
    normalised = normalise_min_max([[np.array([0.0, 10.0]), np.array([5.0])], [np.array([3.0]), np.array([3.0])]])
    assert np.allclose(normalised[0][0], [0.0, 1.0]) and np.allclose(normalised[0][1], [0.5])
    assert np.allclose(normalised[1][0], [0.5])  # a task with one score value: 0.5


@pytest.mark.skipif(not rliable_available(), reason="rliable not importable (pip install rliable 'pandas<3')")
def test_numpy_fallback_agrees_with_rliable():
    rng = np.random.default_rng(1)
    x = [rng.normal(0.6, 0.2, size=6), rng.normal(0.5, 0.3, size=6)]
    y = [rng.normal(0.4, 0.2, size=6), rng.normal(0.5, 0.3, size=6)]
    ours = probability_of_improvement(x, y, reps=1000, backend="numpy")
    theirs = probability_of_improvement(x, y, reps=1000, backend="rliable")
    assert ours.point == pytest.approx(theirs.point)
    assert ours.low == pytest.approx(theirs.low, abs=0.05) and ours.high == pytest.approx(theirs.high, abs=0.05)
    taus = np.linspace(0.0, 1.0, 11)
    p_np, lo_np, hi_np = performance_profile(x, taus, reps=1000, backend="numpy")
    p_rl, lo_rl, hi_rl = performance_profile(x, taus, reps=1000, backend="rliable")
    assert np.allclose(p_np, p_rl)
    assert np.allclose(lo_np, lo_rl, atol=0.1) and np.allclose(hi_np, hi_rl, atol=0.1)


def _result(value, seed):
    return {"final_return": value, "rows": [], "spec": {"seed": seed}, "key": f"k{seed}"}


def test_summary_across_envs(tmp_path):
    per_env = {
        "a": {
            "hybrid": [_result(v, s) for s, v in enumerate([10.0, 11.0])],
            "reinforce": [_result(v, s) for s, v in enumerate([0.0, 1.0])],
        },
        "b": {
            "hybrid": [_result(v, s) for s, v in enumerate([-5.0, -4.0])],
            "reinforce": [_result(v, s) for s, v in enumerate([-9.0, -8.0])],
        },
    }
    written = write_summary(tmp_path, per_env, "reinforce")
    assert {p.name for p in written} == {"summary.md", "summary.csv", "performance_profile.png"}
    md = (tmp_path / "summary.md").read_text()
    assert "too few runs" in md and "better than" not in md
    with (tmp_path / "summary.csv").open() as fh:
        rows = {r["estimator"]: r for r in csv.DictReader(fh)}
    assert float(rows["hybrid"]["poi_vs_ref"]) == pytest.approx(1.0)
    # min-max per env over both estimators: a: (10, 11) of [0, 11]; b: (-5, -4) of [-9, -4]
    assert float(rows["hybrid"]["norm_mean"]) == pytest.approx((10 / 11 + 1.0 + 0.8 + 1.0) / 4)
    assert rows["reinforce"]["poi_vs_ref"] == "" and rows["reinforce"]["reading"] == "reference"


def test_summary_of_a_partially_filled_grid(tmp_path):
    # a grid filled over several invocations: an estimator without runs on every env is listed, not compared
    per_env = {
        "a": {"ppo": [_result(1.0, 0), _result(2.0, 1)], "reinforce": [_result(0.0, 0)], "hybrid": []},
        "b": {"ppo": [_result(3.0, 0), _result(5.0, 1)], "reinforce": [], "hybrid": []},
    }
    write_summary(tmp_path, per_env, "reinforce")
    md = (tmp_path / "summary.md").read_text()
    assert "Not compared across envs (no finished runs on every env, yet or by the file's envs lists): reinforce, hybrid." in md
    assert "no reinforce runs on every env yet" in md


def test_five_paired_seeds_can_never_be_significant_and_the_verdict_says_why():
    from hybrid_pg.experiments.ablate_report import METRICS, _verdict
    from hybrid_pg.experiments.aggregate import compare

    seeds = [0, 1, 2, 3, 4]
    five = compare([10.0, 11, 12, 13, 14], [0.0, 1, 2, 3, 4], seeds, seeds)  # every pair +10
    assert five.paired and five.p_value == pytest.approx(0.0625) and not five.significant
    assert "needs >= 6 seeds" in _verdict(METRICS[0], five, "reinforce")
    six = compare([10.0, 11, 12, 13, 14, 15], [0.0, 1, 2, 3, 4, 5], seeds + [5], seeds + [5])
    assert six.significant and "significant" in _verdict(METRICS[0], six, "reinforce")


# ------------------------------------------------------------------------------------------------
# below_minimum_test: the worst-seed floor made noise-aware
# ------------------------------------------------------------------------------------------------


def test_below_minimum_p_values_match_a_monte_carlo_of_exchangeable_runs():
    """P(K >= k) in closed form against 200k draws of two samples from one distribution, each
    within 4 Monte Carlo standard errors; the count's mean against n_a / (n_b + 1)."""
    rng = np.random.default_rng(7)
    n_a, n_b, draws = 15, 15, 200_000
    x = rng.standard_normal((draws, n_a + n_b))
    counts = (x[:, :n_a] < x[:, n_a:].min(axis=1, keepdims=True)).sum(axis=1)
    for k in range(1, 6):
        exact = below_minimum_test(np.r_[np.full(k, -1.0), np.ones(n_a - k)], np.zeros(n_b)).p_value
        mc = float(np.mean(counts >= k))
        se = math.sqrt(mc * (1 - mc) / draws)
        assert abs(exact - mc) < 4 * se + 1e-12, (k, exact, mc)
    assert abs(counts.mean() - n_a / (n_b + 1)) < 4 * counts.std() / math.sqrt(draws)
    # the thresholds the docstring quotes
    ps = [below_minimum_test(np.r_[np.full(k, -1.0), np.ones(15 - k)], np.zeros(15)).p_value for k in range(1, 5)]
    assert [round(p, 3) for p in ps] == [0.5, 0.241, 0.112, 0.05]


def test_below_minimum_counts_strictly_below_and_rejects_bad_input():
    res = below_minimum_test([0.0, 1.0, -2.0, -1.0], [-1.0, 3.0])
    assert (res.count, res.n_a, res.n_b) == (1, 4, 2)  # the tie at -1 is not below
    assert res.p_value == pytest.approx(4 / 6)
    assert below_minimum_test([5.0, 6.0], [1.0]).p_value == 1.0
    assert below_minimum_test([-5.0, -6.0], [1.0]).p_value == pytest.approx(2 / 3 * 1 / 2)  # both below: 1/3
    with pytest.raises(ValueError, match="at least one"):
        below_minimum_test([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        below_minimum_test([float("nan")], [1.0])


def test_a_contrast_pairs_two_estimators_on_the_seeds_both_ran(tmp_path):
    # the candidate is the default + 100 on every common seed, plus a seed of its own (9) and the default
    # two of its own (7, 8): the contrast pairs seeds 0-5 and finds exactly +100 with a zero-width CI
    default_seeds = [0, 1, 2, 3, 4, 5, 7, 8]
    default = [float(50 * s) for s in default_seeds]
    by_seed = dict(zip(default_seeds, default))
    cand_seeds = [5, 4, 3, 2, 1, 0, 9]  # order must not matter: pairs are matched by seed
    cand = [by_seed[s] + 100.0 for s in cand_seeds[:-1]] + [-1e6]
    per_run = {"candidate": _runs(cand), "hybrid": _runs(default)}
    seeds_of = {"candidate": cand_seeds, "hybrid": default_seeds}
    c = contrast("candidate", "hybrid", per_run, seeds_of)
    assert c.seeds == (0, 1, 2, 3, 4, 5)
    fr = c.comparisons["final_return"]
    assert fr.paired and fr.n_a == 6 and fr.diff.point == pytest.approx(100.0)
    assert fr.diff.low == pytest.approx(100.0) and fr.diff.high == pytest.approx(100.0)
    assert fr.p_value == pytest.approx(2 / 64) and fr.verdict == "significant"
    # an unfinished metric on one seed (NaN) drops that seed from that metric only
    per_run["candidate"][0] = {**per_run["candidate"][0], "auc": math.nan}
    c = contrast("candidate", "hybrid", per_run, seeds_of)
    assert c.comparisons["auc"].n_a == 5 and c.comparisons["final_return"].n_a == 6
    md = markdown_table("t", [], "reinforce", [c])
    line = next(x for x in md.splitlines() if x.startswith("| candidate | hybrid | 6 | final return |"))
    assert "100.0 [100.0, 100.0]" in line and "higher than hybrid (better), significant" in line
    assert "Wilcoxon 0.0625" in next(x for x in md.splitlines() if x.startswith("| candidate | hybrid | 6 | AUC"))


def test_the_env_report_writes_the_contrasts_only_where_both_sides_ran(tmp_path):
    results = {
        "reinforce": [_result(float(s), s) for s in range(6)],
        "hybrid": [_result(float(s) + 3.0, s) for s in range(6)],
        "candidate": [_result(float(s) + 1.0, s) for s in range(6)],
    }
    written = write_env_report(tmp_path, "E", "E", results, "reinforce", contrasts=[("candidate", "hybrid"), ("ppo", "hybrid")])
    assert (tmp_path / "contrasts_E.csv") in written
    with (tmp_path / "contrasts_E.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh)]
    assert {(r["estimator"], r["against"]) for r in rows} == {("candidate", "hybrid")}  # ppo has no runs here
    final = next(r for r in rows if r["metric"] == "final_return")
    assert float(final["diff"]) == pytest.approx(-2.0) and final["seeds"] == "0 1 2 3 4 5" and final["significant"] == "1"
    md = (tmp_path / "table_E.md").read_text()
    assert "## Estimators against each other" in md and "lower than hybrid (worse), significant" in md
    write_env_report(tmp_path / "none", "E", "E", results, "reinforce")
    assert not (tmp_path / "none" / "contrasts_E.csv").exists()
    assert "against each other" not in (tmp_path / "none" / "table_E.md").read_text()
