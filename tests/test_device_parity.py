"""The device-parity check: a model loaded on another device computes the same weight."""

from __future__ import annotations

import math

import pytest
import torch as th

from hybrid_pg.experiments import device_parity as dp

th.set_num_threads(1)


@pytest.mark.parametrize("cell", ["critic", "critic_hl_gauss", "replay_critic", "model_two_steps"])
def test_a_copy_loaded_on_the_cpu_gives_exactly_the_same_statistics(cell):
    row = dp.check_cell(cell, "cpu", rollouts=4)
    assert row.ok and row.max_lam_diff == 0.0 and row.max_moment_rel_diff == 0.0, row
    assert 0.0 <= row.lam <= 1.0


def test_the_check_fails_when_the_loaded_copy_differs():
    def tamper(model):
        with th.no_grad():
            next(model.policy.mlp_extractor.policy_net.parameters()).mul_(1.01)

    row = dp.check_cell("critic", "cpu", rollouts=4, tamper=tamper)
    assert not row.ok and row.max_moment_rel_diff > 1e-3


def test_compare_scales_a_cancelling_covariance_by_its_variances():
    base = {"g.ss_path": 4.0, "g.ss_score": 9.0, "g.ss_cross": 1e-6, "g.lr_ss_path": 1.0, "g.lr_ss_score": 1.0, "g.lr_ss_cross": 0.0}
    shifted = dict(base, **{"g.ss_cross": 2e-6})  # doubled, but 1e-6 against variances of 4 and 9
    lam_diff, rel, _ = dp.compare(dp.Statistics({"w": 0.5}, base), dp.Statistics({"w": 0.5}, shifted))
    assert lam_diff == 0.0 and rel == pytest.approx(1e-6 / 6.0)
    lam_diff, rel, worst = dp.compare(dp.Statistics({"w": 0.5}, base), dp.Statistics({"w": 0.5}, dict(base, **{"g.ss_path": 5.0})))
    assert rel == pytest.approx(0.2) and worst == "g.ss_path"
    missing = dp.compare(dp.Statistics({"w": 0.5}, base), dp.Statistics({"w": 0.5}, {}))
    assert math.isinf(missing[0]) and "not finite" in missing[2]


def test_unknown_cells_are_refused():
    with pytest.raises(ValueError, match="unknown cells"):
        dp.run("cpu", ["critc"])


@pytest.mark.skipif(not th.cuda.is_available(), reason="needs a CUDA device")
def test_every_source_gives_the_same_weight_on_cuda():
    rows = dp.run("cuda")
    assert all(r.ok for r in rows), dp.format_rows(rows, 1e-3, 1e-3)
