"""A window of recent batches whose pooled moments give lam.

In RL, the batches are rollouts: the policy moves between them (and the environment may drift),
so the window keeps each batch's moments centred on that batch's own mean and pools them
(:func:`hybrid_pg.estimator.pooled_estimate`). The spread of the batch means around each other,
relative to the spread within batches, is then a free health statistic of the window
(:meth:`WindowedLambda.between_within`): about 1 while the batches look alike, large when the
window mixes regimes.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch as th

from hybrid_pg.change_detection import Alarm, CusumDetector, bias_coordinate, detector_from_config, lambda_coordinates
from hybrid_pg.estimator import (
    DEFAULT_BOUNDS,
    DEFAULT_FALLBACK,
    ArrayLike,
    BatchMoments,
    LambdaEstimate,
    _check_bounds,
    pooled_estimate,
)
from hybrid_pg.weight_rule import BIAS_RULES, DEFAULT_CONFIDENCE_Z, SOURCE_KINDS, WeightRule, pool

WINDOW_MODES = ("sliding", "ema", "adaptive")


def _stored(moments: BatchMoments) -> BatchMoments:
    """The moments as the window keeps them: mean vectors rounded to float32 (held as float64).

    The means enter lam only through the bias estimate ||b_hat||^2 and the health statistic, where
    float32's relative 6e-8 is far below their noise; rounding when a batch is *added* (not only
    when saved) makes a saved window, stored as float32, restore the very numbers the running one
    computes with, so a resumed run gives bit-identical lam.
    """
    return replace(
        moments,
        mean_path=moments.mean_path.detach().cpu().to(th.float32).to(th.float64),
        mean_score=moments.mean_score.detach().cpu().to(th.float32).to(th.float64),
    )


class WindowedLambda:
    """Pooled statistics of the last ``window`` batches, and the lam they give.

    :param window: in ``"sliding"`` mode, the number of batches kept (the oldest is dropped). In
        ``"ema"`` mode it sets the default forgetting factor ``decay = (window - 1) / (window + 1)``,
        which gives batches the same mean age as a sliding window of that length.
    :param mode: ``"sliding"`` (equal weights, last ``window`` batches), ``"ema"`` (batch k back
        weighted by decay**k) or ``"adaptive"`` (sliding, plus a change detector on each new batch's
        (log Var_P/Var_M, corr), see :mod:`hybrid_pg.change_detection`: on an alarm the batches
        before the estimated change point are dropped, so the window restarts in the new regime
        without waiting ``window`` batches).
    :param detector: keyword arguments of :class:`hybrid_pg.change_detection.CusumDetector`
        (``drift``, ``threshold``, ``warmup``, ``reference``) for ``"adaptive"`` mode, plus
        ``watch_bias`` (default False): also watch each batch's bias in units of its noise
        (:func:`hybrid_pg.change_detection.bias_coordinate`), for a learned source whose weight moves
        through its bias when the env changes.
    :param decay: EMA forgetting factor in [0, 1); overrides the default derived from ``window``.
    :param bounds: clip range for lam (see :data:`hybrid_pg.estimator.DEFAULT_BOUNDS`).
    :param bias_correction: use the MSE-optimal (bias-aware) weight, by ``bias_rule``.
    :param bias_rule: how the bias enters (:class:`hybrid_pg.weight_rule.WeightRule`):
        ``"posterior"`` (default: the posterior mean of ||b||^2 for a learned source, nothing for an
        exact one), ``"ucl"`` (its upper confidence limit: more cautious) or ``"point"`` (the old
        noise-corrected point estimate, for any source).
    :param source: ``"learned"`` (default, cautious) or ``"exact"``: the pathwise source kind; can
        be overridden per call of :meth:`estimate` or by setting the attribute.
    :param confidence: z of the bias upper confidence limit.
    :param long_run: variance part of lam from long-run (block) moments when available.
    :param trend: predict the moments one batch ahead from the window's trend (slope shrunk by
        its signal-to-noise; :func:`hybrid_pg.weight_rule.trend_moments`), so a window of previous
        rollouts does not lag a weight that moves while the policy trains (default True; states
        saved before this option existed load with False, so a resumed run continues as it was).
    :param fallback: lam while the window cannot determine it (empty, or degenerate moments).
    :param min_weight: EMA batches whose weight fell below this are dropped (bounded memory; the
        default 1e-3 loses less than 0.1% of the total weight).
    """

    def __init__(
        self,
        window: int = 8,
        mode: str = "sliding",
        decay: Optional[float] = None,
        bounds: Optional[Tuple[float, float]] = DEFAULT_BOUNDS,
        bias_correction: bool = False,
        fallback: float = DEFAULT_FALLBACK,
        min_weight: float = 1e-3,
        detector: Optional[Dict[str, Any]] = None,
        bias_rule: str = "posterior",
        source: str = "learned",
        confidence: float = DEFAULT_CONFIDENCE_Z,
        long_run: bool = False,
        trend: bool = True,
    ) -> None:
        if not isinstance(window, (int, np.integer)) or isinstance(window, bool) or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        window = int(window)
        if mode not in WINDOW_MODES:
            raise ValueError(f"mode must be one of {WINDOW_MODES}, got {mode!r}")
        if decay is None:
            decay = (window - 1) / (window + 1)
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay!r}")
        if not 0.0 < float(min_weight) < 1.0:
            raise ValueError(f"min_weight must lie in (0, 1), got {min_weight!r}")
        _check_bounds(bounds)
        if bias_rule not in BIAS_RULES:
            raise ValueError(f"bias_rule must be one of {BIAS_RULES}, got {bias_rule!r}")
        if source not in SOURCE_KINDS:
            raise ValueError(f"source must be one of {SOURCE_KINDS}, got {source!r}")
        self.bias_rule, self.source = bias_rule, source
        self.confidence, self.long_run = float(confidence), bool(long_run)
        self.trend = bool(trend)
        self.window = window
        self.mode = mode
        self.decay = float(decay)
        self.bounds = None if bounds is None else (float(bounds[0]), float(bounds[1]))
        self.bias_correction = bool(bias_correction)
        self.fallback = float(fallback)
        self.min_weight = float(min_weight)
        self._batches: List[BatchMoments] = []
        self._weights: List[float] = []
        self.n_updates = 0
        self.detector_config = dict(detector or {})
        if self.detector_config and mode != "adaptive":
            raise ValueError("detector settings only apply to mode='adaptive'")
        self.detector: Optional[CusumDetector]
        self.detector, self.watch_bias = detector_from_config(self.detector_config) if mode == "adaptive" else (None, False)
        self.last_alarm: Optional[Alarm] = None

    # -- feeding ---------------------------------------------------------------------------------

    def update(self, g_path: ArrayLike, g_score: ArrayLike) -> LambdaEstimate:
        """Add one batch of paired per-sample gradients (B, d); return the window's new estimate."""
        self.add(BatchMoments.from_samples(g_path, g_score))
        return self.estimate()

    def add(self, moments: BatchMoments) -> None:
        """Add one batch's precomputed moments."""
        if self._batches and moments.mean_path.shape != self._batches[-1].mean_path.shape:
            raise ValueError(
                f"gradient dimension changed from {tuple(self._batches[-1].mean_path.shape)} to {tuple(moments.mean_path.shape)}"
            )
        moments = _stored(moments)
        if self.mode == "ema":
            self._weights = [w * self.decay for w in self._weights]
        self._batches.append(moments)
        self._weights.append(1.0)
        if self.detector is not None:
            single = pooled_estimate([moments], bounds=None)
            coordinates = lambda_coordinates(single.var_path, single.var_score, single.cov)
            if self.watch_bias:
                stats = pool([moments])
                coordinates.append(math.nan if stats is None else bias_coordinate(stats.bias_hat_sq, stats.tau))
            self.last_alarm = self.detector.update(coordinates)
            if self.last_alarm is not None:
                self.reset(keep_last=max(1, self.last_alarm.steps_since_change))
        if self.mode in ("sliding", "adaptive"):
            del self._batches[: -self.window], self._weights[: -self.window]
        else:
            keep = [i for i, w in enumerate(self._weights) if w >= self.min_weight]
            self._batches = [self._batches[i] for i in keep]
            self._weights = [self._weights[i] for i in keep]
        self.n_updates += 1

    def reset(self, keep_last: int = 0) -> None:
        """Forget all but the newest ``keep_last`` batches (used when a change is detected)."""
        if keep_last < 0:
            raise ValueError(f"keep_last must be >= 0, got {keep_last}")
        cut = len(self._batches) - keep_last
        if cut > 0:
            del self._batches[:cut], self._weights[:cut]

    # -- reading ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._batches)

    @property
    def batches(self) -> Tuple[BatchMoments, ...]:
        return tuple(self._batches)

    @property
    def weights(self) -> Tuple[float, ...]:
        return tuple(self._weights)

    @property
    def rule(self) -> WeightRule:
        """The :class:`~hybrid_pg.weight_rule.WeightRule` this window's settings describe."""
        return WeightRule(
            source=self.source,
            bias=self.bias_rule if self.bias_correction else "none",
            confidence=self.confidence,
            long_run=self.long_run,
            bounds=self.bounds,
            fallback=self.fallback,
            trend=self.trend,
        )

    def estimate(self, batch_size: Optional[float] = None, source: Optional[str] = None, with_se: bool = False) -> LambdaEstimate:
        """lam and the pooled moments of the current window.

        :param batch_size: B of the bias-aware rule (default: the newest batch's size).
        :param source: "exact" or "learned" (default: the window's ``source``).
        :param with_se: add the jackknife standard error of lam (costs one pooling per batch).
        """
        return self.rule(self._batches, self._weights, batch_size=batch_size, source=source, with_se=with_se)

    @property
    def lam(self) -> float:
        return self.estimate().lam

    @property
    def effective_sample_size(self) -> float:
        """Kish effective number of samples, (sum w n)^2 / sum w^2 n."""
        wn = sum(w * b.n for w, b in zip(self._weights, self._batches))
        w2n = sum(w * w * b.n for w, b in zip(self._weights, self._batches))
        return wn * wn / w2n if w2n > 0 else 0.0

    @property
    def effective_window(self) -> float:
        """Kish effective number of batches, (sum w)^2 / sum w^2."""
        w1, w2 = sum(self._weights), sum(w * w for w in self._weights)
        return w1 * w1 / w2 if w2 > 0 else 0.0

    def between_within(self) -> Dict[str, float]:
        """F statistics: between-batch over within-batch spread of the gradients, per estimator.

        Between = sum_k w_k n_k ||m_k - m||^2 / (sum_k w_k - sum_k w_k^2 n_k / sum_k w_k n_k), whose
        expectation equals the within-batch trace variance when all batches share one mean (so F
        is about 1 on a stationary stream and grows when the window mixes regimes or the policy
        moved). nan with fewer than two batches.
        """
        out = {"path": math.nan, "score": math.nan}
        if len(self._batches) < 2:
            return out
        w, bs = self._weights, self._batches
        wn = sum(wk * b.n for wk, b in zip(w, bs))
        dof_between = sum(w) - sum(wk * wk * b.n for wk, b in zip(w, bs)) / wn
        dof_within = sum(wk * (b.n - 1) for wk, b in zip(w, bs))
        if dof_between <= 0 or dof_within <= 0:
            return out
        for key, mean_attr, ss_attr in (("path", "mean_path", "ss_path"), ("score", "mean_score", "ss_score")):
            means = [getattr(b, mean_attr) for b in bs]
            grand = sum(wk * b.n * m for wk, b, m in zip(w, bs, means)) / wn
            between = sum(wk * b.n * float(((m - grand) ** 2).sum()) for wk, b, m in zip(w, bs, means))
            within = sum(wk * getattr(b, ss_attr) for wk, b in zip(w, bs)) / dof_within
            out[key] = (between / dof_between) / within if within > 0 else math.inf
        return out

    # -- persistence -----------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue exactly where this window is (tensors on CPU)."""
        return {
            "config": {
                "window": self.window,
                "mode": self.mode,
                "decay": self.decay,
                "bounds": self.bounds,
                "bias_correction": self.bias_correction,
                "fallback": self.fallback,
                "min_weight": self.min_weight,
                "detector": self.detector_config or None,
                "bias_rule": self.bias_rule,
                "source": self.source,
                "confidence": self.confidence,
                "long_run": self.long_run,
                "trend": self.trend,
            },
            "n_updates": self.n_updates,
            "detector_state": None if self.detector is None else self.detector.state_dict(),
            "weights": list(self._weights),
            "batches": [
                {
                    "n": b.n,
                    # float32 holds them exactly (see _stored), at half the size
                    "mean_path": b.mean_path.detach().cpu().to(th.float32),
                    "mean_score": b.mean_score.detach().cpu().to(th.float32),
                    "ss_path": b.ss_path,
                    "ss_score": b.ss_score,
                    "ss_cross": b.ss_cross,
                    "n_blocks": b.n_blocks,
                    "lr_ss_path": b.lr_ss_path,
                    "lr_ss_score": b.lr_ss_score,
                    "lr_ss_cross": b.lr_ss_cross,
                }
                for b in self._batches
            ],
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the configuration is restored too."""
        try:
            config, batches, weights = state["config"], state["batches"], state["weights"]
            n_updates = int(state["n_updates"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a WindowedLambda state dict: missing {exc}") from exc
        if len(batches) != len(weights):
            raise ValueError("corrupt WindowedLambda state: one weight per batch is required")
        # states saved before the trend option existed continue without it
        fresh = WindowedLambda(**{"trend": False, **config, "bounds": None if config["bounds"] is None else tuple(config["bounds"])})
        restored = [
            BatchMoments(
                n=int(b["n"]),
                mean_path=th.as_tensor(b["mean_path"], dtype=th.float64),
                mean_score=th.as_tensor(b["mean_score"], dtype=th.float64),
                ss_path=float(b["ss_path"]),
                ss_score=float(b["ss_score"]),
                ss_cross=float(b["ss_cross"]),
                # states saved before block statistics existed have none
                n_blocks=int(b.get("n_blocks", 0)),
                lr_ss_path=float(b.get("lr_ss_path", 0.0)),
                lr_ss_score=float(b.get("lr_ss_score", 0.0)),
                lr_ss_cross=float(b.get("lr_ss_cross", 0.0)),
            )
            for b in batches
        ]
        self.__dict__.update(fresh.__dict__)
        self._batches, self._weights = restored, [float(w) for w in weights]
        self.n_updates = n_updates
        if self.detector is not None and state.get("detector_state") is not None:
            self.detector.load_state_dict(state["detector_state"])

    # pickling goes through the state dict, so saved models do not depend on private attributes
    def __getstate__(self) -> Dict[str, Any]:
        return self.state_dict()

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.load_state_dict(state)

    def __repr__(self) -> str:
        return f"WindowedLambda(window={self.window}, mode={self.mode!r}, batches={len(self)}, lam={self.lam:.4f})"
