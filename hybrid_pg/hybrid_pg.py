"""HybridPG: an on-policy actor-critic whose policy gradient mixes pathwise and score estimators.

Per update (one rollout):

1. eps = (a - mu_old(s)) / sigma_old recovers the noise behind every stored action
   (:mod:`hybrid_pg.rollout`); the pathwise source (:mod:`hybrid_pg.sources`) supplies Q~.
2. Per-sample policy-parameter gradients of the score and pathwise surrogates
   (:mod:`hybrid_pg.surrogates`) are reduced to moments (:mod:`hybrid_pg.per_sample`).
3. The weight applied to this rollout comes from the window of *previous* rollouts only (a weight
   estimated on the batch it weights is correlated with that batch's noise); this rollout's moments
   join the window afterwards. ``hybrid/lambda_batch`` reports this rollout's own estimate.
4. One loss, lam * pathwise + (1 - lam) * score (+ entropy, + V and A_phi regression), and
   ``n_epochs`` passes of minibatch SGD. The score surrogate is the likelihood ratio
   pi_theta / pi_old * A (PPO-clipped if ``clip_range`` is set), whose gradient at theta_old is
   exactly A * dlog pi / dtheta; the pathwise surrogate keeps the rollout's eps, so it stays a valid
   reparameterised gradient at every theta.
"""

from __future__ import annotations

import difflib
import inspect
import time
import warnings
from typing import Any, ClassVar, Dict, Iterable, List, Optional, Tuple, Type, TypeVar, Union

import numpy as np
import torch as th
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import FloatSchedule, explained_variance
from stable_baselines3.common.vec_env import VecEnv
from torch.nn import functional as F

from hybrid_pg.drift import DriftTracker
from hybrid_pg.estimator import BatchMoments, LambdaEstimate
from hybrid_pg.online_signals import online_signals
from hybrid_pg.oracle import Oracle, OracleEnv, check_oracle_env
from hybrid_pg.per_sample import GROUPS, all_finite
from hybrid_pg.policies import (
    DEFAULT_ADVANTAGE_SUPPORT,
    CnnPolicy,
    HybridActorCriticPolicy,
    MlpPolicy,
    MultiInputPolicy,
    unfuse_where_unsupported,
)
from hybrid_pg.rollout import (
    RolloutBatch,
    check_rollout_finite,
    index_context,
    index_obs,
    minibatches,
    prepare_batch,
    raise_if_observation_not_finite,
    rollout_blocks,
    rollout_group_moments,
    whole_rollout,
)
from hybrid_pg.settings import (
    DEPRECATED_ALIASES,
    HybridPGSettings,
    check_action_space,
    check_rollout_shape,
    settings_docs,
    validate_settings,
)
from hybrid_pg.sources import PathwiseSource, choose_source
from hybrid_pg.surrogates import ActorHead, clipped_surrogate, gaussian_entropy, gaussian_kl, gaussian_log_prob, scale_gradient
from hybrid_pg.update_log import (
    CONSOLE_KEYS,
    QUIET,
    mean_env_params,
    new_step_logs,
    oracle_log,
    record_step_logs,
    record_weight,
    start_messages,
)
from hybrid_pg.update_weights import gradient_batch_size, pathwise_kl_limit, weights_for_update
from hybrid_pg.window import WindowedLambda
from hybrid_pg_envs.clock import env_clock, has_clock, load_vec_state_dicts, model_at, vec_state_dicts

SelfHybridPG = TypeVar("SelfHybridPG", bound="HybridPG")

_WINDOW_STRUCTURE = ("lambda_window", "lambda_mode", "lambda_decay", "lambda_detector")


