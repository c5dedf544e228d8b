"""The ``hybrid-pg`` command line.

::

    hybrid-pg train [CONFIG] [--set KEY=VALUE ...] [--out RUN_DIR] [--quiet] [--format png|pdf|svg]
    hybrid-pg plot RUN_DIR [RUN_DIR ...] [--out FIGURE] [--format png|pdf|svg]
    hybrid-pg ablate CONFIG [--workers N] [--out DIR] [--seeds S [S ...]] [--only NAME [NAME ...]] [--report-only]
                     [--backend local|ray] [--address ADDR] [--dry-run] [--quiet] [--format png|pdf|svg]
    hybrid-pg compact DIR [DIR ...] [--dry-run]
    hybrid-pg bench [--steps N] [--seeds K] [--out DIR] [--env ID] [--n-envs N] [--n-steps N] [--eval-episodes N]

``train`` reads CONFIG (default: the packaged ``default.yaml``, which the repository's
``configs/default.yaml`` links to; the schema is in :mod:`hybrid_pg.experiments.config`), applies
the ``--set`` overrides (dotted keys, YAML values), validates everything (including building one
env, taking one step in it, and the model) and only then creates the run directory
``{output.dir}/{output.name or env id}_{estimator}_s{seed}_{timestamp}-{random hex}`` (or ``--out
RUN_DIR``), refusing to reuse a non-empty one; the directory is claimed atomically, so two runs
started at once never share one. The run engine (:func:`hybrid_pg.experiments.runner.run`)
writes there ``config.yaml`` (resolved, with package versions and git commit), ``model.zip``
(+ ``vecnormalize.pkl``), ``progress.csv`` and ``tensorboard/``, ``diagnostics.csv``,
``evaluations.csv``, ``returns.png``, ``lambda.png`` and, last, ``result.json``.

Non-quiet runs print one line per update (the diagnostics row: steps, training return, lam) and per
evaluation instead of SB3's per-update table (that goes to progress.csv / tensorboard); the last line
printed is always the run directory, so ``RUN=$(hybrid-pg train --quiet)`` captures it.

``plot`` redraws a run's ``returns.png`` and ``lambda.png``, or, with ``--out``, overlays the
returns of several runs in one figure.

``compact`` gzips ``progress.csv`` and ``diagnostics.csv`` of every finished run below DIR
(:mod:`hybrid_pg.experiments.compaction`); every command reads the compressed files as the plain ones.

Every figure is a PNG unless ``--format pdf`` or ``--format svg`` asks for a vector file (``train``,
``plot``, ``ablate``; ``plot --out`` goes by the file's suffix); the layout is the same
(:mod:`hybrid_pg.experiments.figure_io`).

``ablate`` runs an estimator ablation grid (env x estimator x seed; file format in
:mod:`hybrid_pg.experiments.ablate`): every cell is validated first, missing runs train in parallel worker
processes (at most one per core), finished runs are never redone, and per env it writes
``table_<env>.md/.csv``, ``runs_<env>.csv``, ``curves_<env>.png``, ``variance_<env>.png`` and ``lambda_<env>.png``
(:mod:`hybrid_pg.experiments.ablate_report`). ``--dry-run`` validates and lists the grid without training.
``--only NAME ...`` trains only the named estimators (the tables cover every finished run), so a
grid can be filled over several invocations. ``--backend ray [--address ADDR]`` trains the runs as
Ray tasks on a cluster, written here in the same resumable layout
(:mod:`hybrid_pg.experiments.ray_backend`); without Ray installed it exits 2.

``bench`` times HybridPG against SB3's A2C and PPO with the same env, n_steps and n_envs, runs
interleaved in one process with one torch thread, and records every run's final deterministic
return (:func:`hybrid_pg.experiments.benchmark.speed_benchmark`); it writes ``bench.json``, ``bench.md``
and the run directories under ``runs/``.

Exit status: 0 on success, 2 on a usage or configuration error (nothing is trained or written), 130
when training was interrupted by Ctrl-C (SIGINT) and 143 by SIGTERM (``train``: the model and plots
so far are still saved; ``ablate``: the grid stops, its worker processes with it, and no unfinished
run counts as finished, so the next invocation trains exactly the runs left).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from hybrid_pg.experiments.config import ConfigError, load_config, run_name
from hybrid_pg.experiments.figure_io import FIGURE_FORMATS, figure_path
from hybrid_pg.experiments.processes import signal_of, sigterm_interrupts
from hybrid_pg.experiments.runner import CorruptRunError, RunDirError, run

__all__ = ["UsageError", "build_parser", "main"]

PROG = "hybrid-pg"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A command-line problem other than the config itself."""


# ------------------------------------------------------------------------------------------------
# subcommands
# ------------------------------------------------------------------------------------------------


