"""The gradient audit's statistics on a problem whose answer is known: on the coupled bandit every
episode is one step, so the score estimator (a constant baseline: V of the one state) and the
pathwise estimator through the env's exact model are both unbiased, while an untrained advantage
head is not."""

import dataclasses
import math

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env

import hybrid_pg_envs  # noqa: F401
from hybrid_pg import HybridPG
from hybrid_pg.experiments.gradient_audit import ReferenceSettings, audit_checkpoint, load_audit_config, summarise
from hybrid_pg.ground_truth.coupled_bandit import bandit_moments


@pytest.fixture(scope="module")
def bandit_audit():
    env = make_vec_env("hybrid_pg/CoupledBandit-v0", n_envs=1, seed=0, env_kwargs=dict(m=1.0, c=1.0))
    model = HybridPG(
        "MlpPolicy", env, n_steps=128, batch_size=128, pathwise_source="model", policy_kwargs=dict(net_arch=[]), seed=0, device="cpu"
    )
    with th.no_grad():
        model.policy.action_net.bias.fill_(0.3)
    settings = ReferenceSettings(rollouts=16, states_per_rollout=32, actions=4, burn_in=0, bootstrap=300)
    audit = audit_checkpoint(model, settings, seed=1, extra_sources=["critic"])
    return {(r["estimator"], r["group"]): r for r in audit["rows"] if r["stratum"] == "all"}, audit


def test_unbiased_estimators_show_no_bias_and_point_along_the_reference(bandit_audit):
    rows, _ = bandit_audit
    for est in ("score", "pathwise"):
        row = rows[(est, "all")]
        assert row["rel_bias_lo"] < 0.1, row  # the CI reaches down to (nearly) no bias
        assert row["cos_mean"] > 0.9, row
        assert abs(row["proj"]) < 0.25, row
    # one rollout's variance against the closed form: per-sample trace variance / (n_steps ||g||^2),
    # with the metric of the parameters (w, b, log_std): mu = w * 1 + b counts the mean twice
    truth = bandit_moments(0.3, 0.0, m=1.0, c=1.0, metric=np.diag([2.0, 1.0]))
    g_sq = 2 * truth.grad[0] ** 2 + truth.grad[1] ** 2
    for est, var in (("pathwise", truth.var_path), ("score", truth.var_score)):
        # 16 rollouts give a variance estimate good to about +-35%
        assert rows[(est, "all")]["rel_var"] == pytest.approx(var / (128 * g_sq), rel=0.6), est


def test_an_untrained_critic_is_flagged_as_biased(bandit_audit):
    rows, _ = bandit_audit
    critic = rows[("pathwise_critic", "all")]
    assert critic["rel_bias_lo"] > 0.5, critic  # the CI excludes small biases
    assert critic["rel_bias"] > 3 * max(rows[("pathwise", "all")]["rel_bias"], 0.05)
    # the weight that minimises the mix's error: close to 0 for the misleading critic
    assert critic["lam_mse"] < rows[("pathwise", "all")]["lam_mse"]


def test_the_summary_reports_reference_precision_and_costs(bandit_audit):
    rows, audit = bandit_audit
    row = rows[("score", "all")]
    assert row["ref_reliability"] > 0.8 and row["ref_split_half_cosine"] > 0.5
    assert audit["extras"]["env_steps"] > 16 * 128 and audit["extras"]["ref_states"] == 16 * 32
    assert not math.isnan(audit["extras"]["value_rmse_rel"])


def test_summarise_returns_nan_not_huge_numbers_for_a_reference_of_pure_noise():
    rng = np.random.default_rng(0)
    results = []
    for _ in range(6):
        ref = {"all": {"mean": th.as_tensor(rng.standard_normal(50)), "log_std": th.as_tensor(rng.standard_normal(1))}}
        est = {"all": {"mean": th.as_tensor(rng.standard_normal(50)), "log_std": th.as_tensor(rng.standard_normal(1))}}
        results.append({"reference": ref, "grads": {"score": est}})
    rows = summarise(results, bootstrap=100)
    assert all(math.isnan(r["rel_bias"]) or r["rel_bias"] < 1e6 for r in rows)


