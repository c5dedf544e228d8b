"""How much variance can the critic remove as a control variate, at the gradient audit's checkpoints?

With ``control_variate=True`` (docs/weight.md) the pathwise estimator of a source becomes
g_P' = g_P + (A_hat - A~) dlog pi: it has the score estimator's expectation whatever the critic, so
the mix can only gain variance, never bias. How much it gains is an empirical question: Tucker et
al. 2018 measured that the action-dependent part of the policy gradient's variance (the only part an
action-dependent control variate removes) is a small share on MuJoCo. This script measures it on
the checkpoints the gradient audit trained (their models are on disk, under each audit's ``runs``
folder; nothing is retrained):

for each checkpoint, ``--rollouts`` fresh rollouts of the run's size at the checkpoint's policy;
per rollout the trace variances of the score estimator g_M, the plain pathwise estimator g_P and
the control-variate one g_P', and their covariances with g_M (per-sample moments, the algorithm's
own); then Var(g_P)/Var(g_M), Var(g_P')/Var(g_M), the variance-optimal lam* of the control-variate
mix and its variance at lam* over Var(g_M) (1: no gain; the medians over rollouts).

    python examples/control_variate_variance.py configs/audit/hopper.yaml configs/audit/inverted_double_pendulum.yaml

Writes docs/results/control_variate/variance.csv (one row per checkpoint; rerunning skips the
checkpoints already there) and docs/results/control_variate/report.md.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch as th

from hybrid_pg.correlation import block_ids
from hybrid_pg.estimator import lambda_from_moments
from hybrid_pg.experiments.ablate import RUNS_SUBDIR
from hybrid_pg.experiments.gradient_audit import audit_runs, checkpoint_paths, load_audit_config, load_checkpoint
from hybrid_pg.experiments.run_files import write_atomically
from hybrid_pg.experiments.runner import run_key
from hybrid_pg.rollout import collect_rollout, prepare_batch, rollout_group_moments
from hybrid_pg.sources import ControlVariateSource

OUT = Path("docs/results/control_variate")
COLUMNS = (
    "audit",
    "run",
    "seed",
    "step",
    "rollouts",
    "var_path_over_score",
    "var_cv_over_score",
    "lam_star_plain",
    "lam_star_cv",
    "var_cv_mix_over_score",
    "lam_applied",
)


def _variances(moments: Any) -> Dict[str, float]:
    n = moments.n
    return {"path": moments.ss_path / (n - 1), "score": moments.ss_score / (n - 1), "cross": moments.ss_cross / (n - 1)}


def measure(model: Any, rollouts: int, seed: int) -> Dict[str, float]:
    """The medians over ``rollouts`` fresh rollouts of the module docstring's ratios."""
    cv = ControlVariateSource(model.pathwise)
    venv = model.env
    rows: Dict[str, List[float]] = {k: [] for k in COLUMNS[5:10]}
    for r in range(rollouts):
        generator = th.Generator().manual_seed(seed * 7919 + r)
        venv.seed(seed * 7919 + r)
        data, starts, _ = collect_rollout(model, venv, model.n_steps, generator)
        blocks = block_ids(venv.num_envs, model.n_steps, episode_starts=starts)
        plain_batch = prepare_batch(model.policy, model.pathwise, data, model.settings.normalize_advantage)
        cv_batch = prepare_batch(model.policy, cv, data, model.settings.normalize_advantage)
        plain = rollout_group_moments(model.policy, model.actor_head, model.pathwise, plain_batch, blocks=blocks)
        with_cv = rollout_group_moments(model.policy, model.actor_head, cv, cv_batch, blocks=blocks)
        if plain is None or with_cv is None:
            continue
        p, c = _variances(plain["global"]), _variances(with_cv["global"])
        est_plain = lambda_from_moments(p["path"], p["score"], p["cross"], bounds=None)
        est_cv = lambda_from_moments(c["path"], c["score"], c["cross"], bounds=(0.0, 1.0))
        rows["var_path_over_score"].append(p["path"] / p["score"])
        rows["var_cv_over_score"].append(c["path"] / c["score"])
        rows["lam_star_plain"].append(est_plain.lam_unclipped)
        rows["lam_star_cv"].append(est_cv.lam)
        rows["var_cv_mix_over_score"].append(est_cv.var_hybrid / c["score"])
    return {k: float(np.median(v)) if v else math.nan for k, v in rows.items()}


