"""Every HybridPG setting, declared once: type, range, default and meaning.

:class:`HybridPGSettings` is the single schema behind the constructor, ``HybridPG.load(**kwargs)``,
the YAML config's ``algo`` section and the command line's ``--set algo.<name>=...``: each of them
validates through :func:`validate_settings`, so a value is accepted or refused with the same message
everywhere. The algorithm keeps one instance (``model.settings``); the weight windows read their
settings from it rather than keeping copies of their own.

pydantic v2 is used because it is the ecosystem's tool for exactly this (a typed declaration that
validates, documents itself and exports a JSON schema). Integers accept Python and numpy integers
but never booleans; numbers accept Python and numpy reals and reject NaN and infinities.

Errors are :class:`SettingsError` (a ``ValueError``) with the message ``"<name>=<value!r>: <why>"``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Tuple, Union

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from typing_extensions import Annotated

__all__ = [
    "DEPRECATED_ALIASES",
    "ESTIMATORS",
    "LAMBDA_GROUPS",
    "WINDOW_MODES",
    "HybridPGSettings",
    "KEY_NEUTRAL",
    "SettingsError",
    "check_action_space",
    "check_rollout_shape",
    "rename_deprecated",
    "settings_docs",
    "validate_settings",
]

ESTIMATORS = ("hybrid", "reinforce", "pathwise")
WINDOW_MODES = ("sliding", "ema", "adaptive")
LAMBDA_GROUPS = ("global", "per_group")

#: settings added after the run-name format was fixed, each with the value that reproduces the
#: behaviour from before it existed. A run config that leaves one at that value keeps the run name it
#: had before the setting was added (so a grid's finished runs stay reusable, e.g. REINFORCE cells
#: when a weight rule is added); any other value, a changed default included, enters the name.
KEY_NEUTRAL: Dict[str, Any] = {
    "log_std_estimator": "mix",
    "direction_check": False,
    "direction_confidence": 0.5,
    "critic_gate": None,
    "control_variate": False,
    "contact_gate": False,
}

#: old keyword -> new keyword. The old name still works for one release, with a DeprecationWarning.
DEPRECATED_ALIASES: Dict[str, str] = {
    # the head is an advantage head A_phi(s, a), not a Q-network
    "q_coef": "advantage_coef",
    # a minimum sample count of the bias-aware rule, not a horizon
    "bias_horizon": "bias_min_samples",
}


class SettingsError(ValueError):
    """An invalid HybridPG setting; the message starts with ``name=value``."""

    def __init__(self, name: str, value: Any, why: str) -> None:
        self.name, self.value, self.why = name, value, why
        super().__init__(f"{name}={value!r}: {why}")


# ------------------------------------------------------------------------------------------------
# value types: one definition of "an integer" and "a number" for the whole project
# ------------------------------------------------------------------------------------------------


def _integer(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError("must be an integer")
    return int(value)


def _number(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError("must be a number")
    if not math.isfinite(float(value)):
        raise ValueError("must be a finite number")
    return float(value)


def _boolean(value: Any) -> Any:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError("must be True or False")
    return bool(value)


def _number_or_schedule(value: Any) -> Any:
    return value if callable(value) else _number(value)


Int = Annotated[int, BeforeValidator(_integer)]
Number = Annotated[float, BeforeValidator(_number)]
Bool = Annotated[bool, BeforeValidator(_boolean)]
NumberOrSchedule = Annotated[Union[float, Callable[[float], float]], BeforeValidator(_number_or_schedule)]


def _bounds(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError("must be a pair (lo, hi) or None")
    lo, hi = (_number(v) for v in value)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError("must satisfy 0 <= lo <= hi <= 1 (or None for the unclipped weight)")
    return (lo, hi)


class HybridPGSettings(BaseModel):
    """HybridPG's hyperparameters (SB3's ``policy``, ``env``, ``seed``, ``device``, logging and
    buffer arguments are SB3's own and are not repeated here)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)

    learning_rate: NumberOrSchedule = Field(3e-4, description="learning rate, constant or a schedule of the remaining progress (1 -> 0).")
    n_steps: Int = Field(2048, ge=1, description="steps per environment per rollout (rollout size = n_steps * n_envs).")
    batch_size: Optional[Int] = Field(64, ge=1, description="minibatch size; None uses the whole rollout (one step per epoch, like A2C).")
    n_epochs: Int = Field(10, ge=1, description="passes over each rollout.")
    gamma: Number = Field(0.99, ge=0.0, le=1.0, description="discount factor.")
    gae_lambda: Number = Field(0.95, ge=0.0, le=1.0, description="GAE lambda (the advantage estimator of the score term).")
    clip_range: Optional[NumberOrSchedule] = Field(
        0.2,
        description="PPO clipping of the likelihood ratio in the score surrogate (float or schedule); None for the plain "
        "ratio (with n_epochs=1 and batch_size=None the update is then exactly the REINFORCE/A2C gradient at lam = 0).",
    )
    normalize_advantage: Bool = Field(
        True,
        description="divide the advantages by their rollout standard deviation (after centring); the pathwise term is divided by the same factor.",
    )
    ent_coef: Number = Field(0.0, description="entropy bonus coefficient.")
    vf_coef: Number = Field(0.5, ge=0.0, description="weight of the V regression loss.")
    advantage_coef: Number = Field(0.5, ge=0.0, description="weight of the advantage head A_phi(s, a) regression loss (formerly q_coef).")
    max_grad_norm: Number = Field(0.5, gt=0.0, description="gradient clipping norm.")
    target_kl: Optional[Number] = Field(
        None,
        gt=0.0,
        description="stop the epochs of an update once the approximate KL to the rollout policy exceeds 1.5 * target_kl (None: never).",
    )
    pathwise_kl_limit: Union[Literal["auto"], None, Number] = Field(
        "auto",
        description="trust region of the pathwise term: a sample's pathwise term is dropped once KL(pi_old(.|s) || pi(.|s)) at its "
        "state exceeds this. 'auto': clip_range^2 / 2 when clip_range is set, else no limit; None: no limit.",
    )
    estimator: Literal["hybrid", "reinforce", "pathwise"] = Field(
        "hybrid", description="'hybrid' (adaptive lam), 'reinforce' (lam = 0) or 'pathwise' (lam = 1)."
    )
    fixed_lambda: Optional[Number] = Field(
        None, ge=0.0, le=1.0, description="with estimator='hybrid', use this constant weight instead of the adaptive one (ablations)."
    )
    pathwise_source: str = Field(
        "auto",
        description="where dQ/da comes from: 'critic' (the learned advantage head), 'model' (the env's differentiable model, "
        "see hybrid_pg_envs), 'mujoco' (MuJoCo simulator derivatives, HalfCheetah/Hopper/Walker2d/Swimmer-v5), 'replay_critic' (a Q network fitted "
        "with TD(lambda) targets on the last lambda_window rollouts) or 'auto' "
        "(model if the env provides one, else critic). See hybrid_pg.sources.",
    )
    model_horizon: Int = Field(1, ge=1, description="k of the model source's k-step return.")
    lambda_window: Int = Field(8, ge=1, description="number of previous rollouts pooled for lam (EMA: its span).")
    lambda_mode: Literal["sliding", "ema", "adaptive"] = Field(
        "sliding",
        description="'sliding', 'ema' or 'adaptive' (sliding, shortened after a detected change; see hybrid_pg.change_detection).",
    )
    lambda_decay: Optional[Number] = Field(
        None, ge=0.0, lt=1.0, description="EMA forgetting factor (default from lambda_window); lambda_mode='ema' only."
    )
    lambda_detector: Optional[Dict[str, Any]] = Field(
        None,
        description="settings of the change detector of lambda_mode='adaptive' (see hybrid_pg.change_detection.CusumDetector), "
        "plus watch_bias=True to also watch a learned source's bias (hybrid_pg.change_detection.bias_coordinate).",
    )
    lambda_bounds: Annotated[Optional[Tuple[float, float]], BeforeValidator(_bounds)] = Field(
        (0.0, 1.0), description="clip range of lam (default (0, 1): never worse than the worse estimator); None: unclipped."
    )
    bias_correction: Bool = Field(
        True,
        description="minimise the MSE of the update's gradient instead of its variance, the score estimator being the unbiased reference.",
    )
    bias_rule: Literal["posterior", "ucl", "point"] = Field(
        "posterior",
        description="what a learned source's squared bias ||b||^2 is taken to be (an exact source has none): 'posterior' "
        "(default: its posterior mean ||b_hat||^2 + tr Var(b_hat) under a flat prior, which makes lam the Bayes-optimal "
        "weight for the gradient's expected MSE), 'ucl' (its upper confidence limit: more cautious) or 'point' "
        "(max(||b_hat||^2 - tr Var(b_hat), 0), the pre-0.2 rule: its noise, times B, moves lam). See hybrid_pg.weight_rule.",
    )
    lambda_trend: Bool = Field(
        True,
        description="follow the window's moments one rollout ahead along their linear trend (slope shrunk by its "
        "signal-to-noise), so a window of previous rollouts does not lag a weight that moves while the policy trains.",
    )
    bias_min_samples: Int = Field(
        2048,
        ge=1,
        description="floor of the sample count B of the bias-aware rule (formerly bias_horizon); larger rollouts use their own size.",
    )
    lambda_groups: Literal["global", "per_group"] = Field(
        "global", description="'global' (one lam) or 'per_group' (one for the mean network, one for log_std)."
    )
    log_std_estimator: Literal["mix", "score"] = Field(
        "mix",
        description="how log_std is updated: 'mix' (default) with the weighted mix, like the mean network (its own weight "
        "with lambda_groups='per_group'); 'score' with the score-function estimator alone (lam = 0 for log_std, the mean "
        "still mixed). The gradient audit measured MuJoCo's derivatives pushing sigma down more than the true gradient "
        "(docs/results/audit/hopper).",
    )
    direction_check: Bool = Field(
        False,
        description="fall back to the score-function estimator (lam = 0, per group) when the window's pathwise gradient points "
        "against its score gradient: <E g_P, E g_M>, estimated from pairs of different previous rollouts, negative with "
        "probability above direction_confidence (hybrid_pg.weight_rule.direction_test). The bias-aware rule weighs a bias's "
        "size against the score gradient's noise, and keeps a large weight on a wrong-way pathwise gradient when that noise is "
        "large (the gradient audit measured it on InvertedDoublePendulum: docs/results/audit/inverted_double_pendulum).",
    )
    direction_confidence: Number = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="how sure the direction check must be that the pathwise gradient points against the score gradient before "
        "it falls back: 0.5 (default) acts on the sign of the point estimate, 0.95 is a one-sided 95% test (rarely fires "
        "with a window of 8 rollouts). Used with direction_check=True only.",
    )
    critic_gate: Optional[Number] = Field(
        None,
        le=1.0,
        description="use the pathwise term only while the value head's explained variance of the returns on the previous "
        "rollout (train/explained_variance, predicted before V saw that rollout) is at least this; below it lam = 0. None "
        "(default): off. On InvertedDoublePendulum it falls below 0 again and again once the policy holds the pole for the "
        "whole episode (the returns jump), which is where the hybrid lost the optimum.",
    )
    control_variate: Bool = Field(
        False,
        description="add to the pathwise estimator the score-function estimator of what the source's Q~ misses, "
        "(A_hat - A~) dlog pi, A~ = Q~(s, a) - Q~(s, mu(s)): by Stein's identity the pair then has exactly the score "
        "estimator's expectation for any Q~ (Q-Prop's control variate), so every lam gives the score-only update's "
        "expectation and the weight only trades variance (lam = lam*). Needs a source whose Q~ is one function of the action "
        "(critic, replay_critic, model; not mujoco). See hybrid_pg.sources.control_variate.",
    )
    contact_gate: Bool = Field(
        False,
        description="with MuJoCo's derivatives (pathwise_source='mujoco'): on the samples whose step changes the number "
        "of active contacts, use the score-function estimator in place of the pathwise one (whatever lam); the weight is "
        "the variance-optimal one for the gated estimator. The gradient audit measured the derivatives' bias several "
        "times larger on such steps of Hopper. See hybrid_pg.sources.contact_gate.",
    )
    lambda_warmup: Int = Field(2, ge=0, description="number of first updates with lam held at 0 (hybrid only) while the critic is fitted.")
    oracle_freq: Int = Field(
        0, ge=0, description="every this many updates, log the oracle lam* from a large fresh batch (0 = off; see hybrid_pg.oracle)."
    )
    oracle_samples: Int = Field(16384, ge=2, description="size of the oracle batch.")
    oracle_env: Any = Field(
        None, description="the oracle's env copy (env id, env, VecEnv or factory); default: a copy of the training env."
    )
    oracle_frozen_clock: Optional[Int] = Field(
        None, ge=0, description="with the oracle on and a non-stationary env, also compute lam* on an env copy held at this clock value."
    )
    stats_chunk_size: Int = Field(256, ge=1, description="samples per chunk of the per-sample gradient computation (memory bound).")
    rms_prop_eps: Number = Field(1e-5, gt=0.0, description="RMSprop epsilon (only with use_rms_prop; accepted for A2C parity).")
    use_rms_prop: Bool = Field(False, description="use RMSprop (A2C's optimizer) instead of Adam.")
    use_sde: Bool = Field(False, description="not supported (there is no per-step eps with gSDE); must be False.")
    sde_sample_freq: Int = Field(-1, description="accepted for API parity, unused.")

    @model_validator(mode="after")
    def _cross_checks(self) -> "HybridPGSettings":
        if self.fixed_lambda is not None and self.estimator != "hybrid":
            raise _Cross("fixed_lambda", self.fixed_lambda, f"only applies to estimator='hybrid' (got estimator={self.estimator!r})")
        if self.lambda_decay is not None and self.lambda_mode != "ema":
            raise _Cross("lambda_decay", self.lambda_decay, "only applies to lambda_mode='ema'")
        if self.lambda_detector is not None:
            if self.lambda_mode != "adaptive":
                raise _Cross("lambda_detector", self.lambda_detector, "only applies to lambda_mode='adaptive'")
            from hybrid_pg.change_detection import detector_from_config

            try:
                detector_from_config(self.lambda_detector)
            except (TypeError, ValueError) as exc:
                raise _Cross("lambda_detector", self.lambda_detector, str(exc)) from None
        if self.oracle_frozen_clock is not None and not self.oracle_freq:
            raise _Cross("oracle_frozen_clock", self.oracle_frozen_clock, "needs the oracle on (oracle_freq > 0)")
        if self.contact_gate and self.estimator == "reinforce":
            raise _Cross("contact_gate", self.contact_gate, "has no effect with estimator='reinforce' (lam = 0: no pathwise term)")
        if self.control_variate and self.estimator == "reinforce":
            raise _Cross("control_variate", self.control_variate, "has no effect with estimator='reinforce' (lam = 0: no pathwise term)")
        if self.use_sde:
            raise _Cross("use_sde", self.use_sde, "gSDE is not supported: the pathwise term needs the per-step Gaussian noise eps")
        if self.clip_range is not None and not callable(self.clip_range) and self.clip_range <= 0:
            raise _Cross("clip_range", self.clip_range, "must be a number > 0, a schedule, or None")
        if not callable(self.learning_rate) and self.learning_rate < 0:
            raise _Cross("learning_rate", self.learning_rate, "must be a number >= 0 or a schedule")
        limit = self.pathwise_kl_limit
        if limit is not None and limit != "auto" and not limit > 0:
            raise _Cross("pathwise_kl_limit", limit, "must be 'auto', None or a number > 0")
        from hybrid_pg.sources import SOURCE_NAMES

        if self.pathwise_source not in SOURCE_NAMES:
            raise _Cross("pathwise_source", self.pathwise_source, f"must be one of {SOURCE_NAMES}")
        return self

    def yaml_dict(self) -> Dict[str, Any]:
        """The settings that YAML can represent (schedules and env objects are left out)."""
        return {k: v for k, v in self.model_dump().items() if _yaml_representable(v)}