def test_audit_files_are_checked(tmp_path):
    bad = tmp_path / "a.yaml"
    bad.write_text("grid: g.yaml\nruns: [{env: X, estimator: y, seeds: [0]}]\ncheckpoints: []\n")
    with pytest.raises(ValueError, match="checkpoints"):
        load_audit_config(str(bad))
    bad.write_text("grid: g.yaml\nruns: [{env: X, estimator: y, seeds: [0]}]\ncheckpoints: [10]\nreference: {actions: 1}\n")
    with pytest.raises(ValueError, match=r"reference\.actions=1"):
        load_audit_config(str(bad))
    bad.write_text("grid: g.yaml\nrun: []\ncheckpoints: [10]\n")
    with pytest.raises(ValueError, match="unknown key"):
        load_audit_config(str(bad))


def test_the_audit_command_trains_audits_reports_and_resumes(tmp_path, monkeypatch):
    """End to end on a tiny Pendulum grid: checkpoints saved, each audited once (a second call
    trains and audits nothing), signals measured, the report written."""
    import json

    from hybrid_pg.experiments import gradient_audit as ga
    from hybrid_pg.experiments.gradient_audit_report import write_report

    monkeypatch.chdir(tmp_path)
    (tmp_path / "grid.yaml").write_text(
        "name: tiny\nseeds: 1\ntotal_timesteps: 256\neval_episodes: 1\n"
        "algo: {n_steps: 64, batch_size: 64, n_epochs: 1, lambda_warmup: 0, policy_kwargs: {net_arch: [16]}}\n"
        "envs: [Pendulum-v1]\nreference: hybrid\nestimators: [{name: hybrid, algo: {estimator: hybrid, pathwise_source: critic}}]\n"
    )
    (tmp_path / "audit.yaml").write_text(
        "grid: grid.yaml\noutput_dir: out\nruns: [{env: Pendulum-v1, estimator: hybrid, seeds: [0]}]\n"
        "checkpoints: [64, 192]\nreference: {rollouts: 4, states_per_rollout: 4, actions: 4, burn_in: 10, bootstrap: 100}\n"
    )
    config = ga.load_audit_config("audit.yaml")
    with pytest.raises(ValueError, match="no run labelled Pendulum-v1__hybrdi .*labels: Pendulum-v1__hybrid"):
        ga.run_audit(config, only_runs=["Pendulum-v1__hybrdi"], log=lambda m: None)
    assert ga.run_audit(config, only_runs=["Pendulum-v1__hybrid"], only_seeds=[1], log=lambda m: None) == []
    bad = dataclasses.replace(config, extra_sources=("mujoco",))
    with pytest.raises(ValueError, match="extra source 'mujoco' cannot serve Pendulum-v1__hybrid"):
        ga.run_audit(bad, log=lambda m: None)
    assert not (tmp_path / "out" / "runs").exists()  # a filter that leaves nothing trains nothing
    written = ga.run_audit(config, only_runs=["Pendulum-v1__hybrid"], log=lambda m: None)
    assert len(written) == 2 and all(p.exists() for p in written)
    run_dir = next((tmp_path / "out" / "runs").iterdir())
    assert (run_dir / "result.json").exists()  # trained the whole budget by default
    stamps = [p.stat().st_mtime_ns for p in written]
    assert ga.run_audit(config, log=lambda m: None) == written
    assert [p.stat().st_mtime_ns for p in written] == stamps  # nothing audited twice
    signals = ga.run_signals(config, rollouts=2, log=lambda m: None)
    assert len(signals) == 2 and {"sign_agreement", "direction_t", "direction_cos"} <= set(json.loads(signals[0].read_text()))
    assert ga.run_signals(config, rollouts=3, log=lambda m: None) == []  # measured once
    stale = json.loads(signals[0].read_text())
    del stale["direction_t"]
    signals[0].write_text(json.dumps(stale))  # a file from before the window signals: measured again
    assert ga.run_signals(config, rollouts=3, log=lambda m: None) == [signals[0]]
    report = write_report(config)
    text = (tmp_path / "out" / "report.md").read_text()
    assert any(p.name == "cosine_vs_step.png" for p in report) and "Pendulum-v1__hybrid, seed 0" in text


