"""Quality benchmark on Pendulum: HybridPG (hybrid / reinforce / pathwise) next to SB3 PPO and A2C.

Every algorithm gets the same step budget and seeds; the final score is the mean return of 10
deterministic evaluation episodes on a separate env. HybridPG runs use rl-zoo3's tuned PPO settings
for Pendulum-v1 (n_envs 4, n_steps 1024, gamma 0.9, gae_lambda 0.95, 10 epochs, lr 1e-3, clip 0.2)
without gSDE, which HybridPG cannot use (it needs a per-step eps); PPO is shown both with the zoo's
gSDE and without it, so the effect of the estimator is separable from the effect of exploration.
A2C uses the zoo's "almost tuned" Pendulum settings (tuned for 1e6 steps, reported at this budget).

    python examples/benchmark_pendulum.py                 # 3 seeds, 100k steps, all cores
    python examples/benchmark_pendulum.py --seeds 5 --steps 50000 --only hybrid_critic reinforce_critic
    python examples/benchmark_pendulum.py --ablations --only hybrid_critic hybrid_critic_no_trust_region
    python examples/benchmark_pendulum.py --backend ray --address auto   # the grid on a Ray cluster

Results (one JSON per run, resumable) and ``summary.md`` / ``summary.json`` go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

from hybrid_pg.experiments.benchmark import markdown_table, run_config, summarize
from hybrid_pg.experiments.ray_backend import RayNotInstalledError, require_ray
from hybrid_pg.experiments.runner import run_grid

PPO_ZOO = dict(n_steps=1024, gae_lambda=0.95, gamma=0.9, n_epochs=10, ent_coef=0.0, learning_rate=1e-3, clip_range=0.2)
A2C_ZOO = dict(
    ent_coef=0.0,
    max_grad_norm=0.5,
    n_steps=8,
    gae_lambda=0.9,
    vf_coef=0.4,
    gamma=0.99,
    use_rms_prop=True,
    normalize_advantage=False,
    learning_rate="lin_7e-4",
    use_sde=True,
    policy_kwargs=dict(log_std_init=-2, ortho_init=False),
)


def build_runs(seeds: int, steps: int, only: List[str], ablations: bool = False) -> List[Tuple[str, Dict[str, Any]]]:
    """(label, run config) per candidate and seed, for the one run engine."""
    candidates: Dict[str, dict] = {
        "ppo_zoo_gsde": dict(algo="ppo", env_id="Pendulum-v1", n_envs=4, algo_kwargs=dict(PPO_ZOO, use_sde=True, sde_sample_freq=4)),
        "ppo_zoo": dict(algo="ppo", env_id="Pendulum-v1", n_envs=4, algo_kwargs=PPO_ZOO),
        "a2c_zoo": dict(algo="a2c", env_id="Pendulum-v1", n_envs=8, normalize=True, algo_kwargs=A2C_ZOO),
    }
    for estimator in ("hybrid", "reinforce", "pathwise"):
        candidates[f"{estimator}_critic"] = dict(
            algo="hybrid_pg", env_id="Pendulum-v1", n_envs=4, algo_kwargs=dict(PPO_ZOO, estimator=estimator, pathwise_source="critic")
        )
        candidates[f"{estimator}_model"] = dict(
            algo="hybrid_pg",
            env_id="hybrid_pg/Pendulum-v0",
            n_envs=4,
            algo_kwargs=dict(PPO_ZOO, estimator=estimator, pathwise_source="model"),
        )
    # reinforce never uses the pathwise source: one reinforce run per env is enough
    candidates.pop("reinforce_model")
    if ablations:
        # design choices of the hybrid, each switched off alone (critic source, Pendulum-v1)
        base = candidates["hybrid_critic"]
        for suffix, change in (
            ("no_bias_correction", dict(bias_correction=False)),
            ("no_trust_region", dict(pathwise_kl_limit=None)),
            ("per_group", dict(lambda_groups="per_group")),
        ):
            candidates[f"hybrid_critic_{suffix}"] = dict(base, algo_kwargs=dict(base["algo_kwargs"], **change))
    selected = {k: v for k, v in candidates.items() if not only or k in only}
    return [
        (
            label,
            run_config(
                cfg["algo"],
                cfg["env_id"],
                seed,
                steps,
                algo=cfg["algo_kwargs"],
                n_envs=cfg["n_envs"],
                normalize=cfg.get("normalize", False),
            ),
        )
        for label, cfg in selected.items()
        for seed in range(seeds)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=None, help="parallel runs (default: all cores)")
    parser.add_argument("--backend", choices=("local", "ray"), default="local", help='ray: one Ray task per run (pip install -e ".[ray]")')
    parser.add_argument("--address", default=None, help="--backend ray: the Ray cluster (auto: the one 'ray start' runs here)")
    parser.add_argument("--only", nargs="*", default=[], help="run only these labels (e.g. hybrid_critic ppo_zoo)")
    parser.add_argument("--ablations", action="store_true", help="add hybrid_critic variants with one design choice switched off")
    parser.add_argument("--out", default="results/benchmark_pendulum")
    args = parser.parse_args()
    if args.backend == "ray":
        try:
            require_ray()
        except RayNotInstalledError as exc:
            parser.error(str(exc))  # exit 2

    runs = build_runs(args.seeds, args.steps, args.only, args.ablations)
    results = run_grid(runs, Path(args.out) / "runs", workers=args.workers, backend=args.backend, address=args.address)
    rows = summarize(results)
    table = markdown_table(rows)
    print(table)
    Path(args.out, "summary.md").write_text(table + "\n")
    Path(args.out, "summary.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