class _Cross(ValueError):
    """A failed cross-field check, carrying the field it belongs to."""

    def __init__(self, name: str, value: Any, why: str) -> None:
        self.name, self.value, self.why = name, value, why
        super().__init__(why)


def _yaml_representable(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_yaml_representable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _yaml_representable(v) for k, v in value.items())
    return False


def rename_deprecated(kwargs: Mapping[str, Any], warn: bool = True) -> Dict[str, Any]:
    """``kwargs`` with deprecated names replaced by their new ones (a DeprecationWarning per old name).

    Giving both the old and the new name is an error: which one is meant is ambiguous.
    """
    out = dict(kwargs)
    for old, new in DEPRECATED_ALIASES.items():
        if old not in out:
            continue
        if new in out:
            raise SettingsError(old, out[old], f"is the deprecated name of {new!r}; give only {new!r}")
        if warn:
            warnings.warn(f"HybridPG's {old!r} is deprecated; use {new!r}", DeprecationWarning, stacklevel=3)
        out[new] = out.pop(old)
    return out


def validate_settings(**kwargs: Any) -> HybridPGSettings:
    """Validate ``kwargs`` (deprecated names accepted) and return the settings, or raise
    :class:`SettingsError` naming the first offending setting."""
    kwargs = rename_deprecated(kwargs)
    try:
        return HybridPGSettings(**kwargs)
    except ValidationError as exc:
        raise _first_error(exc, kwargs) from None


