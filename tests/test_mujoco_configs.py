"""The MuJoCo grids: the benchmark's added source cells and the rollout-size sweep."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
    for _label, config in runs:
        algo = config["algo"]
        assert config["env"]["id"] == "HalfCheetah-v5" and config["env"]["n_envs"] == 1
        assert algo["n_steps"] == 32 * algo["batch_size"] and algo["n_epochs"] == 10
        assert config["train"]["total_timesteps"] == 300_000
        sizes.add(algo["n_steps"])
    assert sizes == {512, 2048, 8192}
    assert {label.split("__")[1] for label, _ in runs} == {"ppo", "reinforce", "hybrid"}


def test_the_floor_grid_is_the_benchmark_cut_at_100k():
    """examples/mujoco_floor.py pools the floor grid's 100k runs with the benchmark's runs read at
    100k: that is sound only if every resolved setting but the budget is the benchmark's (and
    nothing the hybrid does depends on the budget: constant learning rate and clip range)."""
    pytest.importorskip("mujoco")
    bench = {(label, c["train"]["seed"]): c for label, c in load_ablation(CONFIGS / "mujoco_benchmark.yaml").runs()}
    floor = load_ablation(CONFIGS / "mujoco_floor.yaml")
    assert floor.baseline is not None and (floor.baseline.floor, floor.baseline.floor_at_steps) == ("reinforce", 100_000)
    assert 0 in floor.seeds and len(set(floor.seeds) | set(range(5))) == 15
    labels = set()
    for label, config in floor.runs():
        if config["train"]["seed"] != 0:
            continue
        labels.add(label)
        twin = bench[(label, 0)]  # the benchmark's seed-0 run of the same cell
        assert twin["train"]["total_timesteps"] == 300_000 and config["train"]["total_timesteps"] == 100_000
        strip = lambda c: {**c, "train": {k: v for k, v in c["train"].items() if k != "total_timesteps"}}  # noqa: E731
        assert strip(config) == strip(twin), label
        assert not callable(config["algo"].get("learning_rate")) and not callable(config["algo"].get("clip_range"))
    assert labels == {f"{env}__{cell}" for env in ("HalfCheetah-v5", "Hopper-v5") for cell in ("ppo", "reinforce", "hybrid")}


def test_the_floor_report_pools_seeds_and_tests_the_tail(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("mujoco_floor", CONFIGS.parent / "examples" / "mujoco_floor.py")
    floor_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floor_mod)
    bench = {"E": {"reinforce": {0: 10.0, 1: 20.0}, "hybrid": {0: 5.0, 1: 30.0}}}
    extra = {"E": {"reinforce": {0: 99.0, 2: 15.0}, "hybrid": {0: 5.0, 2: 1.0, 3: 2.0}}}
    pooled = floor_mod.pool(bench, extra, ["E"], ["reinforce", "hybrid"])
    assert pooled["E"]["reinforce"] == {0: 10.0, 1: 20.0, 2: 15.0}  # the benchmark's reading wins a shared seed
    assert pooled["E"]["hybrid"] == {0: 5.0, 1: 30.0, 2: 1.0, 3: 2.0}
    assert floor_mod.both_grids(bench, extra, ["E"], ["reinforce", "hybrid"]) == {
        "E": {"reinforce": {0: (10.0, 99.0)}, "hybrid": {0: (5.0, 5.0)}}
    }
    assert floor_mod.lower_tail_mean(np.array([4.0, 1.0, 3.0, 2.0, 9.0, 8.0])) == 1.5  # ceil(0.2 * 6) = 2 lowest
    text = floor_mod.report(pooled, {}, 100, "", "hybrid", "reinforce", "ppo")
    # 3 of 4 hybrid seeds below reinforce's worst (10): p = 4/7 * 3/6 * 2/5
    assert "| hybrid | 4 |" in text and "3 (0.114)" in text and "read literally: not met (1 vs 10)" in text
    assert "by more than noise: no (3 of 4 seeds below, 1.00 expected by chance, p = 0.114)" in text
