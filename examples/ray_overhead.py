"""Overhead of the Ray backend: the same tiny grid trained by the local backend and by Ray, side by side.

    python examples/ray_overhead.py                      # 2 workers / a 2-CPU local Ray instance
    python examples/ray_overhead.py --steps 2048 --seeds 4 --cpus 2

The grid is 2 estimators x ``--seeds`` seeds of HybridPG on Pendulum-v1. Each backend trains it
into a fresh folder; the times are wall-clock seconds of :func:`run_grid` (for Ray: starting the
local instance, the tasks, shipping the run directories back and writing them, shutting down), and
the result.json contents (minus wall time) are checked to be equal. The Ray figure is also given
without the start-up, which a cluster pays once, not per grid.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from hybrid_pg.experiments.benchmark import run_config
from hybrid_pg.experiments.runner import RESULT_FILE, run_grid


def tiny_grid(seeds: int, steps: int):
    algo = dict(
        policy_kwargs=dict(net_arch=[8]), n_steps=64, batch_size=64, n_epochs=1, gamma=0.9, lambda_warmup=1, pathwise_source="critic"
    )
    return [
        (estimator, run_config("hybrid_pg", "Pendulum-v1", seed, steps, algo=dict(algo, estimator=estimator), eval_episodes=1))
        for estimator in ("hybrid", "reinforce")
        for seed in range(seeds)
    ]


def _results(runs_dir: Path):
    return {
        p.parent.name: {k: v for k, v in json.loads(p.read_text()).items() if k != "train_seconds"}
        for p in sorted(runs_dir.glob(f"*/{RESULT_FILE}"))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--cpus", type=int, default=2, help="local workers and Ray CPUs (default 2)")
    args = parser.parse_args()
    import ray

    runs = tiny_grid(args.seeds, args.steps)
    with tempfile.TemporaryDirectory(prefix="ray-overhead-") as tmp:
        t0 = time.perf_counter()
        run_grid(runs, Path(tmp) / "local", workers=args.cpus, progress=False)
        local = time.perf_counter() - t0

        t0 = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - t0
        try:
            t1 = time.perf_counter()
            run_grid(runs, Path(tmp) / "ray", progress=False, backend="ray")
            tasks = time.perf_counter() - t1
        finally:
            t2 = time.perf_counter()
            ray.shutdown()
            shutdown = time.perf_counter() - t2
        total = startup + tasks + shutdown
        same = _results(Path(tmp) / "local") == _results(Path(tmp) / "ray")
    print(f"grid: {len(runs)} runs of {args.steps} Pendulum steps, {args.cpus} CPUs")
    print("| backend | wall s | / local |")
    print("|---|---|---|")
    print(f"| local ({args.cpus} spawned workers) | {local:.1f} | 1.00 |")
    print(f"| ray (start + tasks + shutdown) | {total:.1f} | {total / local:.2f} |")
    print(f"| ray (tasks only; start {startup:.1f} s, shutdown {shutdown:.1f} s) | {tasks:.1f} | {tasks / local:.2f} |")
    print(f"result.json equal (minus wall time): {same}")


if __name__ == "__main__":
    main()
