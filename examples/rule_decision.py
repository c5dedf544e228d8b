"""Which weight rule becomes the default? Sets every goal of the 10-seed benchmark and of the optimum
grid side by side, per candidate (a cell both grids run), computed by the functions that write those
grids' reports. What is decided and how: hybrid_pg/experiments/rule_decision.py.

    python examples/rule_decision.py
    python examples/rule_decision.py --candidates hybrid hybrid_score_std --out /tmp/decision
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", default="configs/mujoco_benchmark10.yaml", help="the benchmark grid (baseline and floor goals)")
    parser.add_argument("--optimum", default="configs/mujoco_optimum.yaml", help="the optimum grid (stays at the optimum)")
    parser.add_argument("--candidates", nargs="+", metavar="CELL", help="cells to decide on (default: every cell both grids run)")
    parser.add_argument("--default", default="hybrid", help="today's default cell (marked in the table)")
    parser.add_argument("--out", default="docs/results/rule_decision.md", help="the table (.md)")
    args = parser.parse_args()
    from hybrid_pg.experiments.cli import write_or_usage_error
    from hybrid_pg.experiments.rule_decision import write

    write_or_usage_error(parser, lambda: [write(Path(args.benchmark), Path(args.optimum), Path(args.out), args.candidates, args.default)])


if __name__ == "__main__":
    main()
