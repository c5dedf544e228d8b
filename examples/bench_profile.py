"""Where HybridPG's extra time goes in ``hybrid-pg bench``'s regimes (Pendulum, A2C- and PPO-shaped).

Builds the bench's own pairs (:func:`hybrid_pg.experiments.benchmark.speed_configs`: same env,
n_envs, n_steps, gamma, one torch thread), trains them back to back, ``--repeats`` times with the
order alternating, and prints for the best repeat of each the wall time, the ratio to the baseline
and the phase table of :class:`hybrid_pg.experiments.phase_profile.PhaseTimer` (ms per 1000 env
steps): rollout collection, and each phase of HybridPG's update::

    python examples/bench_profile.py --regime a2c --steps 8192 --repeats 3
"""

from __future__ import annotations

import argparse
from typing import Any, Dict


def build(config: Dict[str, Any]) -> Any:
    from stable_baselines3.common.env_util import make_vec_env

    from hybrid_pg.experiments.config import algorithm_class, algorithm_kwargs

    env = make_vec_env(config["env"]["id"], n_envs=config["env"].get("n_envs", 1), seed=config["train"]["seed"])
    algo = config["algo"]
    return algorithm_class(algo["algorithm"])("MlpPolicy", env, seed=config["train"]["seed"], device="cpu", **algorithm_kwargs(algo))


def main() -> None:
    import torch as th

    from hybrid_pg.experiments.benchmark import SPEED_REGIMES, SpeedSettings, speed_configs
    from hybrid_pg.experiments.phase_profile import PhaseTimer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", choices=sorted(SPEED_REGIMES), default="a2c")
    parser.add_argument("--steps", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    th.set_num_threads(1)
    pair = speed_configs(SpeedSettings(steps=args.steps), args.regime, seed=0)
    best: Dict[str, Any] = {}
    for repeat in range(args.repeats):
        for index in (0, 1) if repeat % 2 == 0 else (1, 0):
            config = pair[index]
            name = config["algo"]["algorithm"]
            model = build(config)
            with PhaseTimer(model) as timer:
                model.learn(args.steps)
            model.env.close()
            print(f"  repeat {repeat} {name}: {timer.total:.3f} s", flush=True)
            if name not in best or timer.total < best[name][0]:
                best[name] = (timer.total, timer.table(steps=model.num_timesteps))
    names = [config["algo"]["algorithm"] for config in pair]
    base, hybrid = best[names[0]][0], best[names[1]][0]
    print(f"\n{args.regime} regime, {args.steps} steps, best of {args.repeats}: HybridPG / {names[0]} = {hybrid / base:.2f}x")
    for name in names:
        print(f"\n{name} ({best[name][0]:.3f} s):\n{best[name][1]}")


if __name__ == "__main__":
    main()