def _cmd_train(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set)
    if args.out is not None:
        run_dir = Path(args.out)
    else:
        run_dir = Path(config["output"]["dir"]) / run_name(config, time.strftime("%Y%m%d-%H%M%S"))
    result = run(config, run_dir, quiet=args.quiet, figure_format=args.figure_format)
    print(result.run_dir)
    return 128 + result.stopped_by if result.interrupted and result.stopped_by else 0


def _require_backend(args: argparse.Namespace) -> None:
    """Fail fast (exit 2, nothing validated or trained) on a backend that cannot run."""
    if args.backend != "ray":
        if args.address is not None:
            raise UsageError("--address is for --backend ray")
        return
    from hybrid_pg.experiments.ray_backend import RayNotInstalledError, require_ray

    try:
        require_ray()
    except RayNotInstalledError as exc:
        raise UsageError(f"--backend ray: {exc}") from exc


def _cmd_ablate(args: argparse.Namespace) -> int:
    from hybrid_pg.experiments.ablate import RUNS_SUBDIR, load_ablation, run_ablation, select_estimators, selected_runs
    from hybrid_pg.experiments.runner import adopt_finished_runs, available_cores, in_training_elsewhere, pending

    _require_backend(args)
    ablation = load_ablation(args.config, seeds=args.seeds)
    out = Path(args.out) if args.out is not None else Path(ablation.output_dir)
    specs = selected_runs(ablation, args.only)
    todo = pending(specs, out / RUNS_SUBDIR)
    if args.backend == "local" and args.workers is not None and args.workers > available_cores() and not args.quiet:
        print(f"{PROG}: --workers {args.workers} capped at the {available_cores()} available cores", file=sys.stderr)
    if not args.quiet or args.dry_run:
        estimators = select_estimators(ablation, args.only)
        which = f" (--only {' '.join(estimators)})" if args.only else ""
        elsewhere = in_training_elsewhere(specs, out / RUNS_SUBDIR)
        busy = f" ({len(elsewhere)} of them in training by another process, left to it)" if elsewhere else ""
        adoptable = adopt_finished_runs(todo, out / RUNS_SUBDIR, ablation.reuse_sources(), dry_run=True) if ablation.reuse_runs_from else []
        if adoptable:
            busy += f" ({len(adoptable)} of them finished by another grid, copied from reuse_runs_from)"
        print(
            f"ablation {ablation.name}: {len(ablation.envs)} envs x {len(estimators)} estimators{which} x "
            f"{len(ablation.seeds)} seeds = {len(specs)} runs, {len(specs) - len(todo)} done, {len(todo)} to train{busy}; output {out}"
        )
    if args.dry_run:
        for cell in ablation.cells:
            if not args.only or cell.estimator.name in args.only:
                print(f"  {cell.label}: {cell.env.id} x{cell.env.n_envs} {cell.config['algo']['algorithm']} {cell.algo_kwargs}")
        return 0
    result = run_ablation(
        ablation,
        out,
        workers=args.workers,
        progress=not args.quiet,
        backend=args.backend,
        address=args.address,
        only=args.only,
        train=not args.report_only,
        figure_format=args.figure_format,
    )
    if not args.quiet:
        if not result.runs_trained:
            how = "the others were done" if result.runs_held else "all were done"
        elif result.backend == "ray":
            how = "as Ray tasks"
        else:
            how = f"in {result.workers} worker process{'es' if result.workers > 1 else ''}"
        held = f"; {result.runs_held} left to another process that is training them" if result.runs_held else ""
        print(f"trained {result.runs_trained} of {result.runs_total} runs ({how}){held}; wrote:")
    for path in result.written:
        print(path)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from hybrid_pg.experiments.benchmark import SpeedSettings, speed_benchmark, write_speed_report
    from hybrid_pg.experiments.config import check_env, resolve_config

    try:
        settings = SpeedSettings(
            env_id=args.env, steps=args.steps, seeds=args.seeds, n_envs=args.n_envs, n_steps=args.n_steps, eval_episodes=args.eval_episodes
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    # the env must exist and suit HybridPG before anything is timed
    check_env(resolve_config({"env": {"id": args.env}, "train": {"total_timesteps": args.steps}}))
    report = speed_benchmark(settings, log=None if args.quiet else print, runs_dir=Path(args.out) / "runs")
    for path in write_speed_report(report, args.out):
        print(path)
    return 0


def _int_at_least(low: int, what: str = "an integer"):
    """argparse type: an integer >= ``low``, with a message naming what was expected."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_seed = _int_at_least(0, "an integer seed")


def _cmd_compact(args: argparse.Namespace) -> int:
    from hybrid_pg.experiments.compaction import compact

    for folder in args.dirs:
        if not Path(folder).is_dir():
            raise UsageError(f"{folder} is not a directory")
    done = compact(args.dirs, dry_run=args.dry_run)
    before = sum(c.before for c in done)
    runs = len({c.path.parent for c in done})
    if args.dry_run:
        print(f"would compress {len(done)} files of {runs} finished runs ({before / 1e6:.1f} MB)")
    else:
        after = sum(c.after or 0 for c in done)
        print(f"compressed {len(done)} files of {runs} finished runs: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from hybrid_pg.experiments.plots import plot_lambda, plot_returns

    run_dirs = [Path(d) for d in args.run_dirs]
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise UsageError(f"{run_dir} is not a directory")
    if args.out is not None and Path(args.out).suffix.lstrip(".").lower() not in FIGURE_FORMATS:
        raise UsageError(f"--out {args.out}: name the figure .png, .pdf or .svg")
    try:
        if args.out is not None:
            written = [plot_returns(run_dirs, args.out)]
        elif len(run_dirs) == 1:
            run_dir = run_dirs[0]
            written = [
                plot_returns([run_dir], figure_path(run_dir, "returns", args.figure_format)),
                plot_lambda(run_dir, figure_path(run_dir, "lambda", args.figure_format)),
            ]
        else:
            raise UsageError("--out FIGURE is required to overlay several runs")
    except (FileNotFoundError, ValueError) as exc:  # not a run directory (nor a tensorboard log), or unreadable files
        raise UsageError(str(exc)) from exc
    for path in written:
        print(path)
    return 0


# ------------------------------------------------------------------------------------------------
# parser and entry point
# ------------------------------------------------------------------------------------------------


def write_or_usage_error(parser: argparse.ArgumentParser, write: Callable[[], Sequence[Path]]) -> None:
    """Run a report writer for an example script: a missing folder or nothing to report
    (FileNotFoundError, ValueError) becomes the parser's usage error (exit status 2, nothing
    written); else print each written path."""
    try:
        paths = write()
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    for path in paths:
        print(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    from hybrid_pg import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train and inspect HybridPG (hybrid pathwise + score-function policy gradient) runs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train",
        help="train one run from a YAML config",
        description="Train HybridPG from a YAML config and write model, logs and plots to a new run directory.",
        epilog="example: hybrid-pg train configs/default.yaml --set train.total_timesteps=20000 --set algo.estimator=reinforce",
    )
    train.add_argument("config", nargs="?", metavar="CONFIG", help="YAML config file (default: the packaged default.yaml)")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value by dotted key, VALUE parsed as YAML (repeatable), e.g. algo.n_steps=512",
    )
    train.add_argument(
        "--out",
        metavar="RUN_DIR",
        help="the run directory itself (default: {output.dir}/{name}_{estimator}_s{seed}_{timestamp}-{random hex}); must not exist or be empty",
    )
    train.add_argument("--quiet", action="store_true", help="print only the run directory")
    _add_format_argument(train, "returns and lambda figures")
    train.set_defaults(handler=_cmd_train)

    plot = commands.add_parser(
        "plot",
        help="redraw a run's plots or overlay several runs",
        description=(
            "Without --out, redraw RUN_DIR/returns.png and RUN_DIR/lambda.png (.pdf, .svg with --format); with --out, overlay "
            "the returns of all runs in one figure, written as its suffix says (.png, .pdf or .svg)."
        ),
    )
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by 'hybrid-pg train'")
    plot.add_argument("--out", metavar="FIGURE", help="write a returns overlay of all runs here (.png, .pdf or .svg)")
    _add_format_argument(plot, "redrawn figures (with --out: the suffix of FIGURE decides)")
    plot.set_defaults(handler=_cmd_plot)
    _add_ablate_parser(commands)
    _add_bench_parser(commands)
    _add_compact_parser(commands)
    return parser


def _add_ablate_parser(commands) -> None:
    ablate = commands.add_parser(
        "ablate",
        help="run an estimator ablation grid (env x estimator x seed) and report it",
        description=(
            "Validate every cell of an ablation file (format: see hybrid_pg/experiments/ablate.py or configs/ablate_pendulum.yaml), "
            "train the runs not done yet in parallel worker processes (resumable: finished runs are skipped) and write, "
            "per env, table_<env>.md/.csv (final return, area under the learning curve and gradient variance: mean and "
            "IQM with 95% bootstrap CIs, comparisons with the reference estimator), curves_<env>.png, variance_<env>.png and lambda_<env>.png."
        ),
        epilog="example: hybrid-pg ablate configs/ablate_pendulum.yaml --workers 2 --seeds 0 1 2",
    )
    ablate.add_argument("config", metavar="CONFIG", help="ablation YAML file")
    ablate.add_argument(
        "--workers", type=_positive_int, metavar="N", help="parallel training processes (default: all cores; capped at the cores)"
    )
    ablate.add_argument("--out", metavar="DIR", help="output folder (default: the file's output_dir, else results/<name>)")
    ablate.add_argument(
        "--seeds", type=_seed, nargs="+", metavar="S", help="the seeds to run, replacing the file's seeds (e.g. --seeds 0 1 2)"
    )
    ablate.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="train only these estimators of the file (e.g. --only reinforce); the tables cover every finished run of the grid",
    )
    _add_backend_arguments(ablate)
    ablate.add_argument("--dry-run", action="store_true", help="validate and list the grid and what is left to train; train nothing")
    ablate.add_argument(
        "--report-only",
        action="store_true",
        help="write the tables and figures from the runs already finished; train nothing (safe while the grid is being filled)",
    )
    ablate.add_argument("--quiet", action="store_true", help="no progress bar; print only the written files")
    _add_format_argument(ablate, "report's figures")
    ablate.set_defaults(handler=_cmd_ablate)


def _add_format_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--format",
        dest="figure_format",
        choices=FIGURE_FORMATS,
        default="png",
        help=f"file format of the {what}: png (default), pdf or svg (vector, for papers)",
    )


def _add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """--backend and --address: where a grid's runs train (:func:`hybrid_pg.experiments.runner.run_grid`)."""
    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help=(
            "local: worker processes on this machine (default); ray: one Ray task per run on a Ray cluster, "
            'the run directories written here (needs pip install -e ".[ray]")'
        ),
    )
    parser.add_argument(
        "--address",
        metavar="ADDR",
        help="--backend ray: the cluster to join (auto: the one 'ray start' runs on this node; default: a local Ray instance)",
    )