class HybridPG(OnPolicyAlgorithm):
    """Hybrid policy gradient (pathwise + score function, adaptive variance-optimal weight).

    Paper (estimator): Oden, "Malliavin Calculus as Stochastic Backpropagation", arXiv 2602.17013.
    Every hyperparameter is declared once in :class:`hybrid_pg.settings.HybridPGSettings` (type,
    range, meaning); the list below is generated from it.

    :param policy: the policy model (``"MlpPolicy"``, ``"CnnPolicy"``, ``"MultiInputPolicy"`` or a class).
    :param env: the environment (a Box action space with finite bounds is required).
    {settings}
    :param rollout_buffer_class: rollout buffer class (default chosen from the observation space).
    :param rollout_buffer_kwargs: keyword arguments for the rollout buffer.
    :param stats_window_size: episodes averaged in the rollout logs.
    :param tensorboard_log: tensorboard log directory (None: no tensorboard).
    :param policy_kwargs: keyword arguments for the policy (e.g. ``net_arch``, ``advantage_net_arch``).
    :param verbose: 0 silent, 1 info, 2 debug.
    :param seed: random seed.
    :param device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
    :param _init_setup_model: build the networks now.
    :param deprecated: old names of settings (``q_coef``, ``bias_horizon``), accepted with a warning.
    """

    policy_aliases: ClassVar[Dict[str, Type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }
    policy: HybridActorCriticPolicy
    #: the setting (a float, a schedule or None) until ``_setup_model`` wraps a number in a ``FloatSchedule``
    clip_range: Any

    def __init__(
        self,
        policy: Union[str, Type[HybridActorCriticPolicy]],
        env: Union[GymEnv, str],
        learning_rate: Union[float, Schedule] = 3e-4,
        n_steps: int = 2048,
        batch_size: Optional[int] = 64,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: Union[None, float, Schedule] = 0.2,
        normalize_advantage: bool = True,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        advantage_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        target_kl: Optional[float] = None,
        pathwise_kl_limit: Union[str, float, None] = "auto",
        estimator: str = "hybrid",
        fixed_lambda: Optional[float] = None,
        pathwise_source: str = "auto",
        model_horizon: int = 1,
        lambda_window: int = 8,
        lambda_mode: str = "sliding",
        lambda_decay: Optional[float] = None,
        lambda_detector: Optional[Dict[str, Any]] = None,
        oracle_freq: int = 0,
        oracle_samples: int = 16384,
        oracle_env: OracleEnv = None,
        oracle_frozen_clock: Optional[int] = None,
        lambda_bounds: Optional[Tuple[float, float]] = (0.0, 1.0),
        bias_correction: bool = True,
        bias_rule: str = "posterior",
        lambda_trend: bool = True,
        bias_min_samples: int = 2048,
        lambda_groups: str = "global",
        log_std_estimator: str = "mix",
        direction_check: bool = False,
        direction_confidence: float = 0.5,
        critic_gate: Optional[float] = None,
        control_variate: bool = False,
        contact_gate: bool = False,
        lambda_warmup: int = 2,
        stats_chunk_size: int = 256,
        rms_prop_eps: float = 1e-5,
        use_rms_prop: bool = False,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: Optional[Type[RolloutBuffer]] = None,
        rollout_buffer_kwargs: Optional[Dict[str, Any]] = None,
        stats_window_size: int = 100,
        tensorboard_log: Optional[str] = None,
        policy_kwargs: Optional[Dict[str, Any]] = None,
        verbose: int = 0,
        seed: Optional[int] = None,
        device: Union[th.device, str] = "auto",
        _init_setup_model: bool = True,
        **deprecated: Any,
    ):
        values = {k: v for k, v in locals().items() if k in HybridPGSettings.model_fields}
        for old in deprecated:  # an old name stands for its new one (whose value here is the default)
            values.pop(DEPRECATED_ALIASES.get(old, ""), None)
        settings = validate_settings(**{**values, **deprecated})
        env_action_space = getattr(env, "action_space", None)
        if env_action_space is not None:
            # before SB3's own (bare assert) check, so the user gets the reason
            check_action_space(env_action_space)
        super().__init__(
            policy,
            env,
            learning_rate=settings.learning_rate,
            n_steps=settings.n_steps,
            gamma=settings.gamma,
            gae_lambda=settings.gae_lambda,
            ent_coef=settings.ent_coef,
            vf_coef=settings.vf_coef,
            max_grad_norm=settings.max_grad_norm,
            use_sde=settings.use_sde,
            sde_sample_freq=settings.sde_sample_freq,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            device=device,
            seed=seed,
            _init_setup_model=False,
            supported_action_spaces=None,  # checked below, with a ValueError that says why
        )
        self._adopt(settings)
        if settings.use_rms_prop and "optimizer_class" not in self.policy_kwargs:
            self.policy_kwargs["optimizer_class"] = th.optim.RMSprop
            self.policy_kwargs["optimizer_kwargs"] = dict(alpha=0.99, eps=settings.rms_prop_eps, weight_decay=0)
        # Created here, not in _setup_model: `load` restores these from the saved data and then
        # calls _setup_model, which must not wipe them.
        self.lambda_windows: Dict[str, WindowedLambda] = {
            name: WindowedLambda(
                window=settings.lambda_window,
                mode=settings.lambda_mode,
                decay=settings.lambda_decay,
                bounds=settings.lambda_bounds,
                bias_correction=settings.bias_correction,
                bias_rule=settings.bias_rule,
                detector=settings.lambda_detector,
            )
            for name in ("global", *GROUPS)
        }
        self._n_rollouts_trained = 0
        # the value head's explained variance on the previous rollout (critic_gate); NaN before one
        self._previous_explained_variance = float("nan")
        # saved with the model like the windows, so a resumed run's drift diagnostics continue exactly
        self._drift = DriftTracker(settings.lambda_window)
        self.last_lambda: Dict[str, float] = {"global": 0.0, **{g: 0.0 for g in GROUPS}}
        self.saved_env_clocks: Optional[List[Dict[str, Any]]] = None
        if _init_setup_model:
            self._setup_model()

    # ------------------------------------------------------------------------------------------
    # settings and setup
    # ------------------------------------------------------------------------------------------

    def _adopt(self, settings: HybridPGSettings) -> None:
        """Make ``settings`` the one source of every hyperparameter: the attributes SB3 and users
        read mirror it, and the windows read theirs from it."""
        self.settings = settings
        for name in HybridPGSettings.model_fields:
            setattr(self, name, getattr(settings, name))
        for old in DEPRECATED_ALIASES:
            self.__dict__.pop(old, None)

    def _settings_from_attributes(self) -> HybridPGSettings:
        """Re-validate after SB3's ``load`` wrote saved data and ``load(**kwargs)`` over the attributes."""
        values = {name: self.__dict__[name] for name in HybridPGSettings.model_fields if name in self.__dict__}
        for old, new in DEPRECATED_ALIASES.items():  # models saved before the rename
            if old in self.__dict__:
                values[new] = self.__dict__[old]
        for name in ("clip_range", "learning_rate"):  # schedules as SB3 stores them
            if name in values and isinstance(values[name], FloatSchedule):
                values[name] = values[name].value_schedule
        return validate_settings(**values)

    def _setup_model(self) -> None:
        self._adopt(self._settings_from_attributes())
        super()._setup_model()
        if not isinstance(self.policy, HybridActorCriticPolicy):
            raise TypeError(
                f"HybridPG needs a HybridActorCriticPolicy (it adds the advantage head A_phi); got "
                f"{type(self.policy).__name__}. Subclass hybrid_pg.policies.HybridActorCriticPolicy instead of ActorCriticPolicy."
            )
        unfuse_where_unsupported(self.policy.optimizer, self.policy.device)
        if (
            self.policy.advantage_loss == "hl_gauss"
            and not self.settings.normalize_advantage
            and self.policy.advantage_support == DEFAULT_ADVANTAGE_SUPPORT
        ):
            # the bins' support is in the advantages' units: unnormalised advantages may fall outside
            warnings.warn(
                f"advantage_loss='hl_gauss' with normalize_advantage=False: the head's bins cover "
                f"{self.policy.advantage_support} in raw advantage units and targets outside are clipped; "
                "set policy_kwargs advantage_support to the advantages' range",
                UserWarning,
                stacklevel=2,
            )
        if getattr(self, "action_space", None) is not None:  # unset by SB3 when load(env=None)
            check_action_space(self.action_space)
        if self.env is not None:
            check_rollout_shape(self.settings, self.n_envs)
        if self.clip_range is not None:
            self.clip_range = FloatSchedule(self.clip_range)
        self.actor_head = ActorHead(self.policy.mlp_extractor.policy_net, self.policy.action_net)
        self._sync_windows()
        self._env_params: Dict[str, float] = {}
        self._rollout_clock_start: Optional[int] = None
        self._restore_env_clocks()
        self.pathwise: Optional[PathwiseSource] = choose_source(self)
        self.oracle = self._make_oracle()
        self._print_start()

    def _sync_windows(self) -> None:
        """The windows' structure is part of their saved data: a changed structure is refused, the
        rest (bounds, bias correction) is read from the settings."""
        s = self.settings
        wanted = {"window": s.lambda_window, "mode": s.lambda_mode, "detector": dict(s.lambda_detector or {})}
        for window in self.lambda_windows.values():
            actual = {"window": window.window, "mode": window.mode, "detector": window.detector_config}
            decay_differs = s.lambda_decay is not None and abs(window.decay - s.lambda_decay) > 0
            if wanted != actual or decay_differs:
                raise ValueError(
                    f"the saved lambda window ({actual}, decay {window.decay}) differs from the requested "
                    f"{', '.join(_WINDOW_STRUCTURE)} ({wanted}, decay {s.lambda_decay}); changing the window of a saved "
                    "model on load is not supported. Load without these arguments, or start a new model."
                )
            window.bounds = s.lambda_bounds
            window.bias_correction = s.bias_correction
            window.bias_rule = s.bias_rule
            window.trend = s.lambda_trend

    def _make_oracle(self) -> Optional[Oracle]:
        s = self.settings
        if not s.oracle_freq:
            return None
        check_oracle_env(self, s.oracle_env, s.oracle_frozen_clock)
        return Oracle(self, s.oracle_env, s.oracle_samples, s.oracle_freq, s.oracle_frozen_clock)

    def set_env(self, env: GymEnv, force_reset: bool = True) -> None:
        """SB3's ``set_env``, then choose the pathwise source again (a new env may have no model, or
        be normalised) and rebuild the oracle's env copy from the new env."""
        super().set_env(env, force_reset=force_reset)
        check_rollout_shape(self.settings, self.n_envs)
        self._restore_env_clocks()
        self.pathwise = choose_source(self)
        self.oracle = self._make_oracle()
        self._print_start()

    def _print_start(self) -> None:
        """verbose >= 1: the pathwise source in use and when the weight starts (:func:`hybrid_pg.update_log.start_messages`)."""
        if self.verbose >= 1 and (self.pathwise is not None or self.settings.estimator == "reinforce"):
            print("\n".join(start_messages(self.settings, self.pathwise, self._n_rollouts_trained)))

    def _excluded_save_params(self) -> List[str]:
        return [
            *super()._excluded_save_params(),
            "settings",
            "actor_head",
            "pathwise",
            "oracle",
            "oracle_env",
            "_env_params",
            "_rollout_clock_start",
        ]

    def save(self, path: Any, exclude: Optional[Iterable[str]] = None, include: Optional[Iterable[str]] = None) -> None:
        """SB3's ``save``; a non-stationary env's clocks are saved with the model, so ``load(path, env)``
        resumes the schedule where training left it instead of replaying it from the start."""
        self.saved_env_clocks = vec_state_dicts(self.env) if has_clock(self.env) else None
        super().save(path, exclude=exclude, include=include)

    @classmethod
    def load(
        cls,
        path: Any,
        env: Optional[GymEnv] = None,
        device: Union[th.device, str] = "auto",
        custom_objects: Optional[Dict[str, Any]] = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> "HybridPG":
        """SB3's ``load``; a broken file gets an error that names what is missing instead of a bare
        ``KeyError``. ``kwargs`` (values that replace the saved ones) must be HybridPG settings or
        constructor arguments: anything else (``learning_rat=``) is refused with a did-you-mean, as
        the constructor refuses it. Model files are pickles (SB3's format): load only files you trust."""
        _check_load_keywords(cls, kwargs)
        try:
            return super().load(
                path,
                env=env,
                device=device,
                custom_objects=custom_objects,
                print_system_info=print_system_info,
                force_reset=force_reset,
                **kwargs,
            )
        except KeyError as exc:
            raise ValueError(
                f"{path}: the saved model is incomplete: {exc} is missing (a HybridPG save holds 'data', 'policy.pth' and "
                "'policy.optimizer.pth'); the file is broken or was not written by HybridPG.save"
            ) from exc

    def _restore_env_clocks(self) -> None:
        """The saved clocks go into the env; its own ``steps_per_tick`` stays (it follows the new env's
        ``n_envs``: a model saved with 2 envs and loaded into 3 would otherwise run the schedule at
        2/3 speed), with a warning when it differs from the saved one."""
        saved = getattr(self, "saved_env_clocks", None)
        if not saved or self.env is None or not has_clock(self.env):
            return
        ticks = [state.get("steps_per_tick") for state in self.env.env_method("state_dict")]
        states = [{**saved[i % len(saved)], "steps_per_tick": ticks[i]} for i in range(self.env.num_envs)]
        old = sorted({state.get("steps_per_tick") for state in saved})
        if old != sorted(set(ticks)):
            warnings.warn(
                f"the saved env clock advanced by steps_per_tick={old[0] if len(old) == 1 else old} per step; the env given to "
                f"load ({self.env.num_envs} envs) advances by {ticks[0] if len(set(ticks)) == 1 else ticks}, which is kept: "
                "the schedule goes on from the saved clock at the new env's pace",
                stacklevel=3,
            )
        load_vec_state_dicts(self.env, states)
        self.saved_env_clocks = None  # once: a later set_env gets the env as the user passes it

    # ------------------------------------------------------------------------------------------
    # public views used by collaborators (oracle, sources, callbacks)
    # ------------------------------------------------------------------------------------------

    @property
    def n_rollouts_trained(self) -> int:
        """Updates done so far (one per rollout)."""
        return self._n_rollouts_trained

    @property
    def rollout_clock(self) -> Optional[int]:
        """A non-stationary env's clock at the midpoint of the last rollout (its mean parameter under
        linear drift; never the next regime after a switch at the rollout's end); None without a clock."""
        start = self._rollout_clock_start
        end = None if start is None else env_clock(self.env)
        if end is None:
            return None
        return end if start > end else (start + end) // 2

    def env_model_for_rollout(self) -> Any:
        """The env's differentiable model at the last rollout's clock (None for a stationary env)."""
        clock = self.rollout_clock
        return None if clock is None else model_at(self.env, clock)

    def weight_estimate(self, moments: BatchMoments) -> LambdaEstimate:
        """lam of one batch alone, by the same rule as the window (bias-aware, same B and bounds)."""
        return self.lambda_windows["global"].rule([moments], batch_size=self._gradient_batch_size())

    # ------------------------------------------------------------------------------------------
    # the weight
    # ------------------------------------------------------------------------------------------

    def _weights_for_this_update(self) -> Dict[str, float]:
        """lam per group for the rollout about to be used, from previous rollouts only."""
        return weights_for_update(
            self.settings,
            self.lambda_windows,
            self._n_rollouts_trained,
            self._gradient_batch_size(),
            critic_quality=getattr(self, "_previous_explained_variance", float("nan")),  # models saved before 0.4 lack it
        )

    @property
    def gradient_batch_size(self) -> int:
        """B of the weight rule's bias term (:func:`hybrid_pg.update_weights.gradient_batch_size`)."""
        return self._gradient_batch_size()

    def _gradient_batch_size(self) -> int:
        return gradient_batch_size(self.settings, self.n_steps * self.n_envs)

    def _source(self) -> PathwiseSource:
        """The pathwise source; chosen now if there was no env to choose it on before (``load(env=None)``)."""
        if self.pathwise is None:
            self.pathwise = choose_source(self)
        if self.pathwise is None:
            raise RuntimeError("HybridPG has no env to choose its pathwise source on: pass env to load() or call set_env() first")
        return self.pathwise

    def _pathwise_kl_limit(self, clip_range: Optional[float]) -> Optional[float]:
        return pathwise_kl_limit(self.settings.pathwise_kl_limit, clip_range)

    # ------------------------------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------------------------------

    def train(self) -> None:
        """One update from the rollout buffer: collect -> estimate -> mix -> step (module docstring)."""
        s = self.settings
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        pathwise = self._source()
        pathwise.refresh(self)
        for window in self.lambda_windows.values():  # the weight rule trusts an exact model, not a critic
            window.source = "exact" if pathwise.exact else "learned"
        clip_range = self.clip_range(self._current_progress_remaining) if self.clip_range is not None else None

        # -- the rollout at theta_old, the weight from previous rollouts, the oracle's reference --
        check_rollout_finite(self.rollout_buffer, self.num_timesteps, self.n_envs)
        batch = prepare_batch(self.policy, pathwise, whole_rollout(self.rollout_buffer), s.normalize_advantage)
        self._drift.snapshot(self.actor_head, self.policy.log_std)
        lam = self._weights_for_this_update()
        if self.verbose >= 1 and s.estimator == "hybrid" and s.fixed_lambda is None and self._n_rollouts_trained == s.lambda_warmup + 1:
            print(
                f"HybridPG: update {self._n_rollouts_trained + 1}: lam now comes from the window of previous rollouts ({lam['global']:.3f})"
            )
        oracle = self.oracle.estimates() if self.oracle is not None and self.oracle.due() else None

        # -- statistics of this rollout (they join the window only after the update) ---------------
        t_stats = time.perf_counter()
        moments = self._rollout_moments(pathwise, batch)
        stats_time = time.perf_counter() - t_stats
        stats_ok = moments is not None and all_finite(moments.values())
        if not stats_ok and s.estimator == "hybrid" and s.fixed_lambda is None:
            # a diverged critic (NaN/inf gradients): fall back to the score estimator for this update
            lam = {g: 0.0 for g in lam}

        # cheap agreement signals of the two estimators on this rollout, before the update moves the
        # source (hybrid_pg.online_signals); they consume no random numbers
        signals = online_signals(self.pathwise, batch, moments if stats_ok else None)

        # -- the mixed update -----------------------------------------------------------------------
        t_update = time.perf_counter()
        logs = self._update(batch, lam, clip_range)
        update_time = time.perf_counter() - t_update

        # -- the window learns from this rollout only now (no circularity) -------------------------
        warming_up = self._n_rollouts_trained < s.lambda_warmup and s.estimator == "hybrid"
        if moments is not None and stats_ok and not warming_up:
            for name in ("global", *GROUPS):
                self.lambda_windows[name].add(moments[name])
        self._n_rollouts_trained += 1
        self._n_updates += s.n_epochs
        self.last_lambda = dict(lam)
        # V's values were predicted before V saw this rollout: an out-of-sample fit, which the next
        # update's critic gate reads (never this update's: a weight from its own batch is biased)
        self._previous_explained_variance = float(
            explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())
        )
        self._log(logs, lam, moments if stats_ok else None, stats_time, update_time, clip_range, batch, oracle)
        for name, value in signals.items():
            self.logger.record(f"hybrid/{name}", value, exclude=QUIET)

    def _rollout_moments(self, pathwise: PathwiseSource, batch: RolloutBatch) -> Optional[Dict[str, BatchMoments]]:
        """The rollout's per-group moments; blocks of the env-major rollout (cut at episode starts)
        give them long-run variances, which the bias estimate's noise floor and the window's ESS use."""
        return rollout_group_moments(
            self.policy,
            self.actor_head,
            pathwise,
            batch,
            chunk_size=self.settings.stats_chunk_size,
            blocks=rollout_blocks(self.rollout_buffer),
        )

    def rollout_statistics(self, generator: Optional[th.Generator] = None) -> Tuple[Dict[str, float], Optional[Dict[str, BatchMoments]]]:
        """What the next ``train()`` computes from the rollout in the buffer before it changes
        anything: the weight per group (from the window of previous rollouts) and this rollout's
        per-group moments (None when they are not finite). Nothing is updated or consumed; for checks
        such as the same weight on two devices (:mod:`hybrid_pg.experiments.device_parity`). The
        pathwise source is taken as it is (``train()`` refreshes it first: a replay critic refits).
        ``generator`` draws the source's own noise (a k-step model return's future actions); a CPU
        generator gives the same noise on any device."""
        pathwise = self._source()
        batch = prepare_batch(self.policy, pathwise, whole_rollout(self.rollout_buffer), self.settings.normalize_advantage, generator)
        return self._weights_for_this_update(), self._rollout_moments(pathwise, batch)

    def _update(self, batch: RolloutBatch, lam: Dict[str, float], clip_range: Optional[float]) -> Dict[str, list]:
        """``n_epochs`` passes of minibatch SGD on lam * pathwise + (1 - lam) * score (+ losses)."""
        s, policy, pathwise = self.settings, self.policy, self._source()
        kl_limit = self._pathwise_kl_limit(clip_range)
        logs = new_step_logs()
        no_path = lam["mean"] == 0.0 and lam["log_std"] == 0.0
        for epoch in range(s.n_epochs):
            for idx in minibatches(batch.n, s.batch_size or batch.n, self.device):
                mb_obs, mb_context, adv = index_obs(batch.obs, idx), index_context(batch.context, idx), batch.adv[idx]
                mean, log_std = policy.actor_mean(mb_obs), policy.log_std
                # score surrogate: likelihood ratio, gradient at theta_old = A dlog pi
                log_prob = gaussian_log_prob(
                    scale_gradient(mean, 1.0 - lam["mean"]), scale_gradient(log_std, 1.0 - lam["log_std"]), batch.actions[idx]
                )
                log_ratio = log_prob - batch.old_log_prob[idx]
                ratio = th.exp(log_ratio)
                score_term = clipped_surrogate(ratio, adv, clip_range).mean()
                path_term = th.zeros((), device=self.device)
                if not no_path:
                    path_mean, path_log_std = scale_gradient(mean, lam["mean"]), scale_gradient(log_std, lam["log_std"])
                    path_values = pathwise.action_value(path_mean, path_log_std, batch.eps[idx], mb_context)
                    if kl_limit is not None:
                        with th.no_grad():
                            inside = gaussian_kl(batch.mean_old[idx], batch.log_std_old, mean, log_std) <= kl_limit
                        logs["path_dropped"].append(1.0 - inside.float().mean())
                        path_values = path_values * inside
                    path_term = batch.path_scale * path_values.mean()
                    residual = pathwise.score_residual(mb_context)
                    if residual is not None:
                        # a score term inside the pathwise estimator (the control variate's residual,
                        # hybrid_pg.sources.control_variate, or the contact gate's gated samples,
                        # hybrid_pg.sources.contact_gate), so clipped like one; its gradient at
                        # theta_old is residual * dlog pi
                        path_ratio = th.exp(gaussian_log_prob(path_mean, path_log_std, batch.actions[idx]) - batch.old_log_prob[idx])
                        path_term = path_term + clipped_surrogate(path_ratio, batch.path_scale * residual, clip_range).mean()
                entropy = gaussian_entropy(log_std)
                value_loss = F.mse_loss(batch.returns[idx], policy.predict_values(mb_obs).flatten())
                advantage_loss = pathwise.regression_loss(policy, mb_context, adv)
                if advantage_loss is None:
                    advantage_loss = th.zeros((), device=self.device)
                elif not bool(th.isfinite(advantage_loss)):
                    # a diverged A_phi must not take the rest down: its loss leaves this step
                    # (its gradient would make clip_grad_norm_'s total norm, hence every gradient, NaN)
                    advantage_loss = th.zeros((), device=self.device)
                    logs["advantage_diverged"].append(th.ones((), device=self.device))
                policy_loss = -(path_term + score_term)
                loss = policy_loss - s.ent_coef * entropy + s.vf_coef * value_loss + s.advantage_coef * advantage_loss

                with th.no_grad():
                    approx_kl = th.mean((ratio - 1) - log_ratio)
                if s.target_kl is not None and approx_kl.item() > 1.5 * s.target_kl:
                    if self.verbose >= 1:
                        print(f"Early stopping at epoch {epoch} due to reaching max kl: {approx_kl.item():.2f}")
                    return logs
                policy.optimizer.zero_grad()
                loss.backward()
                total_norm = th.nn.utils.clip_grad_norm_(policy.parameters(), s.max_grad_norm)
                if not bool(th.isfinite(total_norm)):
                    # never write a non-finite gradient into the parameters; count it instead
                    policy.optimizer.zero_grad()
                    logs["skipped_steps"].append(th.ones((), device=self.device))
                    continue
                policy.optimizer.step()
                # kept as tensors: one host sync per update instead of several per minibatch
                for key, value in (
                    ("policy_loss", policy_loss),
                    ("loss", loss),
                    ("path", path_term),
                    ("score", score_term),
                    ("value_loss", value_loss),
                    ("advantage_loss", advantage_loss),
                    ("entropy", entropy),
                    ("approx_kl", approx_kl),
                ):
                    logs[key].append(value.detach())
                if clip_range is not None:
                    logs["clip_fraction"].append(th.mean((th.abs(ratio - 1) > clip_range).float()).detach())
        return logs

    # ------------------------------------------------------------------------------------------
    # logging
    # ------------------------------------------------------------------------------------------

    def _log(self, logs, lam, moments, stats_time, update_time, clip_range, batch, oracle) -> None:
        record = self.logger.record
        record_step_logs(record, logs)
        for key, value in self._source().logged().items():  # e.g. the contact gate's share of gated samples
            record(key, value, exclude=QUIET)
        if clip_range is not None:
            record("train/clip_range", clip_range)
        record("train/explained_variance", self._previous_explained_variance)
        record("train/n_updates", self._n_updates, exclude="tensorboard")
        record("train/std", th.exp(self.policy.log_std).mean().item())
        record("hybrid/stats_valid", float(moments is not None), exclude=QUIET)
        record("hybrid/stats_time_fraction", stats_time / max(stats_time + update_time, 1e-12), exclude=QUIET)
        window = self.lambda_windows["global"]
        window_estimate = window.estimate(batch_size=self._gradient_batch_size())
        rollout_estimate = self.weight_estimate(moments["global"]) if moments is not None else None
        record_weight(
            record,
            lam,
            self.settings.lambda_groups == "per_group",
            window,
            window_estimate,
            rollout_estimate,
            moments,
            self.settings.lambda_bounds,
        )
        # policy drift vs env drift (see hybrid_pg.drift), and the env's current parameters
        if moments is not None:
            for name, value in self._drift.moments_drift(moments["global"]).items():
                record(f"hybrid/drift_{name}", value, exclude=QUIET)
        record("hybrid/kl_to_oldest", self._drift.kl_to_oldest(self.actor_head, batch.pi_features, len(window)), exclude=QUIET)
        for name, value in self._env_params.items():
            record(f"env/{name}", value)
        if oracle is not None and oracle[0] is not None:
            live, frozen = oracle
            batch_lam = rollout_estimate.lam if rollout_estimate is not None else None
            for name, value in oracle_log(live, lam["global"], window_estimate.lam, batch_lam, frozen).items():
                record(f"hybrid/{name}", value, exclude=None if f"hybrid/{name}" in CONSOLE_KEYS else QUIET)

    def _update_info_buffer(self, infos: List[Dict[str, Any]], dones: Optional[np.ndarray] = None) -> None:
        super()._update_info_buffer(infos, dones)
        params = mean_env_params(infos)
        if params is not None:
            self._env_params = params

    def collect_rollouts(self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int) -> bool:
        # a non-stationary env's clock when the rollout starts: the model source and the oracle's
        # env copy use the rollout's midpoint (see rollout_clock)
        self._rollout_clock_start = env_clock(env)
        try:
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        except ValueError as exc:
            raise_if_observation_not_finite(self._last_obs, self.num_timesteps, exc)
            raise

    def learn(
        self: SelfHybridPG,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "HybridPG",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfHybridPG:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )


#: ``load`` keywords that are not settings or constructor arguments (SB3's own)
_LOAD_OWN = ("custom_objects", "print_system_info", "force_reset")


def _check_load_keywords(cls: Type[HybridPG], kwargs: Dict[str, Any]) -> None:
    """``load(**kwargs)``: each key a setting, a deprecated name of one, or a constructor argument."""
    known = {*HybridPGSettings.model_fields, *DEPRECATED_ALIASES, *_LOAD_OWN}
    # HybridPG's own arguments, and a subclass's (a subclass may take *args, **kwargs and pass them on)
    for init in {HybridPG.__init__, cls.__init__}:
        known |= {
            name
            for name, p in inspect.signature(init).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in ("self", "policy", "env", "_init_setup_model")
        }
    for key, value in kwargs.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{key}={value!r}: is not a HybridPG setting or argument of load{hint}")


HybridPG.__doc__ = (HybridPG.__doc__ or "").replace("{settings}", "\n    ".join(f":param {name}: {text}" for name, text in settings_docs()))
