"""Drift diagnostics: how much the gradient statistics and the policy moved between rollouts.

Two sources of non-stationarity make a window of rollouts stale: the policy moving (the landscape
changes under a fixed env) and the environment drifting. These numbers, logged every update, let
a user tell them apart:

* ``cos_path`` / ``cos_score``: cosine similarity of consecutive rollouts' mean gradients. Near 1
  when successive rollouts estimate the same direction; it falls when the landscape moves (or
  when the mean gradient is small against its noise).
* ``rel_change_var_path`` / ``_var_score`` / ``_cov``: relative change of each trace moment from the
  previous rollout.
* ``kl_to_oldest``: mean over this rollout's states of KL(pi_now(.|s) || pi_oldest(.|s)), pi_oldest
  being the policy that collected the oldest rollout still in the window: how far the policy
  itself moved across the window (on a stationary env this is the only source of drift).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Deque, Dict, Optional

import torch as th
from torch import nn
from torch.func import functional_call

from hybrid_pg.estimator import BatchMoments
from hybrid_pg.surrogates import gaussian_kl


def _cosine(a: th.Tensor, b: th.Tensor) -> float:
    na, nb = float(a.norm()), float(b.norm())
    return float((a * b).sum()) / (na * nb) if na > 0 and nb > 0 else math.nan


def _relative_change(now: float, before: float) -> float:
    return (now - before) / abs(before) if before != 0 else math.nan


class DriftTracker:
    """Keeps the previous rollout's moments and the last ``max_window`` policy snapshots."""

    def __init__(self, max_window: int) -> None:
        self._previous: Optional[BatchMoments] = None
        self._snapshots: Deque[Dict[str, th.Tensor]] = deque(maxlen=max_window)

    def snapshot(self, head: nn.Module, log_std: th.Tensor) -> None:
        """Remember the policy that collected the rollout about to be trained on (theta_old)."""
        state = {k: v.detach().clone() for k, v in head.named_parameters()}
        state["__log_std__"] = log_std.detach().clone()
        self._snapshots.append(state)

    def moments_drift(self, moments: BatchMoments) -> Dict[str, float]:
        """Compare this rollout's moments with the previous rollout's, then remember them."""
        out: Dict[str, float] = {}
        prev = self._previous
        if prev is not None and prev.mean_path.shape == moments.mean_path.shape:
            out["cos_path"] = _cosine(moments.mean_path, prev.mean_path)
            out["cos_score"] = _cosine(moments.mean_score, prev.mean_score)
            for name, now, before in (
                ("var_path", moments.ss_path / max(moments.n - 1, 1), prev.ss_path / max(prev.n - 1, 1)),
                ("var_score", moments.ss_score / max(moments.n - 1, 1), prev.ss_score / max(prev.n - 1, 1)),
                ("cov", moments.ss_cross / max(moments.n - 1, 1), prev.ss_cross / max(prev.n - 1, 1)),
            ):
                out[f"rel_change_{name}"] = _relative_change(now, before)
        self._previous = moments
        return out

    # A saved model keeps the previous rollout's moments (so the drift of the next one is known)
    # but not the policy snapshots: they are max_window copies of the actor (most of a saved
    # model's size), and after a resume kl_to_oldest reports nan until the window has refilled.
    def __getstate__(self) -> Dict[str, Any]:
        return {"previous": self._previous, "max_window": self._snapshots.maxlen}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        if "_snapshots" in state:  # saved before snapshots were left out: drop them all the same
            state = {"previous": state.get("_previous"), "max_window": state["_snapshots"].maxlen}
        self._previous = state["previous"]
        self._snapshots = deque(maxlen=state["max_window"])

    @th.no_grad()
    def kl_to_oldest(self, head: nn.Module, features: th.Tensor, window_length: int) -> float:
        """Mean KL(pi_newest || pi_oldest) over ``features``, oldest = ``window_length`` rollouts back."""
        if window_length == 1:
            return 0.0
        if window_length < 1 or len(self._snapshots) < window_length:
            # e.g. after a resume (snapshots are not saved): the oldest policy is unknown, so say so
            # rather than measure against a too-recent one
            return math.nan
        newest, oldest = self._snapshots[-1], self._snapshots[-window_length]

        def policy(state: Dict[str, th.Tensor]):
            params = {k: v for k, v in state.items() if k != "__log_std__"}
            return functional_call(head, params, (features,)), state["__log_std__"]

        mean_new, log_std_new = policy(newest)
        mean_old, log_std_old = policy(oldest)
        return float(gaussian_kl(mean_new, log_std_new, mean_old, log_std_old).mean())
