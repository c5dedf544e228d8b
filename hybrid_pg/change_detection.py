"""Change detection on the per-rollout gradient statistics (for ``lambda_mode="adaptive"``).

lam* depends on the moments only through two scale-free numbers: the variance ratio
r = Var_P / Var_M and the correlation rho = Cov / sqrt(Var_P Var_M),

    lam* = (1 - rho sqrt(r)) / (1 + r - 2 rho sqrt(r)).

So the detector watches the stream (log r, rho) of each new rollout, not lam-hat itself (bounded,
skewed and noisier) and not the raw variances (which grow with the reward scale without moving
lam*). Each component is standardised online by its own running mean and standard deviation since
the last alarm (with the exact small-sample correction: a spread learnt from a few rollouts
would otherwise make every early point look extreme), and a two-sided Page CUSUM (the recursive form of the Page-Hinkley test)

    S+_t = max(0, S+_{t-1} + z_t - k),   S-_t = max(0, S-_{t-1} - z_t - k)

raises an alarm when either side exceeds h. The most likely start of the shift within the alarming
run estimates the change point, so the window can keep the rollouts after it instead of starting
from scratch.

Defaults (k = 0.5, h = 6): on a stationary Gaussian stream one side of one component alarms about
once in 2,400 steps (Siegmund's approximation), so about once in 600 rollouts for the four sides;
a shift of 2 standard deviations is found after about 5 rollouts, a shift of 4 after about 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple


@dataclass
class _Stream:
    """Running moments and the two CUSUM sides of one scalar stream."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    up: float = 0.0
    down: float = 0.0
    up_zero: int = 0  # index (in steps since reset) after which the upper side last left 0
    down_zero: int = 0
    recent: List[float] = field(default_factory=list)  # standardised scores since the warmup
    # reference="trend": discounted least-squares sums, time measured from the *next* step (t = 0;
    # earlier points sit at t = -1, -2, ...): sum w, w t, w t^2, w y, w t y, w y^2, w^2
    sums: List[float] = field(default_factory=lambda: [0.0] * 7)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else math.nan

    def add_trend_point(self, x: float, forgetting: float) -> None:
        """Discount the old points, add ``x`` at t = 0, then move the origin to the next step."""
        s0, s1, s2, sy, sty, syy, sww = *(v * forgetting for v in self.sums[:6]), self.sums[6] * forgetting**2
        s0, sy, syy, sww = s0 + 1.0, sy + x, syy + x * x, sww + 1.0
        # t -> t - 1 for every stored point
        self.sums = [s0, s1 - s0, s2 - 2.0 * s1 + s0, sy, sty - sy, syy, sww]

    def trend_prediction(self, slope: bool = True) -> tuple:
        """(prediction at the next step, predictive std, degrees of freedom) of the local linear
        trend, or with ``slope=False`` of the discounted level (nan when undetermined)."""
        s0, s1, s2, sy, sty, syy, sww = self.sums
        n_eff = s0 * s0 / sww if sww > 0 else 0.0
        if not slope:
            if n_eff <= 1.5:
                return math.nan, math.nan, math.nan
            level = sy / s0
            var = max(syy / s0 - level * level, 0.0) * n_eff / (n_eff - 1.0)
            return level, math.sqrt(var * (1.0 + 1.0 / n_eff)), n_eff - 1.0
        det = s0 * s2 - s1 * s1
        if not (det > 1e-12 * max(s0 * s2, 1e-300)) or n_eff <= 2.5:
            return math.nan, math.nan, math.nan
        rate = (s0 * sty - s1 * sy) / det
        level = (sy - rate * s1) / s0  # the fitted value at t = 0: the next step
        rss = max(syy - level * sy - rate * sty, 0.0)
        dof = n_eff - 2.0
        resid_var = rss / s0 * n_eff / dof  # weighted residual variance, small-sample corrected
        leverage = s2 / det  # Var(fit at t = 0) / sigma^2 for unit weights
        return level, math.sqrt(resid_var * (1.0 + leverage)), dof


@dataclass
class Alarm:
    """An alarm: which component, which side, and how many of the newest steps follow the change."""

    component: int
    direction: str
    steps_since_change: int


