"""Where a training run's wall time goes: one timer per phase of SB3's loop and of HybridPG's update.

:class:`PhaseTimer` wraps, for the duration of a ``with`` block, the model's own methods (rollout
collection, ``train()``, and HybridPG's update phases) and the functions HybridPG's ``train()``
calls by name (the batch at theta_old, the per-sample statistics, the agreement signals), and
accumulates wall time per phase. Nothing in the library changes: the wrappers are instance
attributes and module attributes restored on exit, and a phase the model does not have (SB3's PPO
has no statistics) is simply absent. Nested phases (everything inside ``train``) are reported
both on their own and as the rest of ``train`` ("train, other").

    with PhaseTimer(model) as timer:
        model.learn(10_000)
    print(timer.table(steps=model.num_timesteps))
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Tuple

#: phases inside HybridPG.train(), in the order they run: (name, what is timed)
HYBRID_PHASES: Tuple[Tuple[str, str], ...] = (
    ("batch at theta_old", "function prepare_batch"),
    ("weight from the window", "method _weights_for_this_update"),
    ("per-sample statistics", "function rollout_group_moments"),
    ("agreement signals", "function online_signals"),
    ("mixed update (epochs)", "method _update"),
    ("logging", "method _log"),
)
#: SB3's loop, for every algorithm
LOOP_PHASES: Tuple[Tuple[str, str], ...] = (("collect rollouts", "method collect_rollouts"), ("train", "method train"))


class PhaseTimer:
    """Context manager timing the phases of ``model``'s training (module docstring)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.seconds: Dict[str, float] = {}
        self.calls: Dict[str, int] = {}
        self._restore: List[Callable[[], None]] = []

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
                self.calls[name] = self.calls.get(name, 0) + 1

        return timed

    def _patch_method(self, name: str, attr: str) -> None:
        if not hasattr(self.model, attr):
            return
        had_own = attr in vars(self.model)
        original = getattr(self.model, attr)
        setattr(self.model, attr, self._wrap(name, original))
        self._restore.append(lambda: setattr(self.model, attr, original) if had_own else delattr(self.model, attr))

    def _patch_function(self, name: str, attr: str) -> None:
        import hybrid_pg.hybrid_pg as module

        if not hasattr(module, attr):
            return
        original = getattr(module, attr)
        setattr(module, attr, self._wrap(name, original))
        self._restore.append(lambda: setattr(module, attr, original))

    def __enter__(self) -> "PhaseTimer":
        from hybrid_pg import HybridPG

        phases = LOOP_PHASES + (HYBRID_PHASES if isinstance(self.model, HybridPG) else ())
        for name, what in phases:
            kind, attr = what.split()
            (self._patch_method if kind == "method" else self._patch_function)(name, attr)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.total = time.perf_counter() - self._start
        for restore in reversed(self._restore):
            restore()
        self._restore.clear()

    def breakdown(self) -> List[Tuple[str, float]]:
        """(phase, seconds) in loop order: collection, train's inner phases, the rest of train, and
        whatever the loop spends outside both (callbacks, SB3's bookkeeping)."""
        inner = [(name, self.seconds[name]) for name, _ in HYBRID_PHASES if name in self.seconds]
        collect = self.seconds.get("collect rollouts", 0.0)
        train = self.seconds.get("train", 0.0)
        rows = [("collect rollouts", collect), *inner]
        rows.append(("train, other" if inner else "train", train - sum(s for _, s in inner)))
        rows.append(("outside both", getattr(self, "total", collect + train) - collect - train))
        return rows

    def table(self, steps: int) -> str:
        """The breakdown as text: milliseconds per 1000 env steps and share of the total."""
        total = sum(s for _, s in self.breakdown())
        lines = [f"{'phase':26s} {'ms/1k steps':>12s} {'share':>7s}"]
        for name, seconds in self.breakdown():
            lines.append(f"{name:26s} {1e6 * seconds / max(steps, 1):12.1f} {seconds / total if total > 0 else 0:7.1%}")
        return "\n".join(lines)
