"""The 100k-step floor on MuJoCo (issue 11): is the hybrid's early learning ever worse than its
unbiased fallback, REINFORCE with the same update, by more than noise?

Reads the deterministic evaluation at ``--at`` steps (default 100k) of every finished run of two
grids with the same settings: the MuJoCo benchmark (``configs/mujoco_benchmark.yaml``: seeds 0-4,
300k steps, read at 100k) and the floor grid (``configs/mujoco_floor.yaml``: seeds 5-14 at 100k,
plus seed 0 again). Clip range and learning rate are constant, so the first 100k steps of a 300k
run are the same training as a 100k run; seed 0, in both grids, checks that (its two readings are
printed side by side). Where a seed is in both, the benchmark's reading is the one pooled.

Per env and cell (PPO, REINFORCE, the hybrid) it writes ``floor.md`` and ``floor_returns.csv`` into
the floor grid's folder:

* the return at 100k: mean and IQM with 95% bootstrap CIs, the worst seed, the mean of the worst
  20% of seeds;
* the floor, literally (the hybrid's worst seed against REINFORCE's worst) and as a test: how many
  hybrid seeds fall below REINFORCE's worst, and the exact probability of that many when the two
  cells do not differ (:func:`hybrid_pg.experiments.aggregate.below_minimum_test`); "worse than its
  fallback by more than noise" is p < 0.05;
* the hybrid against REINFORCE and against PPO: difference of means with a 95% bootstrap CI and
  P(improvement) (unpaired: a seed does not couple two algorithms' runs);
* the policy's standard deviation (``train/std``) at 100k, the median over the same pooled seeds (the
  floor reads every run at 100k, the end of the floor grid's runs; the benchmark's own report gives
  its runs' std at the end).

    hybrid-pg ablate configs/mujoco_floor.yaml --workers 2     # trains the floor grid (resumable)
    python examples/mujoco_floor.py                           # the report, from what has finished
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from hybrid_pg.experiments.ablate import RUNS_SUBDIR, finished_results, load_ablation
from hybrid_pg.experiments.aggregate import (
    SIGNIFICANCE_LEVEL,
    below_minimum_test,
    bootstrap_difference_ci,
    iqm,
    probability_of_improvement,
    stratified_bootstrap_ci,
)
from hybrid_pg.experiments.baseline_goals import return_at
from hybrid_pg.experiments.results import policy_std, policy_std_note, policy_std_titles, seed_median

#: the share of seeds whose mean is the "lower tail" column
TAIL_FRACTION = 0.2

Returns = Dict[str, Dict[str, Dict[int, float]]]  # env -> cell -> seed -> return at the budget


def readings(
    finished: Mapping[str, Mapping[str, Sequence[Any]]], at_steps: float, read: Callable[[Any, float], float] = return_at
) -> Returns:
    """env -> cell -> seed -> ``read(run, at_steps)`` of a grid's finished runs (``finished``: env ->
    cell -> runs, :func:`hybrid_pg.experiments.ablate.finished_results`; ``read`` by default the
    evaluation return at ``at_steps``, :func:`hybrid_pg.experiments.results.policy_std` the policy's
    std there); runs without a value are left out."""
    out: Returns = {}
    for env, cells in finished.items():
        for cell, runs in cells.items():
            for run in runs:
                value = read(run, at_steps)
                if math.isfinite(value):
                    out.setdefault(env, {}).setdefault(cell, {})[int(run["seed"])] = value
    return out


def pool(first: Returns, second: Returns, envs: Sequence[str], cells: Sequence[str]) -> Returns:
    """Per env and cell, ``first``'s seeds, then ``second``'s seeds that ``first`` lacks."""
    return {env: {cell: {**second.get(env, {}).get(cell, {}), **first.get(env, {}).get(cell, {})} for cell in cells} for env in envs}


def both_grids(first: Returns, second: Returns, envs: Sequence[str], cells: Sequence[str]) -> Dict[str, Dict[str, Dict[int, tuple]]]:
    """env -> cell -> seed -> (first's reading, second's) for the seeds both grids ran."""
    out: Dict[str, Dict[str, Dict[int, tuple]]] = {}
    for env in envs:
        for cell in cells:
            a, b = first.get(env, {}).get(cell, {}), second.get(env, {}).get(cell, {})
            for seed in sorted(set(a) & set(b)):
                out.setdefault(env, {}).setdefault(cell, {})[seed] = (a[seed], b[seed])
    return out


def lower_tail_mean(values: np.ndarray, fraction: float = TAIL_FRACTION) -> float:
    """Mean of the lowest ``ceil(fraction * n)`` values."""
    k = max(1, math.ceil(fraction * values.size))
    return float(np.sort(values)[:k].mean())


def _ci(x, digits: int = 0) -> str:
    return f"{x.point:.{digits}f} [{x.low:.{digits}f}, {x.high:.{digits}f}]"


def report(
    pooled: Returns,
    check: Mapping[str, Mapping[str, Mapping[int, tuple]]],
    at_steps: float,
    sources: str,
    hybrid: str,
    floor: str,
    baseline: str,
    stds: Optional[Returns] = None,
) -> str:
    """The markdown report; ``stds``: env -> cell -> seed -> the policy's std at ``at_steps`` (a column)."""
    std_title = policy_std_titles(True, int(at_steps))[0]
    lines = [
        f"# The {at_steps:.0f}-step floor: {hybrid} against {floor} (and {baseline})",
        "",
        f"Deterministic evaluation return at {at_steps:.0f} steps. {sources} "
        "CIs: 95% percentile bootstrap over seeds (unpaired between cells). Lower 20%: mean of the worst "
        f"ceil(0.2 n) seeds. Below {floor}'s worst: the cell's seeds under {floor}'s lowest, with the exact "
        "probability of at least that many when the two cells do not differ (a single seed below is what "
        "chance gives half the time with equal seed counts).",
    ]
    verdicts: List[str] = []
    for env, cells in pooled.items():
        lines += [
            "",
            f"## {env}",
            "",
            f"| cell | seeds | mean [CI] | IQM [CI] | worst | lower 20% | below {floor}'s worst (p) |"
            + (f" {std_title} |" if stds is not None else ""),
            "|---|---|---|---|---|---|---|" + ("---|" if stds is not None else ""),
        ]
        values = {cell: np.array([v for _, v in sorted(by_seed.items())]) for cell, by_seed in cells.items() if by_seed}
        tests = {cell: below_minimum_test(x, values[floor]) for cell, x in values.items() if cell != floor and floor in values}
        for cell, x in values.items():
            below = f"{tests[cell].count} ({tests[cell].p_value:.3f})" if cell in tests else "—"
            iqm_text = _ci(stratified_bootstrap_ci([x], statistic=iqm)) if x.size >= 4 else "—"
            std = "" if stds is None else f" {seed_median(list(stds.get(env, {}).get(cell, {}).values())).text()} |"
            lines.append(
                f"| {cell} | {x.size} | {_ci(stratified_bootstrap_ci([x]))} | {iqm_text} | {x.min():.0f} | {lower_tail_mean(x):.0f} | {below} |{std}"
            )
        if hybrid in values and floor in values:
            h, f, t = values[hybrid], values[floor], tests[hybrid]
            lines += [
                "",
                f"- {hybrid} - {floor}, mean: {_ci(bootstrap_difference_ci(h, f))}; P({hybrid} > {floor}) {_ci(probability_of_improvement([h], [f]), 2)}",
            ]
            if baseline in values:
                b = values[baseline]
                lines.append(
                    f"- {hybrid} - {baseline}, mean: {_ci(bootstrap_difference_ci(h, b))}; P({hybrid} > {baseline}) {_ci(probability_of_improvement([h], [b]), 2)}"
                )
            literal = "met" if h.min() >= f.min() else "not met"
            noisy = t.p_value < SIGNIFICANCE_LEVEL
            verdicts.append(
                f"- **{env}** ({h.size} vs {f.size} seeds): no {hybrid} seed below {floor}'s worst, read literally: {literal} "
                f"({h.min():.0f} vs {f.min():.0f}); below it by more than noise: {'yes' if noisy else 'no'} "
                f"({t.count} of {t.n_a} seeds below, {t.expected:.2f} expected by chance, p = {t.p_value:.3f})"
            )
    if stds is not None:
        lines += ["", policy_std_note(True, int(at_steps), end=False)]
    lines += ["", "## The floor", ""] + (verdicts or ["- no env has both cells yet"])
    lines += ["", f"## Seeds in both grids (the same training read at {at_steps:.0f})", ""]
    if not check:
        lines.append("- none yet")
    for env, cells in check.items():
        for cell, by_seed in cells.items():
            for seed, (a, b) in by_seed.items():
                lines.append(f"- {env}, {cell}, seed {seed}: benchmark {a:.1f}, floor grid {b:.1f}")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, pooled: Returns, stds: Optional[Returns] = None) -> None:
    """One row per env, cell and seed: the return at the budget (and the policy's std there, empty
    where the run did not log it)."""
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["env", "cell", "seed", "return"] + (["policy_std"] if stds is not None else []))
        for env, cells in pooled.items():
            for cell, by_seed in cells.items():
                for seed, value in sorted(by_seed.items()):
                    std = [] if stds is None else [_std_text(stds.get(env, {}).get(cell, {}).get(seed))]
                    writer.writerow([env, cell, seed, f"{value:.4f}"] + std)
    tmp.replace(path)


