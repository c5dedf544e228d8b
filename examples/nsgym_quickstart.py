"""HybridPG on an NS-Gym env: Pendulum whose mass grows and whose gravity random-walks.

NS-Gym's own scheduler and update functions drive the parameters on a global step clock
(:mod:`hybrid_pg_envs.nsgym`); the oracle's env copy follows the same schedule, and the parameters
are logged as ``env/m`` and ``env/g``.

    pip install -e ".[nsgym]"
    python examples/nsgym_quickstart.py --timesteps 20000
"""

from __future__ import annotations

import argparse

from ns_gym.schedulers import ContinuousScheduler, PeriodicScheduler
from ns_gym.update_functions import BoundedRandomWalk, IncrementUpdate

from hybrid_pg import HybridPG
from hybrid_pg_envs.nsgym import make_nsgym_env


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    env = make_nsgym_env(
        "Pendulum-v1",
        {
            "m": IncrementUpdate(PeriodicScheduler(period=5_000), k=0.1),  # +0.1 every 5k env steps
            "g": BoundedRandomWalk(ContinuousScheduler(), mu=0.0, sigma=0.01, lo=8.0, hi=12.0),
        },
        schedule_seed=args.seed,  # the random walk's path: same in the oracle's copy and on resume
    )
    model = HybridPG("MlpPolicy", env, n_steps=1024, batch_size=256, oracle_freq=5, oracle_samples=2048, seed=args.seed, verbose=1)
    model.learn(args.timesteps)  # logs env/m, env/g, hybrid/oracle_lambda, hybrid/drift_* ...
    print(f"clock {env.get_clock()}, parameters now {env.current_params}")


if __name__ == "__main__":
    main()