def _done(path: Path) -> Dict[tuple, Dict[str, str]]:
    if not path.exists():
        return {}
    with path.open(newline="") as fh:
        return {(r["audit"], r["run"], r["seed"], r["step"]): r for r in csv.DictReader(fh)}


def _write_csv(path: Path, rows: List[Dict[str, Any]]) -> None:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, buf.getvalue())


def _fmt(value: Any, digits: int = 3) -> str:
    x = float(value)
    return "—" if not math.isfinite(x) else f"{x:.{digits}f}"


def report(rows: List[Dict[str, Any]], rollouts: int) -> str:
    lines = [
        "# The critic as a control variate: how much variance it can remove",
        "",
        "At each checkpoint of the gradient audit's runs (models trained with the run's own settings; see the audit "
        f"reports), {rollouts} fresh rollouts of the run's size; per rollout the trace variances of the score estimator "
        "g_M, of the plain pathwise estimator g_P and of the control-variate estimator g_P' = g_P + (A_hat - A~) dlog pi "
        "(which has g_M's expectation whatever the critic), and the variance-optimal weight lam* of each mix; medians "
        "over the rollouts. The last column is the control-variate mix's variance at its lam* over Var(g_M): 1 means the "
        "critic removes nothing, 0.5 halves the variance. Command: `python examples/control_variate_variance.py`.",
        "",
        "| audit | run | seed | step | Var(g_P) / Var(g_M) | Var(g_P') / Var(g_M) | lam* plain | lam* control variate | "
        "Var(mix at lam*) / Var(g_M) | lam the run applied |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['audit']} | {r['run']} | {r['seed']} | {r['step']} | {_fmt(r['var_path_over_score'])} | "
            f"{_fmt(r['var_cv_over_score'])} | {_fmt(r['lam_star_plain'], 2)} | {_fmt(r['lam_star_cv'], 2)} | "
            f"{_fmt(r['var_cv_mix_over_score'])} | {_fmt(r['lam_applied'], 2)} |"
        )
    gains = np.array([float(r["var_cv_mix_over_score"]) for r in rows], dtype=float)
    plain = np.array([float(r["var_path_over_score"]) for r in rows], dtype=float)
    gains, plain = gains[np.isfinite(gains)], plain[np.isfinite(plain)]
    if gains.size:
        lines += [
            "",
            f"Over the {gains.size} checkpoints: the control-variate mix's variance at lam* is a median "
            f"{np.median(gains):.3f} of the score estimator's (range {gains.min():.3f} to {gains.max():.3f}); the plain "
            f"pathwise estimator's variance is a median {np.median(plain):.4f} of it (at most {plain.max():.4f}).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("audits", nargs="+", help="gradient audit files whose checkpoints to measure")
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    th.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "variance.csv"
    done = _done(csv_path)
    rows: List[Dict[str, Any]] = list(done.values())
    for audit_file in args.audits:
        config = load_audit_config(audit_file)
        audit_dir = Path(config.output_dir)
        for label, cfg in audit_runs(config):
            key = run_key(label, cfg)
            run_dir = audit_dir / RUNS_SUBDIR / key
            seed = int(cfg["train"]["seed"])
            for step in config.checkpoints:
                ident = (config.name, label, str(seed), str(step))
                if ident in done or not checkpoint_paths(run_dir, step)[0].exists():
                    continue
                model = load_checkpoint(cfg, run_dir, step, n_envs=cfg["env"].get("n_envs", 1))
                if not model.pathwise.action_function:
                    print(f"{label} seed {seed}: its source ({model.pathwise.name}) cannot carry the control variate; skipped")
                    model.env.close()
                    break
                values = measure(model, args.rollouts, config.seed + step)
                lam = float(model.last_lambda.get("global", math.nan)) if model.last_lambda else math.nan
                model.env.close()
                row = {
                    "audit": config.name,
                    "run": label,
                    "seed": seed,
                    "step": step,
                    "rollouts": args.rollouts,
                    **values,
                    "lam_applied": lam,
                }
                rows.append(row)
                done[ident] = row
                _write_csv(csv_path, rows)  # after every checkpoint: resumable
                print(f"{label} seed {seed} step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in values.items()), flush=True)
    write_atomically(out / "report.md", report(rows, args.rollouts))
    print(f"wrote {csv_path} and {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    raise SystemExit(main())
