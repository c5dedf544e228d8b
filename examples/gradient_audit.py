"""Audit every estimator of a run's checkpoints against the true-gradient reference.

    python examples/gradient_audit.py configs/audit/hopper.yaml              # train, audit, report (resumable)
    python examples/gradient_audit.py configs/audit/hopper.yaml --seeds 3    # only these seeds of the file's runs
    python examples/gradient_audit.py configs/audit/hopper.yaml --runs Hopper-v5__hybrid_mujoco --seeds 0
    python examples/gradient_audit.py configs/audit/hopper.yaml --report-only

What is measured, and how: hybrid_pg/experiments/gradient_audit.py and hybrid_pg/reference_gradient.py.
"""

import argparse
import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="audit YAML file (configs/audit/)")
    parser.add_argument("--seeds", type=int, nargs="+", help="audit only these seeds of the file's runs")
    parser.add_argument(
        "--runs", nargs="+", metavar="LABEL", help="audit only these runs of the file (labels: ENV__ESTIMATOR, or a file entry's label)"
    )
    parser.add_argument("--report-only", action="store_true", help="write the report from the audited checkpoints; train nothing")
    args = parser.parse_args(argv)

    import torch as th

    from hybrid_pg.experiments.gradient_audit import load_audit_config, run_audit, run_signals, save_meta, select_runs
    from hybrid_pg.experiments.gradient_audit_report import write_report

    th.set_num_threads(1)
    try:
        config = load_audit_config(args.config)
        # the grid read once; bad labels and unservable extra sources refused before anything trains
        # (a report reads only the audited files: the grid is read then only to check --runs labels)
        if not args.report_only or args.runs is not None:
            selected = select_runs(config, args.seeds, args.runs, check_sources=not args.report_only)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    save_meta(config)
    if not args.report_only:
        run_audit(config, runs=selected, log=lambda m: print(m, flush=True))
        run_signals(config, log=lambda m: print(m, flush=True))
    for path in write_report(config):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
