"""Does anything a run logs early tell a good seed from a bad one? Reads a finished ablation grid and
correlates, within each task and hybrid cell, what each run logged by the early step with how it ended
(its final return, and that minus the floor cell's on the same seed). What is measured:
hybrid_pg/experiments/seed_triage.py.

    python examples/seed_triage.py                                           # the 10-seed MuJoCo benchmark
    python examples/seed_triage.py configs/mujoco_benchmark.yaml --out /tmp/triage --early-step 50000
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/mujoco_benchmark10.yaml", help="the grid's ablation YAML file")
    parser.add_argument("--runs", metavar="DIR", help="its runs folder (default: the file's output_dir/runs)")
    parser.add_argument("--out", default="docs/results/mujoco10/seed_triage", help="output path without suffix (.md, .csv, .png)")
    parser.add_argument("--early-step", type=int, default=100_000, help="read the predictors up to this env step (default 100000)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    args = parser.parse_args()
    if args.early_step <= 0 or args.resamples <= 0:
        parser.error("--early-step and --resamples must be positive")
    from hybrid_pg.experiments.cli import write_or_usage_error
    from hybrid_pg.experiments.seed_triage import write

    write_or_usage_error(
        parser, lambda: write(Path(args.config), Path(args.out), Path(args.runs) if args.runs else None, args.early_step, args.resamples)
    )


if __name__ == "__main__":
    main()
