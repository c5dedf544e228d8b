"""The MuJoCo grids: the benchmark's added source cells and the rollout-size sweep."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybrid_pg.experiments.ablate import load_ablation

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_the_benchmark_has_a_hybrid_cell_per_source_and_keeps_the_original_cells():
    pytest.importorskip("mujoco")
    ablation = load_ablation(CONFIGS / "mujoco_benchmark.yaml")
    cells = {e.name: e.algo for e in ablation.estimators}
    assert list(cells) == ["ppo", "reinforce", "hybrid", "hybrid_replay", "hybrid_mujoco"]
    # the weight rule is named in the cells (0.3's; runs of 0.2's rule have other names)
    assert cells["hybrid"] == {"estimator": "hybrid", "pathwise_source": "critic", "bias_rule": "posterior"}
    assert cells["hybrid_replay"] == {"estimator": "hybrid", "pathwise_source": "replay_critic", "bias_rule": "posterior"}
    assert cells["hybrid_mujoco"] == {"estimator": "hybrid", "pathwise_source": "mujoco", "bias_rule": "posterior"}
    assert ablation.baseline.name == "ppo" and ablation.baseline.floor == "reinforce" and ablation.baseline.floor_at_steps == 100_000
    assert all(e.n_envs == 1 for e in ablation.envs)  # in-process: the mujoco source reaches the simulator


def test_the_batch_sweep_varies_n_steps_at_32_minibatches():
    pytest.importorskip("mujoco")
    ablation = load_ablation(CONFIGS / "mujoco_batch_sweep.yaml")
    runs = ablation.runs()
    assert len(runs) == 27 and ablation.seeds == (0, 1, 2)
    sizes = set()
    for label, config in runs:
        algo = config["algo"]
        assert config["env"]["id"] == "HalfCheetah-v5" and config["env"]["n_envs"] == 1
        assert algo["n_steps"] == 32 * algo["batch_size"] and algo["n_epochs"] == 10
        assert config["train"]["total_timesteps"] == 300_000
        sizes.add(algo["n_steps"])
    assert sizes == {512, 2048, 8192}
    assert {label.split("__")[1] for label, _ in runs} == {"ppo", "reinforce", "hybrid"}
