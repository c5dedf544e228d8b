"""What taking the rollout in its own order changes: the long-run variances and the weight.

Before the fix (0.3.0 included), ``train()`` took its batch from SB3's ``get(batch_size=None)``,
which *shuffles* the samples, and then labelled them with the env-major block labels: each "block"
of the batch-means statistics was a random group of samples, so the long-run variances came out as the
independent-samples ones. The weight's noise floor (tau, the bias estimate's noise; the posterior
rule's input) then ignored the correlation of samples along a trajectory.

This script trains the hybrid (advantage head, the MuJoCo benchmark's settings, the fixed code) and,
at every update, also computes the rollout's moments the old way (the same rollout, shuffled, the
same labels), feeding them to a shadow copy of the weight's windows. Printed per env: the long-run /
independent variance ratio of the estimators' difference g_P - g_M (the factor tau is understated
by) both ways, and the weight the fixed windows give against the shadow's, per update::

    python examples/rollout_order_effect.py --envs HalfCheetah-v5 Hopper-v5 --rollouts 30

The shadow weight is what the old code's window would have said *on the fixed run's rollouts*: a
measure of the rule's input, not a rerun of the old training.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch as th

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mujoco_cost import SETTINGS  # noqa: E402  (the MuJoCo benchmark's settings, in one place)


def variance_ratio(m: Any) -> float:
    """Long-run over independent-samples variance of the difference g_P - g_M (trace)."""
    if not m.has_blocks:
        return math.nan
    iid = (m.ss_path + m.ss_score - 2 * m.ss_cross) / max(m.n - 1, 1)
    lr = (m.lr_ss_path + m.lr_ss_score - 2 * m.lr_ss_cross) / (m.n_blocks - 1)
    return lr / iid if iid > 0 else math.nan


def measure(env_id: str, rollouts: int, seed: int, n_steps: int = SETTINGS["n_steps"]) -> Dict[str, List[float]]:
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    import hybrid_pg.hybrid_pg as algo_module
    from hybrid_pg import HybridPG
    from hybrid_pg.rollout import subset_batch
    from hybrid_pg.update_weights import weights_for_update

    env = VecNormalize(make_vec_env(env_id, n_envs=1, seed=seed), gamma=SETTINGS["gamma"])
    model = HybridPG("MlpPolicy", env, seed=seed, device="cpu", pathwise_source="critic", **{**SETTINGS, "n_steps": n_steps})
    shadow = copy.deepcopy(model.lambda_windows)
    out: Dict[str, List[float]] = {"ratio_ordered": [], "ratio_shuffled": [], "lam_fixed": [], "lam_old": []}
    original = algo_module.rollout_group_moments
    rng = np.random.default_rng(seed)

    def spy(policy: Any, actor_head: Any, source: Any, batch: Any, **kwargs: Any) -> Any:
        ordered = original(policy, actor_head, source, batch, **kwargs)
        perm = th.as_tensor(rng.permutation(batch.n))
        shuffled = original(policy, actor_head, source, subset_batch(batch, perm), **kwargs)
        s = model.settings
        quality = getattr(model, "_previous_explained_variance", math.nan)
        for key, windows in (("lam_fixed", model.lambda_windows), ("lam_old", shadow)):  # the call train() made
            out[key].append(weights_for_update(s, windows, model.n_rollouts_trained, model.gradient_batch_size, quality)["global"])
        if ordered is not None and shuffled is not None:
            out["ratio_ordered"].append(variance_ratio(ordered["global"]))
            out["ratio_shuffled"].append(variance_ratio(shuffled["global"]))
            if model.n_rollouts_trained >= s.lambda_warmup:
                for name in shadow:
                    shadow[name].add(shuffled[name])
        return ordered

    algo_module.rollout_group_moments = spy
    try:
        model.learn(rollouts * n_steps)
    finally:
        algo_module.rollout_group_moments = original
        env.close()
    return out


def _summary(values: List[float]) -> str:
    v = np.asarray([x for x in values if math.isfinite(x)])
    return f"median {np.median(v):.2f} [{np.quantile(v, 0.1):.2f}, {np.quantile(v, 0.9):.2f}]" if len(v) else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["HalfCheetah-v5", "Hopper-v5"])
    parser.add_argument("--rollouts", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-steps", type=int, default=SETTINGS["n_steps"], help="steps per rollout (the benchmark's 2048)")
    args = parser.parse_args()
    th.set_num_threads(1)
    print(f"{args.rollouts} rollouts of {args.n_steps} steps per env, seed {args.seed}, the hybrid with the advantage head")
    for env_id in args.envs:
        r = measure(env_id, args.rollouts, args.seed, args.n_steps)
        fixed, old = np.asarray(r["lam_fixed"]), np.asarray(r["lam_old"])
        live = fixed > 0
        print(f"\n{env_id}")
        print(f"  long-run / independent variance of g_P - g_M, in order:  {_summary(r['ratio_ordered'])} (median [10%, 90%])")
        print(f"  the same, shuffled (the old code):                       {_summary(r['ratio_shuffled'])}")
        print(f"  weight, fixed windows: mean {fixed.mean():.3f}; shadow (old) windows: mean {old.mean():.3f}")
        print(f"  mean |fixed - old| {np.abs(fixed - old).mean():.3f} over {len(fixed)} updates ({int(live.sum())} with a live weight)")
        print("  per update (fixed / old): " + " ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(fixed, old)))


if __name__ == "__main__":
    main()
