"""Wall time per env step of the MuJoCo benchmark's cells, side by side, on HalfCheetah-v5.

Every cell of ``configs/mujoco_benchmark.yaml`` (SB3's PPO, HybridPG REINFORCE, the hybrid with the
advantage head, the replay-window critic and the MuJoCo simulator as pathwise source), plus the
MuJoCo source without its first-order model (``linearize=False``: the simulator and its Jacobians in
every minibatch, the previous behaviour), trains ``--steps`` env steps with the benchmark's settings
(n_steps 2048, batch 64, 10 epochs, 64x64, VecNormalize) on one thread. The cells run round-robin,
``--repeats`` times, so a machine's load drifts over all of them alike; the best repeat is reported.

Printed per cell: wall time per env step (collection + update) and its ratio to PPO, the update's
share alone per sample (``train()`` time / samples) with its ratio to PPO's update, and the share of
updates that used the pathwise term (lam > 0: the first ``lambda_warmup`` = 2 updates and any with
lam = 0 skip it, so a short run understates a source's cost)::

    python examples/mujoco_cost.py --steps 10240 --repeats 2

``--forced`` measures the sources' own cost instead: every hybrid cell with ``fixed_lambda=0.5`` and
no warmup (the pathwise term in every update), against REINFORCE (no pathwise term).

``--profile`` adds, per cell, where the time goes: rollout collection and each phase of the update
(:class:`hybrid_pg.experiments.phase_profile.PhaseTimer`), in ms per 1000 env steps and shares.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable, Dict, List

import torch as th

SETTINGS = dict(
    policy_kwargs=dict(net_arch=[64, 64]),
    n_steps=2048,
    batch_size=64,
    n_epochs=10,
    gamma=0.99,
    gae_lambda=0.95,
    learning_rate=3e-4,
    clip_range=0.2,
)


#: SB3's Adam settings with torch's per-parameter loop / its fused kernel
LOOP_ADAM = dict(eps=1e-5, fused=False)
FUSED_ADAM = dict(eps=1e-5, fused=True)
NOT_BENCHMARK_CELLS = ("hybrid_mujoco_k2", "hybrid_mujoco_forward_fd", "hybrid_loop_adam", "ppo_fused_adam")


def _env(env_id: str, seed: int) -> Any:
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    return VecNormalize(make_vec_env(env_id, n_envs=1, seed=seed), gamma=SETTINGS["gamma"])


def cells(forced: bool = False, device: str = "cpu") -> Dict[str, Callable[[Any, int], Any]]:
    """name -> (env, seed) -> model, as the benchmark's cells build them (``forced``: the hybrid
    cells at lam = 0.5 from the first update), every model on ``device``."""
    from stable_baselines3 import PPO

    from hybrid_pg import HybridPG

    force = dict(fixed_lambda=0.5, lambda_warmup=0) if forced else {}

    def hybrid(**kw: Any) -> Callable[[Any, int], Any]:
        extra = force if kw.get("estimator") == "hybrid" else {}
        return lambda env, seed: HybridPG("MlpPolicy", env, seed=seed, device=device, **{**SETTINGS, **kw, **extra})

    def mujoco_forward_fd(env: Any, seed: int) -> Any:
        model = hybrid(estimator="hybrid", pathwise_source="mujoco")(env, seed)
        model.pathwise.model.fd_centered = False  # forward differences: one perturbed step per actuator
        return model

    def mujoco_full(env: Any, seed: int) -> Any:
        model = hybrid(estimator="hybrid", pathwise_source="mujoco")(env, seed)
        model.pathwise.linearize = False  # the simulator in every value() call
        return model

    return {
        "ppo": lambda env, seed: PPO("MlpPolicy", env, seed=seed, device=device, **SETTINGS),
        "reinforce": hybrid(estimator="reinforce"),
        "hybrid": hybrid(estimator="hybrid", pathwise_source="critic"),
        "hybrid_replay": hybrid(estimator="hybrid", pathwise_source="replay_critic"),
        "hybrid_mujoco": hybrid(estimator="hybrid", pathwise_source="mujoco"),
        "hybrid_mujoco_full": mujoco_full,
        # not benchmark cells (only with --cells): a two-step return through the simulator; MuJoCo's
        # derivatives by forward differences (fd_centered=False); the
        # optimizer's loop instead of the fused Adam HybridPG uses by default (SB3's eps kept), and
        # PPO with the fused Adam, to tell the optimizer's share of a ratio from the algorithm's
        "hybrid_mujoco_k2": hybrid(estimator="hybrid", pathwise_source="mujoco", model_horizon=2),
        "hybrid_mujoco_forward_fd": mujoco_forward_fd,
        "hybrid_loop_adam": hybrid(
            estimator="hybrid", pathwise_source="critic", policy_kwargs=dict(SETTINGS["policy_kwargs"], optimizer_kwargs=LOOP_ADAM)
        ),
        "ppo_fused_adam": lambda env, seed: PPO(
            "MlpPolicy",
            env,
            seed=seed,
            device=device,
            **{**SETTINGS, "policy_kwargs": dict(SETTINGS["policy_kwargs"], optimizer_kwargs=FUSED_ADAM)},
        ),
    }


def measure(build: Callable[[Any, int], Any], env_id: str, steps: int, seed: int = 0, profile: bool = False) -> Dict[str, Any]:
    """Seconds per env step of ``learn(steps)`` and of its ``train()`` calls per sample
    (``profile``: plus the phase table of :class:`~hybrid_pg.experiments.phase_profile.PhaseTimer`)."""
    from contextlib import nullcontext

    from hybrid_pg.experiments.phase_profile import PhaseTimer

    model = build(_env(env_id, seed), seed)
    spent: List[float] = []
    with_path: List[bool] = []
    train = model.train

    def timed_train() -> None:
        t0 = time.perf_counter()
        train()
        spent.append(time.perf_counter() - t0)
        lam = getattr(model, "last_lambda", None)
        with_path.append(bool(lam) and max(lam.values()) > 0.0)

    model.train = timed_train
    timer = PhaseTimer(model) if profile else None
    t0 = time.perf_counter()
    with timer if timer is not None else nullcontext():
        model.learn(steps)
    total = time.perf_counter() - t0
    samples = len(spent) * model.n_steps * model.n_envs
    model.env.close()
    return {
        "step_s": total / model.num_timesteps,
        "update_s": sum(spent) / max(samples, 1),
        "path_share": sum(with_path) / max(len(with_path), 1),
        "phases": timer.table(steps=model.num_timesteps) if timer is not None else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--steps", type=int, default=10240)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cells", nargs="*", default=None, help="a subset of the cells (default: all)")
    parser.add_argument("--forced", action="store_true", help="hybrid cells at fixed_lambda=0.5, no warmup")
    parser.add_argument("--profile", action="store_true", help="also print where each cell's time goes (per phase)")
    parser.add_argument("--device", default="cpu", help="where every cell's networks run (e.g. cuda); the simulator stays on the CPU")
    args = parser.parse_args()
    th.set_num_threads(1)
    table = cells(args.forced, args.device)
    names = args.cells or [name for name in table if name not in NOT_BENCHMARK_CELLS]
    best: Dict[str, Dict[str, Any]] = {}
    for _ in range(args.repeats):
        for name in names:
            m = measure(table[name], args.env, args.steps, profile=args.profile)
            if name not in best or m["step_s"] < best[name]["step_s"]:
                best[name] = m
            print(f"  {name:20s} {m['step_s'] * 1e3:7.3f} ms/step, update {m['update_s'] * 1e3:7.3f} ms/sample", flush=True)
    ref_name = "reinforce" if args.forced else "ppo"
    ref = best.get(ref_name)
    what = "hybrid cells at fixed_lambda=0.5, no warmup" if args.forced else "the benchmark's settings"
    from hybrid_pg.experiments.device_parity import device_name

    where = "one CPU thread" if args.device == "cpu" else f"networks on {device_name(args.device)}, one CPU thread"
    print(f"\n{args.env}, {args.steps} steps, {what}, best of {args.repeats}, {where}")
    x = f"x {ref_name}"
    print(f"{'cell':20s} {'ms/step':>8s} {x:>11s} {'update ms/sample':>17s} {x:>11s} {'lam>0':>6s}")
    for name in names:
        m = best[name]
        r1 = f"{m['step_s'] / ref['step_s']:11.2f}" if ref else f"{'-':>11s}"
        r2 = f"{m['update_s'] / ref['update_s']:11.2f}" if ref else f"{'-':>11s}"
        print(f"{name:20s} {m['step_s'] * 1e3:8.3f} {r1} {m['update_s'] * 1e3:17.3f} {r2} {m['path_share']:6.0%}")
    if args.profile:
        for name in names:
            print(f"\n{name} (best repeat):\n{best[name]['phases']}")


if __name__ == "__main__":
    main()
