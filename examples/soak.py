"""Soak run: a long HybridPG training run that watches memory, bounded state and finiteness.

Trains HybridPG with ``lambda_mode="adaptive"`` and the oracle on (every ``--oracle-freq`` updates,
``--oracle-samples`` fresh samples), and

* after every update (a callback on rollout start, and at the end) checks that every policy
  parameter, the optimizer state and the applied lam are finite; the first non-finite one is
  recorded with its update index and env step, and the run stops there;
* at checkpoints (every 10% of ``--steps``, plus 100k and 1M steps when inside the run) records the
  current RSS (``/proc/self/statm``; psutil if /proc is missing), the peak RSS
  (``resource.getrusage``), the number of gc-tracked Python objects, optionally the Python heap
  (``--tracemalloc``, slower), and the sizes of everything that must stay bounded: the lam windows,
  the drift tracker's policy snapshots (``model._drift._snapshots``), the change detectors' recent
  scores, the episode-info buffer and the logger's pending values;
* at the end checks that those sizes never exceeded their bounds and that the current RSS grew by
  at most ``--max-growth-mb`` after warm-up: from the first checkpoint at or after 20% of the run
  (once the windows and the oracle exist) after which no more modules were imported, to the last
  one (:func:`memory_growth`; the growth from the 20% checkpoint is reported too); prints a summary
  and writes a JSON report to ``results/soak/`` (exit status 1 if a check failed).

The run itself is the one run engine's (:func:`hybrid_pg.experiments.runner.run`): its run directory
(model, progress.csv, diagnostics.csv, evaluations.csv, result.json) lands next to the report; the
monitor is an extra callback and the log tail an extra output of the run's logger.

    python examples/soak.py --steps 1000000 --env Pendulum-v1
    python examples/soak.py --steps 100000 --env Pendulum-v1 --oracle-freq 10 --oracle-samples 4096
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import sys
import time
import tracemalloc
from collections import deque
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter

from hybrid_pg import HybridPG
from hybrid_pg.experiments.benchmark import run_config
from hybrid_pg.experiments.runner import run

# ------------------------------------------------------------------------------------------------
# memory probes
# ------------------------------------------------------------------------------------------------


def current_rss_mb() -> Optional[float]:
    """Resident set size now (MB), or None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # optional

        return psutil.Process().memory_info().rss / 2**20
    except Exception:  # noqa: BLE001 - best effort
        return None