def test_the_audit_table_takes_the_columns_of_old_and_new_checkpoints(tmp_path):
    """Checkpoints audited before a column existed (no ``source``) sit beside newer ones: the table
    keeps every column, empty where a checkpoint lacks it (a mixed folder once stopped the report)."""
    import csv

    from hybrid_pg.experiments.gradient_audit_report import write_table

    rows = [{"run": "a", "step": 1, "cos": 0.5}, {"run": "b", "step": 2, "cos": 0.25, "source": "critic"}]
    write_table(rows, tmp_path / "t.csv")
    with open(tmp_path / "t.csv", newline="") as fh:
        read = list(csv.DictReader(fh))
    assert list(read[0]) == ["run", "step", "cos", "source"]
    assert [(r["run"], r["source"]) for r in read] == [("a", ""), ("b", "critic")] and read[1]["cos"] == "0.25"


def _audit_row(run, seed, step, estimator, cos, bias, reliability=0.9, corr=0.5):
    return {
        "run": run,
        "seed": seed,
        "step": step,
        "estimator": estimator,
        "group": "all",
        "stratum": "all",
        "cos_single_corrected": cos,
        "rel_bias": bias,
        "lam_mse": 0.5,
        "ref_reliability": reliability,
        "adv_head_corr": corr,
        "value_rmse_rel": 0.3,
    }


def test_an_audit_is_paired_with_another_at_the_same_seed_and_checkpoint(tmp_path):
    """compare_with: each of this audit's checkpoints beside the other audit's run at the same seed and
    step; the medians only over checkpoints whose references both allow a cosine."""
    from hybrid_pg.experiments.gradient_audit_report import contrast_table

    new, old = "E__hybrid_layer_norm", "E__hybrid"
    mine, theirs = [], []
    for seed, step, cos_new, bias_new, cos_old, bias_old in [
        (3, 20000, 0.9, 0.2, -0.8, 3.5),
        (3, 50000, 0.7, 0.5, 0.8, 0.4),
        (4, 20000, float("nan"), 9.0, float("nan"), 1.0),  # reference too noisy: listed, not in the medians
    ]:
        mine += [_audit_row(new, seed, step, "pathwise", cos_new, bias_new), _audit_row(new, seed, step, "score", 0.6, 0.1)]
        theirs += [_audit_row(old, seed, step, "pathwise", cos_old, bias_old), _audit_row(old, seed, step, "score", 0.6, 0.1)]
    theirs += [_audit_row(old, 9, 20000, "pathwise", 0.1, 1.0), _audit_row(old, 9, 20000, "score", 0.1, 1.0)]  # no partner
    theirs += [_audit_row("E__hybrid_mujoco", 3, 20000, "pathwise", 1.0, 0.0)]  # another run of the other audit
    lines = contrast_table(mine, theirs, "docs/old", old)
    text = "\n".join(lines)
    assert "## Against docs/old: hybrid_layer_norm / hybrid" in text
    assert "| 3 | 20000 | 0.90 / 0.90 | 0.90 / -0.80 | 0.20 / 3.50 |" in text
    assert "| 4 | 20000 |" in text and "| 9 |" not in text
    summary = next(line for line in lines if line.startswith("Medians"))
    assert "over the 2 matched checkpoints" in summary
    assert "cos pathwise 0.80 / 0.00" in summary and "bias pathwise 0.35 / 1.95" in summary
    assert "smaller on 1 of 2" in summary
    assert contrast_table(mine, theirs, "docs/old", "E__nothing") == []


def test_compare_with_is_checked(tmp_path):
    bad = tmp_path / "a.yaml"
    head = "grid: g.yaml\nruns: [{env: X, estimator: y, seeds: [0]}]\ncheckpoints: [10]\n"
    bad.write_text(head + "compare_with: docs/results/audit/hopper\n")
    with pytest.raises(ValueError, match="compare_with must be a mapping"):
        load_audit_config(str(bad))
    bad.write_text(head + "compare_with: {audit: docs/results/audit/hopper, run: Hopper-v5__hybrid}\n")
    assert load_audit_config(str(bad)).compare_with == ("docs/results/audit/hopper", "Hopper-v5__hybrid")