def _first_error(exc: ValidationError, kwargs: Mapping[str, Any]) -> SettingsError:
    error = exc.errors(include_url=False)[0]
    cross = (error.get("ctx") or {}).get("error")
    if isinstance(cross, _Cross):
        return SettingsError(cross.name, cross.value, cross.why)
    loc = error.get("loc") or ("settings",)
    name = str(loc[0])
    if error.get("type") == "extra_forbidden":
        from difflib import get_close_matches

        close = get_close_matches(name, list(HybridPGSettings.model_fields) + list(DEPRECATED_ALIASES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return SettingsError(name, kwargs.get(name), f"is not a HybridPG setting{hint}")
    why = str(error.get("msg", "invalid"))
    why = why.removeprefix("Value error, ")
    return SettingsError(name, kwargs.get(name, error.get("input")), why)


def settings_docs() -> List[Tuple[str, str]]:
    """(name, description) of every setting, in declaration order (for docstrings and ``--help``)."""
    return [(name, field.description or "") for name, field in HybridPGSettings.model_fields.items()]


def check_rollout_shape(settings: HybridPGSettings, n_envs: int) -> None:
    """Checks that need the number of envs: warn when the weight can never leave its fallback (a
    one-sample rollout), and where PPO warns about minibatches."""
    rollout = settings.n_steps * n_envs
    adaptive = settings.estimator == "hybrid" and settings.fixed_lambda is None
    if adaptive and rollout < 2:
        # a warning, not an error: SB3's A2C accepts n_steps=1 and so must a drop-in replacement
        warnings.warn(
            f"n_steps={settings.n_steps}: a rollout of {rollout} sample(s) (n_steps * n_envs) has no spread, so the adaptive "
            "weight stays at 0 (pure REINFORCE) for the whole run; use n_steps * n_envs >= 2 for a hybrid gradient",
            UserWarning,
            stacklevel=3,
        )
    batch = settings.batch_size
    if batch is None or rollout % batch == 0:
        return
    # PPO's warning, word for word (SB3's test_ppo_warnings matches it), plus the oversize case
    larger = (
        f"\nNote: batch_size={batch} is larger than the rollout, so every epoch is one step on the whole rollout."
        if batch > rollout
        else ""
    )
    warnings.warn(
        f"You have specified a mini-batch size of {batch}, but because the `RolloutBuffer` is of size "
        f"`n_steps * n_envs = {rollout}`, after every {rollout // batch} untruncated mini-batches, "
        f"there will be a truncated mini-batch of size {rollout % batch}\nWe recommend using a "
        f"`batch_size` that is a factor of `n_steps * n_envs`.\nInfo: (n_steps={settings.n_steps} and n_envs={n_envs})" + larger,
        UserWarning,
        stacklevel=3,
    )


def check_action_space(action_space: Any) -> None:
    """A Box with finite bounds: the only action space a Gaussian policy with a pathwise term can serve."""
    from gymnasium import spaces

    if not isinstance(action_space, spaces.Box):
        raise ValueError(
            f"HybridPG trains Gaussian policies on continuous (Box) action spaces; got {action_space}. Use A2C/PPO for discrete actions."
        )
    if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
        raise ValueError(
            "HybridPG needs finite action bounds (the pathwise term clips actions to the Box like "
            f"SB3 does before env.step); got low={action_space.low}, high={action_space.high}"
        )