class CusumDetector:
    """Two-sided CUSUM on each component of a vector stream, standardised online.

    :param n_components: length of the vectors fed to :meth:`update`.
    :param drift: k, the allowance per step in standard deviations (detects shifts > 2k best).
    :param threshold: h, the alarm level in standard deviations.
    :param warmup: steps after a reset used only to learn the stream's mean and spread.
    :param min_std: floor of the standardising deviation (a constant stream must not alarm on
        rounding noise).
    :param reference: what a new point is compared with. "level" (default): the mean and spread of
        every point since the last alarm (a stationary in-control stream). "trend": a local linear
        trend fitted by discounted least squares (weights ``forgetting`` ** age; the level until
        TREND_MIN_POINTS points), so the policy's slow drift of the statistics moves the reference
        with it and does not alarm, while a switch (a jump far outside the trend's prediction)
        still does. "discounted": the discounted level without slope. Measured (two N(0, 1)
        components, 10 seeds x 200 steps of a linear drift of 3 sd; 30 seeds of a 2 sd step
        after 40 steps; 2,000 stationary steps): level 27 drift alarms, step delay median 3, no
        miss, 5 false alarms; trend (0.99) 1 drift alarm, delay 4.5, 8/30 missed within 40 steps,
        5 false alarms. The trend trades power on small steps for immunity to drift, so it is
        opt-in (``lambda_detector=dict(reference="trend")``).
    :param forgetting: discount per step of the trend fit (effective memory 1 / (1 - forgetting));
        a linear drift is followed whatever the memory, a long one keeps a switch's first points
        from bending the trend towards the new regime.
    """

    def __init__(
        self,
        n_components: int,
        drift: float = 0.5,
        threshold: float = 6.0,
        warmup: int = 4,
        min_std: float = 1e-6,
        reference: str = "level",
        forgetting: float = 0.99,
    ) -> None:
        if reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
        if not 0.0 < forgetting <= 1.0:
            raise ValueError(f"forgetting must be in (0, 1], got {forgetting}")
        self.reference, self.forgetting = reference, float(forgetting)
        if not isinstance(n_components, int) or n_components < 1:
            raise ValueError(f"n_components must be an integer >= 1, got {n_components!r}")
        if drift < 0:
            raise ValueError(f"drift must be >= 0, got {drift}")
        if threshold <= 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        if not isinstance(warmup, int) or warmup < 2:
            raise ValueError(f"warmup must be an integer >= 2 (a spread needs two points), got {warmup!r}")
        self.n_components = n_components
        self.drift = float(drift)
        self.threshold = float(threshold)
        self.warmup = warmup
        self.min_std = float(min_std)
        self.n_alarms = 0
        self.reset()

    def reset(self) -> None:
        """Forget the stream (after an alarm the new regime's spread is learnt afresh)."""
        self._streams: List[_Stream] = [_Stream() for _ in range(self.n_components)]
        self.steps = 0

    def update(self, values: Sequence[float]) -> Optional[Alarm]:
        """Feed one vector; return an :class:`Alarm` (and reset) or None.

        Non-finite components are skipped for this step (a degenerate rollout says nothing).
        """
        if len(values) != self.n_components:
            raise ValueError(f"expected {self.n_components} values, got {len(values)}")
        self.steps += 1
        alarm: Optional[Alarm] = None
        for i, (stream, x) in enumerate(zip(self._streams, values)):
            x = float(x)
            if not math.isfinite(x):
                continue
            z = math.nan
            if stream.count >= self.warmup and alarm is None:
                z = self._score(stream, x)
            if math.isfinite(z):
                stream.up = max(0.0, stream.up + z - self.drift)
                stream.down = max(0.0, stream.down - z - self.drift)
                if stream.up == 0.0:
                    stream.up_zero = self.steps
                if stream.down == 0.0:
                    stream.down_zero = self.steps
                stream.recent = (stream.recent + [z])[-_MAX_RECENT:]
                if stream.up > self.threshold:
                    alarm = Alarm(i, "up", _change_point(stream.recent, self.steps - stream.up_zero))
                elif stream.down > self.threshold:
                    alarm = Alarm(i, "down", _change_point(stream.recent, self.steps - stream.down_zero))
                if abs(z) > OUTLIER_Z:
                    # an out-of-control point must not teach the in-control reference: absorbed,
                    # the first points of a new regime inflate the spread and drag the mean, and
                    # the CUSUM then needs many more of them to reach the threshold
                    continue
            else:
                stream.up_zero = stream.down_zero = self.steps
            # Welford; after the warmup the CUSUM compares x with the moments *before* it
            if self.reference != "level":
                stream.add_trend_point(x, self.forgetting)
            stream.count += 1
            delta = x - stream.mean
            stream.mean += delta / stream.count
            stream.m2 += delta * (x - stream.mean)
        if alarm is not None:
            self.n_alarms += 1
            self.reset()
        return alarm

    def _score(self, stream: _Stream, x: float) -> float:
        # a trend fitted to a few points extrapolates noise (and bends towards a new regime's first
        # points): the level is the reference until the trend has TREND_MIN_POINTS behind it
        if self.reference == "level" or stream.count < TREND_MIN_POINTS:
            return _predictive_z(x, stream.mean, max(stream.std, self.min_std), stream.count)
        level, std, dof = stream.trend_prediction(slope=self.reference == "trend")
        if not math.isfinite(level):
            return math.nan
        return _student_to_normal((x - level) / max(std, self.min_std), dof)

    @property
    def statistics(self) -> List[float]:
        """max(S+, S-) per component (0 during warmup): how close each is to an alarm."""
        return [max(s.up, s.down) for s in self._streams]

    # -- persistence ------------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        return {
            "config": dict(
                n_components=self.n_components,
                drift=self.drift,
                threshold=self.threshold,
                warmup=self.warmup,
                min_std=self.min_std,
                reference=self.reference,
                forgetting=self.forgetting,
            ),
            "steps": self.steps,
            "n_alarms": self.n_alarms,
            "streams": [{**vars(s), "recent": list(s.recent)} for s in self._streams],
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        # saves from before the trend reference compared with the level
        fresh = CusumDetector(**{"reference": "level", **state["config"]})
        self.__dict__.update(fresh.__dict__)
        self.steps = int(state["steps"])
        self.n_alarms = int(state["n_alarms"])
        self._streams = [_Stream(**s) for s in state["streams"]]