def _std_text(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.4f}"


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", default="configs/mujoco_benchmark.yaml", help="the 300k grid (its runs read at --at)")
    parser.add_argument("--benchmark-out", default=None, help="its output folder (default: the file's output_dir)")
    parser.add_argument("--floor", default="configs/mujoco_floor.yaml", help="the grid trained to --at")
    parser.add_argument("--floor-out", default=None, help="its output folder, where the report goes (default: the file's output_dir)")
    parser.add_argument("--at", type=float, default=100_000, help="the budget the floor is read at (env steps)")
    parser.add_argument("--hybrid", default="hybrid")
    parser.add_argument("--reference", default="reinforce", help="the unbiased fallback (the floor)")
    parser.add_argument("--baseline", default="ppo")
    args = parser.parse_args(list(argv))
    for path in (args.benchmark, args.floor):
        if not Path(path).is_file():
            print(f"error: no such config file: {path}", file=sys.stderr)
            return 2
    bench_cfg, floor_cfg = load_ablation(args.benchmark), load_ablation(args.floor)
    bench_out = Path(args.benchmark_out or bench_cfg.output_dir)
    floor_out = Path(args.floor_out or floor_cfg.output_dir)
    cells = [e.name for e in floor_cfg.estimators]
    missing = [c for c in (args.hybrid, args.reference, args.baseline) if c not in cells]
    if missing:
        print(f"error: {missing} not among the floor grid's cells {cells}", file=sys.stderr)
        return 2
    envs = [e.name for e in floor_cfg.envs]
    bench_runs, floor_runs = finished_results(bench_cfg, bench_out / RUNS_SUBDIR), finished_results(floor_cfg, floor_out / RUNS_SUBDIR)
    bench, floor = readings(bench_runs, args.at), readings(floor_runs, args.at)
    pooled = pool(bench, floor, envs, cells)
    # the std of the same runs (a seed in both grids: the benchmark's, as for the returns)
    stds = pool(readings(bench_runs, args.at, policy_std), readings(floor_runs, args.at, policy_std), envs, cells)
    check = both_grids(bench, floor, envs, cells)
    sources = (
        f"Seeds {sorted(bench_cfg.seeds)} from {bench_out} (read at {args.at:.0f}), the other seeds from {floor_out}; "
        f"the seeds each cell has are counted in the tables."
    )
    floor_out.mkdir(parents=True, exist_ok=True)
    text = report(pooled, check, args.at, sources, args.hybrid, args.reference, args.baseline, stds)
    target = floor_out / "floor.md"
    tmp = target.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(target)
    write_csv(floor_out / "floor_returns.csv", pooled, stds)
    print(text)
    print(f"wrote {target} and {floor_out / 'floor_returns.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
