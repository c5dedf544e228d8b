"""hybrid_pg: hybrid (pathwise + score-function) policy gradients for Stable-Baselines3.

Layers (arrows point down only; ``tests/test_layers.py`` enforces it):

* ``hybrid_pg.experiments``: the command line, run configs, the run engine, ablations, benchmarks,
  plots. Nothing in the library imports it.
* ``hybrid_pg`` (this package): the algorithm :class:`HybridPG`, its policies and surrogates, the
  statistics (:mod:`~hybrid_pg.estimator`, :mod:`~hybrid_pg.per_sample`, :mod:`~hybrid_pg.window`,
  :mod:`~hybrid_pg.change_detection`), the pathwise sources (:mod:`hybrid_pg.sources`), diagnostics
  (:mod:`~hybrid_pg.oracle`, :mod:`~hybrid_pg.drift`, :mod:`~hybrid_pg.update_log`) and ground truth.
* ``hybrid_pg_envs``: environments (gymnasium, numpy and torch only).

``import hybrid_pg`` registers the ``hybrid_pg/`` env ids with gymnasium. The estimator core is
importable without Stable-Baselines3: ``HybridPG``, ``HybridPGSettings`` and the policies are loaded
on first access (``dir(hybrid_pg)`` lists them before that). ``NonStationaryWrapper`` is
:class:`hybrid_pg_envs.NonStationaryWrapper`.
"""

from typing import TYPE_CHECKING, Any, List

import hybrid_pg_envs  # noqa: F401  (registers the hybrid_pg/ env ids)
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
from hybrid_pg.window import WindowedLambda
from hybrid_pg_envs import NonStationaryWrapper

if TYPE_CHECKING:  # what type checkers see of the lazy names below (py.typed)
    from hybrid_pg.hybrid_pg import HybridPG
    from hybrid_pg.policies import HybridActorCriticCnnPolicy, HybridActorCriticPolicy, HybridMultiInputActorCriticPolicy
    from hybrid_pg.settings import HybridPGSettings

__version__ = "0.4.0"

#: names loaded on first access (they import Stable-Baselines3 or pydantic), and the module of each
_LAZY = {
    "HybridPG": "hybrid_pg.hybrid_pg",
    "HybridPGSettings": "hybrid_pg.settings",
    "HybridActorCriticPolicy": "hybrid_pg.policies",
    "HybridActorCriticCnnPolicy": "hybrid_pg.policies",
    "HybridMultiInputActorCriticPolicy": "hybrid_pg.policies",
}


def __getattr__(name: str) -> Any:
    # PEP 562: the algorithm (and with it Stable-Baselines3) loads only when asked for
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hybrid_pg' has no attribute {name!r}")


def __dir__() -> List[str]:
    # the lazy names too, so dir() and tab completion list HybridPG before its first access
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "DEFAULT_BOUNDS",
    "DEFAULT_FALLBACK",
    "BatchMoments",
    "HybridActorCriticCnnPolicy",
    "HybridActorCriticPolicy",
    "HybridMultiInputActorCriticPolicy",
    "HybridPG",
    "HybridPGSettings",
    "LambdaEstimate",
    "NonStationaryWrapper",
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