_MAX_RECENT = 256
TREND_MIN_POINTS = 12
REFERENCES = ("level", "discounted", "trend")
# |z| beyond which a monitored point is kept out of the reference moments (0.27% of in-control
# Gaussian points: the spread estimate barely changes, but a regime change stays visible)
OUTLIER_Z = 3.0


def _change_point(scores: List[float], since_zero: int) -> int:
    """How many of the newest steps belong to the new regime.

    The CUSUM's "last time at 0" is the textbook estimate, but noise keeps the statistic above 0
    for a while before a change, so it reaches too far back. Among the last ``since_zero`` steps
    this picks the tail length m that maximises the likelihood ratio of a mean shift, (sum of the
    last m scores)^2 / m.
    """
    span = max(1, min(since_zero, len(scores)))
    best_m, best = 1, -1.0
    total = 0.0
    for m in range(1, span + 1):
        total += scores[-m]
        score = total * total / m
        if score > best:
            best_m, best = m, score
    return best_m


def _predictive_z(x: float, mean: float, std: float, n: int) -> float:
    """Standard-normal score of a new point against n earlier ones with estimated mean and std.

    (x - mean) / (std sqrt(1 + 1/n)) is Student-t with n - 1 degrees of freedom for a Gaussian
    stream; mapping it through the t and normal CDFs gives an exact N(0, 1) score. A plain z with a
    spread estimated from a handful of rollouts is heavy-tailed and raises false alarms early on.
    """
    return _student_to_normal((x - mean) / (std * math.sqrt(1.0 + 1.0 / n)), n - 1)


def _student_to_normal(tail: float, df: float) -> float:
    """The N(0, 1) score with the same tail probability as a Student-t(df) value ``tail``."""
    from scipy.stats import norm, t

    # sf/isf on the far side keep precision in the tails (cdf -> 1.0 would give z = inf)
    return float(-norm.isf(t.cdf(tail, df=df))) if tail < 0 else float(norm.isf(t.sf(tail, df=df)))


def lambda_coordinates(var_path: float, var_score: float, cov: float) -> List[float]:
    """(log r, rho) of one batch's moments: the two numbers lam* depends on (nan if degenerate)."""
    if not (var_path > 0 and var_score > 0):
        return [math.nan, math.nan]
    return [math.log(var_path / var_score), cov / math.sqrt(var_path * var_score)]


def bias_coordinate(bias_hat_sq: float, tau: float) -> float:
    """log(1 + ||b_hat||^2 / tau): one batch's bias of the pathwise estimator in units of its own
    noise (about log 2 when no bias is visible; nan when tau is not positive). A learned source's
    MSE-optimal weight moves with its bias, which (log r, rho) do not see: when the dynamics switch,
    a value head fitted to the old ones is biased for the new ones while the gradients' variances and
    correlation may barely change."""
    if not (tau > 0 and math.isfinite(bias_hat_sq)):
        return math.nan
    return math.log1p(max(bias_hat_sq, 0.0) / tau)


def detector_from_config(config: Optional[Dict[str, Any]]) -> Tuple["CusumDetector", bool]:
    """The detector a window's ``detector`` settings describe, and whether it watches the bias:
    :class:`CusumDetector`'s keywords plus ``watch_bias`` (default False; True adds
    :func:`bias_coordinate` as a third monitored component, for learned sources)."""
    kwargs = dict(config or {})
    watch = kwargs.pop("watch_bias", False)
    if not isinstance(watch, bool):
        raise ValueError(f"watch_bias must be True or False, got {watch!r}")
    return CusumDetector(3 if watch else 2, **kwargs), watch
