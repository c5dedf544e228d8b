"""The same weight on another device: every source's per-sample statistics and weight, CPU against CUDA.

For a seeded rollout, each cell (an env and a pathwise source) is trained on the CPU, saved, loaded on
``--device`` and both copies compute the statistics ``train()`` uses (see
:mod:`hybrid_pg.experiments.device_parity`). Exit status 1 when a cell differs beyond the tolerances::

    python examples/device_parity.py --device cuda --out parity.txt
    python examples/device_parity.py --device cpu      # no GPU: the loaded copy must agree exactly
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch as th

from hybrid_pg.experiments.device_parity import CELLS, device_name, format_rows, run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if th.cuda.is_available() else "cpu")
    parser.add_argument("--cells", nargs="*", choices=sorted(CELLS), default=None, help="default: every cell this machine can run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rollouts", type=int, default=5, help="CPU training rollouts before the comparison")
    parser.add_argument("--tol-lam", type=float, default=1e-3)
    parser.add_argument("--tol-rel", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    if th.device(args.device).type == "cuda" and not th.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here (use --device cpu for the save/load check)")
    rows = run(args.device, args.cells, args.seed, args.rollouts, args.tol_lam, args.tol_rel)
    text = f"CPU against {device_name(args.device)}, seed {args.seed}, {args.rollouts} training rollouts\n" + format_rows(
        rows, args.tol_lam, args.tol_rel
    )
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