def peak_rss_mb() -> float:
    """Peak RSS of this process so far (MB); ru_maxrss is KB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


# ------------------------------------------------------------------------------------------------
# what must stay bounded
# ------------------------------------------------------------------------------------------------


def bounded_sizes(model: HybridPG) -> Dict[str, int]:
    sizes: Dict[str, int] = {f"window_{name}": len(w) for name, w in model.lambda_windows.items()}
    for name, w in model.lambda_windows.items():
        if w.detector is not None:
            sizes[f"detector_recent_{name}"] = max((len(s.recent) for s in w.detector._streams), default=0)
    drift = getattr(model, "_drift", None)
    if drift is not None:
        sizes["drift_snapshots"] = len(drift._snapshots)
    sizes["ep_info_buffer"] = len(model.ep_info_buffer or ())
    sizes["ep_success_buffer"] = len(model.ep_success_buffer or ())
    sizes["logger_pending"] = len(model.logger.name_to_value)
    return sizes


def size_bounds(model: HybridPG) -> Dict[str, int]:
    """The largest each size may legally be (see bounded_sizes)."""
    from hybrid_pg.change_detection import _MAX_RECENT

    bounds: Dict[str, int] = {f"window_{name}": model.lambda_window for name in model.lambda_windows}
    for name, w in model.lambda_windows.items():
        if w.detector is not None:
            bounds[f"detector_recent_{name}"] = _MAX_RECENT
    bounds["drift_snapshots"] = model.lambda_window
    bounds["ep_info_buffer"] = bounds["ep_success_buffer"] = model._stats_window_size
    bounds["logger_pending"] = 200  # one update records ~60 keys; they are cleared at every dump
    return bounds


# ------------------------------------------------------------------------------------------------
# callbacks and log capture
# ------------------------------------------------------------------------------------------------


class LogTail(KVWriter):
    """Keeps the last logged row and a bounded history of a few keys (no growth of its own)."""

    KEYS = (
        "hybrid/lambda",
        "hybrid/lambda_window",
        "hybrid/window_size",
        "hybrid/oracle_lambda",
        "hybrid/oracle_error_applied",
        "hybrid/change_alarms_total",
        "hybrid/stats_valid",
        "rollout/ep_rew_mean",
    )

    def __init__(self, maxlen: int = 2000) -> None:
        self.last: Dict[str, Any] = {}
        self.rows = 0
        self.history: Dict[str, deque] = {k: deque(maxlen=maxlen) for k in self.KEYS}
        self.invalid_stats = 0

    def write(self, key_values: Dict[str, Any], key_excluded: Dict[str, Any], step: int = 0) -> None:
        self.rows += 1
        self.last = {k: v for k, v in key_values.items() if isinstance(v, (int, float, np.floating, np.integer))}
        for k in self.KEYS:
            if k in key_values:
                self.history[k].append((int(step), float(key_values[k])))
        if key_values.get("hybrid/stats_valid") == 0.0:
            self.invalid_stats += 1

    def close(self) -> None:
        pass


def _first_non_finite(model: HybridPG) -> Optional[str]:
    for name, p in model.policy.named_parameters():
        if not bool(th.isfinite(p).all()):
            return f"parameter {name}"
    names = {p: name for name, p in model.policy.named_parameters()}
    for param, state in model.policy.optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, th.Tensor) and value.is_floating_point() and not bool(th.isfinite(value).all()):
                return f"optimizer state {key} of {names.get(param, '?')}"
    for group, lam in model.last_lambda.items():
        if not math.isfinite(lam):
            return f"last_lambda[{group}]"
    return None


class SoakMonitor(BaseCallback):
    def __init__(self, checkpoints: List[int], use_tracemalloc: bool, tail: "LogTail") -> None:
        super().__init__()
        self.tail = tail
        self.checkpoints = sorted(set(checkpoints))
        self._next = 0
        self.use_tracemalloc = use_tracemalloc
        self.records: List[Dict[str, Any]] = []
        self.max_sizes: Dict[str, int] = {}
        self.updates_checked = 0
        self.non_finite: Optional[Dict[str, Any]] = None
        self.t0 = time.perf_counter()

    def _on_training_start(self) -> None:
        self.model.logger.output_formats.append(self.tail)  # the run's logger also feeds the tail
        self.t0 = time.perf_counter()
        self._record(0)  # before training

    # after every update: the next rollout starts (and once more at the end)
    def _check_update(self) -> bool:
        if self.model._n_rollouts_trained == 0:
            return True
        self.updates_checked += 1
        bad = _first_non_finite(self.model)
        if bad is not None and self.non_finite is None:
            self.non_finite = dict(what=bad, update=self.model._n_rollouts_trained, num_timesteps=self.model.num_timesteps)
            return False
        for key, size in bounded_sizes(self.model).items():
            self.max_sizes[key] = max(self.max_sizes.get(key, 0), size)
        return True

    def _on_rollout_start(self) -> None:
        if not self._check_update():
            self.model._soak_stop = True  # collect_rollouts ignores the return value here

    def _on_step(self) -> bool:
        if getattr(self.model, "_soak_stop", False):
            return False
        while self._next < len(self.checkpoints) and self.num_timesteps >= self.checkpoints[self._next]:
            self._record(self.checkpoints[self._next])
            self._next += 1
        return True

    def _on_training_end(self) -> None:
        self._check_update()
        if not self.records or self.records[-1]["num_timesteps"] != self.num_timesteps:
            self._record(self.num_timesteps)

    def _record(self, checkpoint: int) -> None:
        gc.collect()
        rec: Dict[str, Any] = dict(
            checkpoint=checkpoint,
            num_timesteps=int(self.num_timesteps),
            updates=int(self.model._n_rollouts_trained),
            wall_s=round(time.perf_counter() - self.t0, 2),
            rss_mb=current_rss_mb(),
            peak_rss_mb=peak_rss_mb(),
            gc_objects=len(gc.get_objects()),
            modules=len(sys.modules),  # a one-off lazy import shows here, a leak does not
            sizes=bounded_sizes(self.model),
            oracle_calls=getattr(getattr(self.model, "oracle", None), "calls", 0),
        )
        if self.use_tracemalloc:
            current, peak = tracemalloc.get_traced_memory()
            rec.update(py_heap_mb=current / 2**20, py_heap_peak_mb=peak / 2**20)
        self.records.append(rec)
        if self.verbose:
            print(
                f"[soak] {rec['num_timesteps']:>9d} steps  {rec['updates']:>5d} updates  rss {rec['rss_mb'] or float('nan'):8.1f} MB  "
                f"peak {rec['peak_rss_mb']:8.1f} MB  objects {rec['gc_objects']:>8d}  {rec['wall_s']:>8.1f} s  sizes {rec['sizes']}",
                flush=True,
            )


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------


def checkpoints_for(steps: int) -> List[int]:
    points = [max(1, round(steps * k / 10)) for k in range(1, 11)]
    points += [s for s in (100_000, 1_000_000) if s <= steps]
    return sorted(set(points))


def _growth(base: Dict[str, Any], last: Dict[str, Any]) -> Dict[str, Any]:
    span = max(last["num_timesteps"] - base["num_timesteps"], 1)
    growth = last["rss_mb"] - base["rss_mb"]
    out = dict(
        baseline_step=base["num_timesteps"],
        final_step=last["num_timesteps"],
        growth_mb=round(growth, 2),
        growth_mb_per_100k=round(growth / span * 100_000, 3),
        object_growth=last["gc_objects"] - base["gc_objects"],
        modules_imported=last["modules"] - base["modules"],
    )
    if "py_heap_mb" in last and "py_heap_mb" in base:
        out["py_heap_growth_mb"] = round(last["py_heap_mb"] - base["py_heap_mb"], 3)
    return out


def memory_growth(records: List[Dict[str, Any]], steps: int) -> Dict[str, Any]:
    """RSS and object-count change to the last checkpoint, measured two ways:

    * ``from_20_percent``: from the first checkpoint at >= 20% of the run (once the windows and the
      oracle exist). On a short run this still counts one-off costs that land later, e.g. a lazy
      import between 10% and 30% of the run, as growth;
    * after warm-up (the top-level keys, which the memory check uses): from the first checkpoint at
      >= 20% after which no checkpoint imported another module (``len(sys.modules)`` flat to the
      end), so a one-off import and what it allocated is warm-up, not growth. A leak keeps growing
      with the module count flat, so it still shows. ``warmup_end_step`` is that checkpoint's step;
      when modules were imported up to the last checkpoint there is no steady phase to measure and
      the 20% baseline is used (``warmup_end_step`` None, ``baseline`` "20%").
    """
    usable = [r for r in records if r["rss_mb"] is not None]
    empty = dict(baseline_step=None, growth_mb=None, growth_mb_per_100k=None, object_growth=None)
    base20 = next((r for r in usable if r["num_timesteps"] >= 0.2 * steps), None)
    if base20 is None or base20 is usable[-1]:
        return dict(empty, warmup_end_step=None, baseline=None, from_20_percent=dict(empty))
    last = usable[-1]
    from_20 = _growth(base20, last)
    start = usable.index(base20)
    warm = next((r for r in usable[start:-1] if r["modules"] == last["modules"]), None)
    if warm is None:
        return dict(from_20, warmup_end_step=None, baseline="20%", from_20_percent=from_20)
    return dict(_growth(warm, last), warmup_end_step=warm["num_timesteps"], baseline="after warm-up", from_20_percent=from_20)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-envs", type=int, default=1)
    parser.add_argument("--n-steps", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-epochs", type=int, default=10)
    parser.add_argument("--lambda-window", type=int, default=8)
    parser.add_argument("--oracle-freq", type=int, default=10)
    parser.add_argument("--oracle-samples", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tracemalloc", action="store_true", help="also trace the Python heap (slower)")
    parser.add_argument("--max-growth-mb", type=float, default=64.0, help="allowed RSS growth after warm-up (see memory_growth)")
    parser.add_argument("--out", default="results/soak")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    th.set_num_threads(args.threads)
    if args.tracemalloc:
        tracemalloc.start()
    config = run_config(
        "hybrid_pg",
        args.env,
        args.seed,
        args.steps,
        n_envs=args.n_envs,
        eval_episodes=1,
        algo=dict(
            n_steps=args.n_steps,
            batch_size=args.batch_size,
            n_epochs=args.n_epochs,
            lambda_mode="adaptive",
            lambda_window=args.lambda_window,
            oracle_freq=args.oracle_freq,
            oracle_samples=args.oracle_samples,
        ),
    )
    config["train"].update(torch_threads=args.threads, device=args.device)
    out = Path(args.out)
    stem = f"soak_{args.env.replace('/', '_')}_{args.steps}_seed{args.seed}_{time.strftime('%Y%m%d-%H%M%S')}"
    tail = LogTail()
    monitor = SoakMonitor(checkpoints_for(args.steps), args.tracemalloc, tail)
    monitor.verbose = 0 if args.quiet else 1

    t0 = time.perf_counter()
    error: Optional[str] = None
    try:
        run(config, out / stem, quiet=True, callbacks=[monitor])
    except Exception as exc:  # noqa: BLE001 - reported, not hidden
        error = f"{type(exc).__name__}: {exc}"
    wall = time.perf_counter() - t0
    model: HybridPG = getattr(monitor, "model", None)
    if model is None:  # the run failed before training started
        print(f"ERROR: {error}")
        return 1

    bounds = size_bounds(model)
    exceeded = {k: (v, bounds[k]) for k, v in monitor.max_sizes.items() if k in bounds and v > bounds[k]}
    growth = memory_growth(monitor.records, args.steps)
    memory_ok = growth["growth_mb"] is None or growth["growth_mb"] <= args.max_growth_mb
    checks = dict(
        completed=error is None and model.num_timesteps >= args.steps,
        all_finite=monitor.non_finite is None,
        sizes_bounded=not exceeded,
        memory_flat=memory_ok,
    )
    report = dict(
        args=vars(args),
        versions=dict(python=platform.python_version(), torch=th.__version__, numpy=np.__version__),
        num_timesteps=int(model.num_timesteps),
        updates=int(model._n_rollouts_trained),
        updates_checked=monitor.updates_checked,
        wall_s=round(wall, 1),
        fps=round(model.num_timesteps / wall, 1) if wall > 0 else None,
        error=error,
        non_finite=monitor.non_finite,
        checks=checks,
        ok=all(checks.values()),
        memory_growth=growth,
        max_sizes=monitor.max_sizes,
        size_bounds=bounds,
        sizes_exceeded=exceeded,
        final_sizes=bounded_sizes(model),
        drift_snapshots=len(model._drift._snapshots),
        window_lengths={k: len(w) for k, w in model.lambda_windows.items()},
        window_n_updates={k: w.n_updates for k, w in model.lambda_windows.items()},
        change_alarms={k: w.detector.n_alarms for k, w in model.lambda_windows.items() if w.detector is not None},
        oracle_calls=getattr(getattr(model, "oracle", None), "calls", 0),
        last_lambda=model.last_lambda,
        log_rows=tail.rows,
        invalid_stats_updates=tail.invalid_stats,
        last_log={k: v for k, v in tail.last.items() if k.startswith(("hybrid/", "rollout/", "train/"))},
        lambda_history={k: list(v) for k, v in tail.history.items() if v},
        checkpoints=monitor.records,
    )

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.json"
    path.write_text(json.dumps(report, indent=2, default=float))

    print("\n=== soak summary ===")
    print(
        f"env {args.env}  steps {model.num_timesteps}/{args.steps}  updates {model._n_rollouts_trained}  wall {wall:.0f} s  fps {report['fps']}"
    )
    print(f"oracle calls {report['oracle_calls']}  change alarms {report['change_alarms']}  invalid-stat updates {tail.invalid_stats}")
    print(f"final lam {model.last_lambda}  ep_rew_mean {tail.last.get('rollout/ep_rew_mean')}")
    print("checkpoint      steps   rss MB  peak MB  gc objects  modules")
    for r in monitor.records:
        print(
            f"  {r['checkpoint']:>9d} {r['num_timesteps']:>9d} {r['rss_mb'] or float('nan'):8.1f} {r['peak_rss_mb']:8.1f} "
            f"{r['gc_objects']:>10d} {r['modules']:>8d}"
        )
    steady = {k: v for k, v in growth.items() if k != "from_20_percent"}
    print(f"memory growth after warm-up (checked): {steady}")
    print(f"memory growth from the 20% checkpoint: {growth['from_20_percent']}")
    print(f"max sizes {monitor.max_sizes}")
    print(f"bounds    {bounds}")
    if monitor.non_finite:
        print(f"NON-FINITE: {monitor.non_finite}")
    if error:
        print(f"ERROR: {error}")
    print(f"checks {checks}  ->  {'OK' if report['ok'] else 'FAILED'}")
    print(f"wrote {path}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
