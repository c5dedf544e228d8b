"""hybrid_pg: hybrid (pathwise + score-function) policy gradients for Stable-Baselines3.

The estimator core (:mod:`hybrid_pg.estimator`, :mod:`hybrid_pg.window`) is importable without the
RL algorithm; the algorithm is ``hybrid_pg.HybridPG``.
"""

from hybrid_pg.estimator import (
    DEFAULT_BOUNDS,
    DEFAULT_FALLBACK,
    BatchMoments,
    LambdaEstimate,
    excess_variance,
    lambda_from_moments,
    mixed_variance,
    optimal_lambda,
    pathwise_gradients,
    pooled_estimate,
    score_gradients,
)
from hybrid_pg.hybrid_pg import HybridPG
from hybrid_pg.window import WindowedLambda

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BOUNDS",
    "DEFAULT_FALLBACK",
    "BatchMoments",
    "LambdaEstimate",
    "HybridPG",
    "WindowedLambda",
    "excess_variance",
    "lambda_from_moments",
    "mixed_variance",
    "optimal_lambda",
    "pathwise_gradients",
    "pooled_estimate",
    "score_gradients",
    "__version__",
]
