"""Does the learned critic's accuracy decide the pathwise gradient's? Pools gradient audits' advantage-head
checkpoints: per head, the critic's accuracy and the pathwise gradient's quality; pooled, their rank
correlation with a bootstrap over runs. What is measured: hybrid_pg/experiments/critic_accuracy.py.

    python examples/critic_accuracy.py                                   # the Hopper audits
    python examples/critic_accuracy.py --audit plain=docs/results/audit/hopper --out /tmp/critic
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: the Hopper audits of the plain, LayerNorm and HL-Gauss (with LayerNorm) advantage heads
DEFAULT_AUDITS = (
    "plain=docs/results/audit/hopper",
    "layer_norm=docs/results/audit/hopper_layer_norm",
    "hl_gauss_layer_norm=docs/results/audit/hopper_hl_gauss",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--audit", nargs="+", default=list(DEFAULT_AUDITS), metavar="NAME=FOLDER", help="audits to pool, each NAME=its output folder"
    )
    parser.add_argument("--out", default="docs/results/audit/critic_accuracy", help="output path without suffix (.md and .png are written)")
    args = parser.parse_args()
    audits = {}
    for item in args.audit:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            parser.error(f"--audit takes NAME=FOLDER, got {item!r}")
        if name in audits:
            parser.error(f"--audit names {name!r} twice")
        audits[name] = Path(folder)
    from hybrid_pg.experiments.cli import write_or_usage_error
    from hybrid_pg.experiments.critic_accuracy import write

    write_or_usage_error(parser, lambda: write(audits, Path(args.out)))


if __name__ == "__main__":
    main()