def _add_compact_parser(commands) -> None:
    compact = commands.add_parser(
        "compact",
        help="gzip the large CSV files of finished runs (what committed results keep)",
        description=(
            "Replace progress.csv and diagnostics.csv of every finished run (a directory with result.json) at or below each DIR "
            "by .csv.gz files (deterministic bytes, checked by reading back); result.json, config.yaml and evaluations.csv stay "
            "as they are. Every command reads either form, so reports regenerate byte for byte. Runs another process holds are skipped."
        ),
        epilog="example: hybrid-pg compact docs/results/mujoco",
    )
    compact.add_argument("dirs", nargs="+", metavar="DIR", help="folders of run directories (a study's output folder, or one run)")
    compact.add_argument("--dry-run", action="store_true", help="count what would be compressed; change nothing")
    compact.set_defaults(handler=_cmd_compact)


def _add_bench_parser(commands) -> None:
    bench = commands.add_parser(
        "bench",
        help="speed and final return of HybridPG vs SB3 A2C and PPO",
        description=(
            "Train HybridPG and SB3's A2C and PPO with the same env, n_steps and n_envs, interleaved in one process with "
            "one torch thread: wall time per env step as HybridPG / baseline ratios, the share of HybridPG's update spent "
            "on the lambda statistics (hybrid/stats_time_fraction), and the final deterministic returns. "
            "Writes bench.json and bench.md."
        ),
        epilog="example: hybrid-pg bench --steps 8192 --seeds 3 --out results/bench",
    )
    bench.add_argument("--steps", type=_positive_int, default=8192, metavar="N", help="env steps per run (default 8192)")
    bench.add_argument("--seeds", type=_positive_int, default=3, metavar="K", help="runs per algorithm, seeds 0..K-1 (default 3)")
    bench.add_argument("--out", default="results/bench", metavar="DIR", help="output folder (default results/bench)")
    bench.add_argument(
        "--env", default="Pendulum-v1", metavar="ID", help="gymnasium id with a bounded Box action space (default Pendulum-v1)"
    )
    bench.add_argument("--n-envs", type=_positive_int, default=4, metavar="N", help="parallel env copies, all algorithms (default 4)")
    bench.add_argument(
        "--n-steps", type=_positive_int, default=256, metavar="N", help="steps per env per rollout, all algorithms (default 256)"
    )
    bench.add_argument(
        "--eval-episodes", type=_positive_int, default=5, metavar="N", help="deterministic evaluation episodes per run (default 5)"
    )
    bench.add_argument("--quiet", action="store_true", help="print only the written files")
    bench.set_defaults(handler=_cmd_bench)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``hybrid-pg`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with sigterm_interrupts():
            return args.handler(args)
    except (ConfigError, UsageError, RunDirError, CorruptRunError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (sigterm_interrupts): exit 128 + the signal
        print(f"{PROG}: interrupted; nothing unfinished was recorded as finished", file=sys.stderr)
        return 128 + signal_of(exc)


if __name__ == "__main__":
    sys.exit(main())
