"""HybridPG: an on-policy actor-critic whose policy gradient mixes pathwise and score estimators.

Per update (one rollout):

1. eps = (a - mu_old(s)) / sigma_old recovers the noise behind every stored action.
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

import math
import time
import warnings
from types import SimpleNamespace
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Type, TypeVar, Union

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import FloatSchedule, explained_variance
from stable_baselines3.common.vec_env import VecEnv, VecNormalize, unwrap_vec_wrapper
from torch.nn import functional as F

from hybrid_pg.estimator import DEFAULT_BOUNDS, BatchMoments, LambdaEstimate, _check_bounds, mixed_variance, pooled_estimate
from hybrid_pg.per_sample import (
    GROUPS,
    all_finite,
    outer_product_group_moments,
    per_sample_group_moments,
    single_sample_surrogates,
    supports_outer_product_moments,
)
from hybrid_pg.policies import CnnPolicy, HybridActorCriticPolicy, MlpPolicy, MultiInputPolicy
from hybrid_pg.surrogates import (
    ActorHead,
    FrozenModule,
    ValueHead,
    gaussian_entropy,
    gaussian_kl,
    gaussian_log_prob,
    pathwise_value,
    scale_gradient,
)
from hybrid_pg.change_detection import CusumDetector
from hybrid_pg.drift import DriftTracker
from hybrid_pg.oracle import OracleEnv, OracleLambda, check_oracle_env, env_clock, oracle_log
from hybrid_pg.window import WINDOW_MODES, WindowedLambda

SelfHybridPG = TypeVar("SelfHybridPG", bound="HybridPG")

ESTIMATORS = ("hybrid", "reinforce", "pathwise")
PATHWISE_SOURCES = ("auto", "critic", "model")
LAMBDA_GROUPS = ("global", "per_group")


class HybridPG(OnPolicyAlgorithm):
    """Hybrid policy gradient (pathwise + score function, adaptive variance-optimal weight).

    Paper (estimator): Oden, "Malliavin Calculus as Stochastic Backpropagation", arXiv 2602.17013.

    :param policy: the policy model (``"MlpPolicy"``, ``"CnnPolicy"``, ``"MultiInputPolicy"`` or a class).
    :param env: the environment (a Box action space with finite bounds is required).
    :param learning_rate: learning rate, constant or a schedule of the remaining progress (1 -> 0).
    :param n_steps: steps per environment per rollout (rollout size = n_steps * n_envs).
    :param batch_size: minibatch size; None uses the whole rollout (one step per epoch, like A2C).
    :param n_epochs: passes over each rollout.
    :param gamma: discount factor.
    :param gae_lambda: GAE lambda (the advantage estimator of the score term).
    :param clip_range: PPO clipping of the likelihood ratio in the score surrogate (float or
        schedule); None for the plain ratio (with ``n_epochs=1`` and ``batch_size=None`` the update
        is then exactly the REINFORCE/A2C gradient at lam = 0).
    :param normalize_advantage: divide the advantages by their rollout standard deviation (after
        centring); the pathwise term is divided by the same factor so both stay on one scale.
    :param ent_coef: entropy bonus coefficient.
    :param vf_coef: weight of the V regression loss.
    :param q_coef: weight of the advantage-critic A_phi(s, a) regression loss.
    :param max_grad_norm: gradient clipping norm.
    :param target_kl: stop the epochs of an update early once the approximate KL to the rollout
        policy exceeds 1.5 * target_kl (None: never).
    :param pathwise_kl_limit: trust region of the pathwise term. PPO's ratio clip stops a sample's
        score term once the policy has moved far on it; the pathwise term has no ratio, so without a
        limit ten epochs of low-noise pathwise steps can walk the policy far into the critic's
        errors. A sample's pathwise term is dropped once KL(pi_old(.|s) || pi(.|s)) at its state
        exceeds this limit. ``"auto"``: clip_range^2 / 2 (the KL at which a mean shift moves a
        typical ratio by about clip_range) when ``clip_range`` is set, else no limit; None: no limit.
        The first minibatch step is at theta_old, where no sample is dropped.
    :param estimator: ``"hybrid"`` (adaptive lam), ``"reinforce"`` (lam = 0) or ``"pathwise"`` (lam = 1).
    :param fixed_lambda: with ``estimator="hybrid"``, use this constant weight instead of the
        adaptive one (ablations).
    :param pathwise_source: ``"critic"`` (learned A_phi(s, a)), ``"model"`` (exact pathwise through
        the env's differentiable model, see :mod:`hybrid_pg_envs`) or ``"auto"`` (model if the env
        provides one, else critic).
    :param model_horizon: k of the model source's k-step return.
    :param lambda_window: number of previous rollouts pooled for lam (EMA: its span).
    :param lambda_mode: ``"sliding"``, ``"ema"`` or ``"adaptive"`` (sliding, shortened to the rollouts
        after a detected change of the gradient statistics; see :mod:`hybrid_pg.change_detection`).
    :param lambda_decay: EMA forgetting factor (default from ``lambda_window``).
    :param lambda_detector: settings of the change detector of ``lambda_mode="adaptive"``
        (``drift``, ``threshold``, ``warmup``; see :class:`hybrid_pg.change_detection.CusumDetector`).
    :param lambda_bounds: clip range of lam (default (0, 1): never worse than the worse estimator).
    :param bias_correction: minimise the MSE of the minibatch gradient instead of its variance,
        treating the score estimator as the unbiased reference (the critic's or model's pathwise
        gradient can be biased).
    :param oracle_freq: every this many updates, compute the oracle lam* from a large fresh batch at
        the current policy on a separate env copy and log it beside the windowed and per-rollout
        estimates (``hybrid/oracle_*``); 0 = off. See :mod:`hybrid_pg.oracle`.
    :param oracle_samples: size of the oracle batch.
    :param oracle_env: the oracle's env copy (an env id, env, VecEnv or factory); default: made from
        the training env's gymnasium spec.
    :param oracle_frozen_clock: with the oracle on and a non-stationary env, also compute lam* on a
        second env copy held at the parameters of this clock value (e.g. 0: the env as training
        started), logged as ``hybrid/oracle_lambda_frozen_env``: it moves only with the policy, and
        ``hybrid/oracle_env_drift_share`` (live minus frozen) is the env drift's share of lam*.
    :param bias_horizon: floor of the B in the bias-aware rule, in samples (see
        :meth:`_gradient_batch_size`); rollouts larger than this use their own size.
    :param lambda_groups: ``"global"`` (one lam) or ``"per_group"`` (one lam for the mean network,
        one for log_std).
    :param lambda_warmup: number of first updates with lam held at 0 (hybrid only) while the
        critic is fitted; their statistics do not enter the window.
    :param stats_chunk_size: samples per chunk of the per-sample gradient computation (memory bound).
    :param rms_prop_eps: RMSprop epsilon (only with ``use_rms_prop``; accepted for A2C parity).
    :param use_rms_prop: use RMSprop (A2C's optimizer) instead of Adam.
    :param use_sde: not supported (there is no per-step eps with gSDE); must be False.
    :param sde_sample_freq: accepted for API parity, unused.
    :param rollout_buffer_class: rollout buffer class (default chosen from the observation space).
    :param rollout_buffer_kwargs: keyword arguments for the rollout buffer.
    :param stats_window_size: episodes averaged in the rollout logs.
    :param tensorboard_log: tensorboard log directory (None: no tensorboard).
    :param policy_kwargs: keyword arguments for the policy (e.g. ``net_arch``, ``q_net_arch``).
    :param verbose: 0 silent, 1 info, 2 debug.
    :param seed: random seed.
    :param device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
    :param _init_setup_model: build the networks now.
    """

    policy_aliases: ClassVar[Dict[str, Type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }
    policy: HybridActorCriticPolicy

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
        q_coef: float = 0.5,
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
        lambda_bounds: Optional[Tuple[float, float]] = DEFAULT_BOUNDS,
        bias_correction: bool = True,
        bias_horizon: int = 2048,
        lambda_groups: str = "global",
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
    ):
        _validate_hyperparameters(
            n_steps=n_steps,
            batch_size=batch_size,
            n_epochs=n_epochs,
            gamma=gamma,
            gae_lambda=gae_lambda,
            estimator=estimator,
            fixed_lambda=fixed_lambda,
            pathwise_source=pathwise_source,
            model_horizon=model_horizon,
            lambda_window=lambda_window,
            lambda_mode=lambda_mode,
            lambda_detector=lambda_detector,
            bias_horizon=bias_horizon,
            oracle_freq=oracle_freq,
            oracle_samples=oracle_samples,
            oracle_frozen_clock=oracle_frozen_clock,
            lambda_bounds=lambda_bounds,
            lambda_groups=lambda_groups,
            lambda_warmup=lambda_warmup,
            stats_chunk_size=stats_chunk_size,
            use_sde=use_sde,
            clip_range=clip_range,
            target_kl=target_kl,
            pathwise_kl_limit=pathwise_kl_limit,
            lambda_decay=lambda_decay,
            max_grad_norm=max_grad_norm,
            vf_coef=vf_coef,
            q_coef=q_coef,
            ent_coef=ent_coef,
            bias_correction=bias_correction,
        )
        if getattr(env, "action_space", None) is not None:
            # before SB3's own (bare assert) check, so the user gets the reason
            _check_action_space(env.action_space)
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
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
        if getattr(self, "action_space", None) is not None:  # unset by SB3 when load(env=None)
            _check_action_space(self.action_space)
        if self.env is not None and batch_size is not None and (self.env.num_envs * n_steps) % batch_size:
            buffer_size = self.env.num_envs * n_steps  # PPO's warning, word for word
            warnings.warn(
                f"You have specified a mini-batch size of {batch_size}, but because the `RolloutBuffer` is of size "
                f"`n_steps * n_envs = {buffer_size}`, after every {buffer_size // batch_size} untruncated mini-batches, "
                f"there will be a truncated mini-batch of size {buffer_size % batch_size}\nWe recommend using a "
                f"`batch_size` that is a factor of `n_steps * n_envs`.\nInfo: (n_steps={n_steps} and n_envs={self.env.num_envs})"
            )
        self.batch_size = batch_size
        self.n_epochs = n_epochs
        self.clip_range = clip_range
        self.pathwise_kl_limit = pathwise_kl_limit
        self.normalize_advantage = normalize_advantage
        self.q_coef = q_coef
        self.target_kl = target_kl
        self.estimator = estimator
        self.fixed_lambda = fixed_lambda
        self.pathwise_source = pathwise_source
        self.model_horizon = int(model_horizon)
        self.lambda_window = int(lambda_window)
        self.lambda_mode = lambda_mode
        self.lambda_decay = lambda_decay
        self.lambda_detector = lambda_detector
        self.bias_horizon = int(bias_horizon)
        self.oracle_freq = int(oracle_freq)
        self.oracle_samples = int(oracle_samples)
        self.oracle_env = oracle_env
        self.oracle_frozen_clock = None if oracle_frozen_clock is None else int(oracle_frozen_clock)
        self._oracle: Optional[OracleLambda] = None
        self._frozen_oracle: Optional[OracleLambda] = None
        self._rollout_clock_start: Optional[int] = None
        self.lambda_bounds = None if lambda_bounds is None else (float(lambda_bounds[0]), float(lambda_bounds[1]))
        self.bias_correction = bias_correction
        self.lambda_groups = lambda_groups
        self.lambda_warmup = int(lambda_warmup)
        self.stats_chunk_size = int(stats_chunk_size)
        self.rms_prop_eps = rms_prop_eps
        self.use_rms_prop = use_rms_prop
        if use_rms_prop and "optimizer_class" not in self.policy_kwargs:
            self.policy_kwargs["optimizer_class"] = th.optim.RMSprop
            self.policy_kwargs["optimizer_kwargs"] = dict(alpha=0.99, eps=rms_prop_eps, weight_decay=0)
        # Created here, not in _setup_model: `load` restores these from the saved data and then
        # calls _setup_model, which must not wipe them.
        self.lambda_windows: Dict[str, WindowedLambda] = {
            name: WindowedLambda(
                window=int(lambda_window),
                mode=lambda_mode,
                decay=lambda_decay,
                bounds=self.lambda_bounds,
                bias_correction=bias_correction,
                detector=lambda_detector,
            )
            for name in ("global", *GROUPS)
        }
        self._n_rollouts_trained = 0
        # saved with the model like the windows, so a resumed run's drift diagnostics continue exactly
        self._drift = DriftTracker(int(lambda_window))
        self.last_lambda: Dict[str, float] = {"global": 0.0, **{g: 0.0 for g in GROUPS}}
        if _init_setup_model:
            self._setup_model()

    # ------------------------------------------------------------------------------------------
    # setup
    # ------------------------------------------------------------------------------------------

    def _setup_model(self) -> None:
        super()._setup_model()
        if not isinstance(self.policy, HybridActorCriticPolicy):
            raise TypeError(
                f"HybridPG needs a HybridActorCriticPolicy (it adds the action-value head A_phi); got "
                f"{type(self.policy).__name__}. Subclass hybrid_pg.policies.HybridActorCriticPolicy instead of ActorCriticPolicy."
            )
        if self.clip_range is not None:
            self.clip_range = FloatSchedule(self.clip_range)
        self._actor_head = ActorHead(self.policy.mlp_extractor.policy_net, self.policy.action_net)
        self._frozen_value = FrozenModule(ValueHead(self.policy.mlp_extractor.value_net, self.policy.value_net))
        self._frozen_advantage = FrozenModule(self.policy.q_net)
        self._frozen_actor = FrozenModule(self._actor_head)
        self._dynamics_model = None
        self._resolved_source = self._resolve_pathwise_source()
        self._check_windows_match_settings()
        if self.oracle_freq:
            check_oracle_env(self, self.oracle_env, self.oracle_frozen_clock)
        self._env_params: Dict[str, float] = {}

    def _check_windows_match_settings(self) -> None:
        """``load(path, lambda_window=...)`` overwrites the attributes, not the restored windows:
        refuse rather than silently train with settings other than the ones asked for."""
        for name, window in self.lambda_windows.items():
            wanted = {"window": self.lambda_window, "mode": self.lambda_mode}
            actual = {"window": window.window, "mode": window.mode}
            if wanted != actual:
                raise ValueError(
                    f"the saved lambda window ({actual}) differs from the requested lambda_window/lambda_mode "
                    f"({wanted}); changing the window of a saved model on load is not supported. Load without "
                    "these arguments, or start a new model."
                )

    def _resolve_pathwise_source(self) -> str:
        """'critic' or 'model'. Needs the env for 'model'/'auto'; without one (load(env=None))
        the decision is deferred to the first update."""
        if self.pathwise_source == "critic" or (self.estimator == "reinforce" and self.pathwise_source == "auto"):
            return "critic"
        if self.env is None:
            return "unresolved"
        from hybrid_pg_envs.differentiable import find_differentiable_model

        normalized = unwrap_vec_wrapper(self.env, VecNormalize)
        model = find_differentiable_model(self.env)
        if model is not None and normalized is not None and (normalized.norm_obs or normalized.norm_reward):
            msg = (
                "the differentiable model works in raw observation and reward units, but the env is "
                "wrapped in VecNormalize(norm_obs or norm_reward)"
            )
            if self.pathwise_source == "model":
                raise ValueError(f"pathwise_source='model' is not supported here: {msg}")
            warnings.warn(f"pathwise_source='auto' falls back to the critic: {msg}")
            model = None
        if model is None:
            if self.pathwise_source == "model":
                raise ValueError(
                    "pathwise_source='model' needs an env that provides a differentiable model "
                    "(get_differentiable_model(), see hybrid_pg_envs); this env has none"
                )
            return "critic"
        if not isinstance(self.observation_space, spaces.Box) or len(self.observation_space.shape) != 1:
            raise ValueError("pathwise_source='model' needs a flat Box observation space")
        rollout_clock = self._rollout_clock()
        if rollout_clock is not None and self.env.has_attr("differentiable_model_at"):
            # the clock has moved on since the rollout was collected: the model of its midpoint
            model = self.env.env_method("differentiable_model_at", rollout_clock, indices=[0])[0]
        self._dynamics_model = model.to(self.device)
        return "model"

    def _rollout_clock(self) -> Optional[int]:
        """A non-stationary env's clock at the midpoint of the last rollout (its mean parameter under
        linear drift; never the next regime after a switch at the rollout's end); None without a clock."""
        start = self._rollout_clock_start
        end = None if start is None else env_clock(self.env)
        if end is None:
            return None
        return end if start > end else (start + end) // 2

    def _excluded_save_params(self) -> list[str]:
        return [
            *super()._excluded_save_params(),
            "_actor_head",
            "_frozen_value",
            "_frozen_advantage",
            "_frozen_actor",
            "_dynamics_model",
            "_resolved_source",
            "_env_params",
            "_oracle",
            "_frozen_oracle",
            "_rollout_clock_start",
            "oracle_env",
        ]

    # ------------------------------------------------------------------------------------------
    # the weight
    # ------------------------------------------------------------------------------------------

    def _weights_for_this_update(self) -> Dict[str, float]:
        """lam per group for the rollout about to be used, from previous rollouts only."""
        if self.estimator == "reinforce":
            lam = {g: 0.0 for g in ("global", *GROUPS)}
        elif self.estimator == "pathwise":
            lam = {g: 1.0 for g in ("global", *GROUPS)}
        elif self.fixed_lambda is not None:
            lam = {g: float(self.fixed_lambda) for g in ("global", *GROUPS)}
        elif self._n_rollouts_trained < self.lambda_warmup:
            lam = {g: 0.0 for g in ("global", *GROUPS)}
        else:
            lam = {g: self.lambda_windows[g].estimate(batch_size=self._gradient_batch_size()).lam for g in ("global", *GROUPS)}
        if self.lambda_groups == "global":
            return {"mean": lam["global"], "log_std": lam["global"], "global": lam["global"]}
        return lam

    def _gradient_batch_size(self) -> int:
        """B of the bias-aware rule: the rollout size, floored at ``bias_horizon``.

        Every minibatch step of an update carries the same pathwise bias, while each sample's noise
        enters the update once per epoch: over the update the noise averages over the whole
        rollout, so the rollout size (not the minibatch size) is the B that trades bias against
        variance. With tiny rollouts (A2C's n_steps=5) consecutive updates average their noise
        too while a critic's bias persists from one to the next, so B never drops below
        ``bias_horizon`` samples (measured: with B = 5 on SB3's identity-env test lam stayed at 0.86
        against a detected bias and learning stalled; with the floor it matches A2C).
        """
        return max(self.n_steps * self.n_envs, self.bias_horizon)

    # ------------------------------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------------------------------

    def train(self) -> None:
        """One update from the rollout buffer (see the module docstring)."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        if self._resolved_source == "unresolved" or self._resolved_source == "model":
            # re-fetched every update: a drifting env's model follows its parameters (or stays
            # deliberately stale, as the env decides), also through SubprocVecEnv's pickled copies
            self._resolved_source = self._resolve_pathwise_source()
        clip_range = self.clip_range(self._current_progress_remaining) if self.clip_range is not None else None
        kl_limit = self._pathwise_kl_limit(clip_range)

        self._check_rollout_finite()
        data = next(self.rollout_buffer.get(batch_size=None))
        batch = self._prepare_batch(data)
        obs, actions, n_samples, adv = batch.obs, batch.actions, batch.n, batch.adv
        path_scale, mean_old, eps = batch.path_scale, batch.mean_old, batch.eps
        pi_features, q_features, clipped_actions = batch.pi_features, batch.q_features, batch.clipped_actions
        log_std_old, future_eps, raw_obs = batch.log_std_old, batch.future_eps, batch.raw_obs
        self._drift.snapshot(self._actor_head, self.policy.log_std)

        lam = self._weights_for_this_update()
        oracle, frozen_oracle = self._maybe_oracle()

        # -- statistics of this rollout at theta_old (they join the window after lam is chosen) --
        t_stats = time.perf_counter()
        moments = self._batch_moments(batch)
        stats_time = time.perf_counter() - t_stats
        stats_ok = moments is not None and all_finite(moments.values())
        if not stats_ok and self.estimator == "hybrid" and self.fixed_lambda is None:
            # a diverged critic (NaN/inf gradients): fall back to the score estimator for this update
            lam = {g: 0.0 for g in lam}

        # -- the update --------------------------------------------------------------------------
        t_update = time.perf_counter()
        batch_size = self.batch_size or n_samples
        continue_training = True
        logs: Dict[str, list] = {k: [] for k in ("policy_loss", "path", "score", "value_loss", "q_loss", "entropy", "approx_kl", "clip_fraction", "path_dropped", "q_diverged", "skipped_steps")}
        for _epoch in range(self.n_epochs):
            for idx in _minibatches(n_samples, batch_size, self.device):
                mb_obs = _index_obs(obs, idx)
                mean = self.policy.actor_mean(mb_obs)
                log_std = self.policy.log_std
                # score surrogate: likelihood ratio, gradient at theta_old = A dlog pi
                log_prob = gaussian_log_prob(
                    scale_gradient(mean, 1.0 - lam["mean"]), scale_gradient(log_std, 1.0 - lam["log_std"]), actions[idx]
                )
                log_ratio = log_prob - data.old_log_prob[idx]
                ratio = th.exp(log_ratio)
                score_obj = ratio * adv[idx]
                if clip_range is not None:
                    score_obj = th.min(score_obj, th.clamp(ratio, 1 - clip_range, 1 + clip_range) * adv[idx])
                score_term = score_obj.mean()
                if lam["mean"] == 0.0 and lam["log_std"] == 0.0:
                    path_term = th.zeros((), device=self.device)
                else:
                    path_values = self._pathwise(
                        scale_gradient(mean, lam["mean"]),
                        scale_gradient(log_std, lam["log_std"]),
                        eps[idx],
                        q_features[idx],
                        raw_obs[idx],
                        future_eps[idx],
                    )
                    if kl_limit is not None:
                        with th.no_grad():
                            inside = gaussian_kl(mean_old[idx], log_std_old, mean, log_std) <= kl_limit
                        logs["path_dropped"].append(1.0 - inside.float().mean())
                        path_values = path_values * inside
                    path_term = path_scale * path_values.mean()
                entropy = gaussian_entropy(log_std)
                values = self.policy.predict_values(mb_obs).flatten()
                value_loss = F.mse_loss(data.returns[idx], values)
                q_loss = F.mse_loss(self.policy.advantage(q_features[idx], clipped_actions[idx]), adv[idx])
                policy_loss = -(path_term + score_term)
                if not bool(th.isfinite(q_loss)):
                    # a diverged A_phi must not take the rest down: its loss leaves this step
                    # (its gradient would make clip_grad_norm_'s total norm, hence every gradient, NaN)
                    q_loss = th.zeros((), device=self.device)
                    logs["q_diverged"].append(th.ones((), device=self.device))
                loss = policy_loss - self.ent_coef * entropy + self.vf_coef * value_loss + self.q_coef * q_loss

                with th.no_grad():
                    approx_kl = th.mean((ratio - 1) - log_ratio)
                if self.target_kl is not None and approx_kl.item() > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at epoch {_epoch} due to reaching max kl: {approx_kl.item():.2f}")
                    break
                self.policy.optimizer.zero_grad()
                loss.backward()
                total_norm = th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                if not bool(th.isfinite(total_norm)):
                    # never write a non-finite gradient into the parameters; count it instead
                    self.policy.optimizer.zero_grad()
                    logs["skipped_steps"].append(th.ones((), device=self.device))
                    continue
                self.policy.optimizer.step()

                # kept as tensors: one host sync per update instead of several per minibatch
                for key, value in (
                    ("policy_loss", policy_loss),
                    ("path", path_term),
                    ("score", score_term),
                    ("value_loss", value_loss),
                    ("q_loss", q_loss),
                    ("entropy", entropy),
                    ("approx_kl", approx_kl),
                ):
                    logs[key].append(value.detach())
                if clip_range is not None:
                    logs["clip_fraction"].append(th.mean((th.abs(ratio - 1) > clip_range).float()).detach())
            if not continue_training:
                break
        update_time = time.perf_counter() - t_update

        # -- the window learns from this rollout only now (no circularity) -------------------------
        warming_up = self._n_rollouts_trained < self.lambda_warmup and self.estimator == "hybrid"
        if stats_ok and not warming_up:
            for name in ("global", *GROUPS):
                self.lambda_windows[name].add(moments[name])
        self._n_rollouts_trained += 1
        self._n_updates += self.n_epochs
        self.last_lambda = dict(lam)

        self._log_update(logs, lam, moments if stats_ok else None, stats_ok, stats_time, update_time, clip_range)
        self._log_drift(moments if stats_ok else None, pi_features)
        if oracle is not None:
            batch_lam = self._rollout_estimate(moments["global"]).lam if stats_ok else None
            window_lam = self.lambda_windows["global"].estimate(batch_size=self._gradient_batch_size()).lam
            for name, value in oracle_log(oracle, lam["global"], window_lam, batch_lam, frozen_oracle).items():
                self.logger.record(f"hybrid/{name}", value)

    def _log_drift(self, moments: Optional[Dict[str, Any]], pi_features: th.Tensor) -> None:
        """Policy drift vs env drift (see :mod:`hybrid_pg.drift`), and the env's current parameters."""
        record = self.logger.record
        if moments is not None:
            for name, value in self._drift.moments_drift(moments["global"]).items():
                record(f"hybrid/drift_{name}", value)
        window_length = len(self.lambda_windows["global"])
        record("hybrid/kl_to_oldest", self._drift.kl_to_oldest(self._actor_head, pi_features, window_length))
        for name, value in self._env_params.items():
            record(f"env/{name}", value)

    def _update_info_buffer(self, infos: List[Dict[str, Any]], dones: Optional[np.ndarray] = None) -> None:
        super()._update_info_buffer(infos, dones)
        # non-stationary envs report their physical parameters as info["env_params"]; log their
        # mean over the sub-envs at the latest step
        reported = [info["env_params"] for info in infos if isinstance(info.get("env_params"), dict)]
        if reported:
            keys = set().union(*reported)
            self._env_params = {
                k: float(np.mean([r[k] for r in reported if k in r and np.isscalar(r[k])]))
                for k in keys
                if any(k in r and np.isscalar(r[k]) for r in reported)
            }

    def set_env(self, env: GymEnv, force_reset: bool = True) -> None:
        """SB3's ``set_env``, then re-decide the pathwise source (a new env may have no model, or be
        normalised) and rebuild the oracle's env copy from the new env."""
        super().set_env(env, force_reset=force_reset)
        self._dynamics_model = None
        self._resolved_source = self._resolve_pathwise_source()
        self._oracle = self._frozen_oracle = None

    def _check_rollout_finite(self) -> None:
        """Refuse a rollout with a non-finite reward (or value) before it reaches any parameter."""
        buf = self.rollout_buffer
        for name in ("rewards", "values", "returns", "advantages"):
            values = getattr(buf, name)
            bad = ~np.isfinite(values)
            if bad.any():
                step, env = (int(i) for i in np.argwhere(bad)[0][:2])
                kind = "nan" if np.isnan(values[step, env]) else "inf"
                global_step = self.num_timesteps - (buf.buffer_size - step) * self.n_envs + env + 1
                raise ValueError(
                    f"found {kind} in {name} of the rollout at step {step} of env {env} (about global env step "
                    f"{global_step}); the update was not applied. "
                    + ("Check the env's reward at that step (VecCheckNan(raise_exception=True) stops at the exact call)."
                       if name in ("rewards", "returns", "advantages") else "The value network has diverged.")
                )

    def _prepare_batch(self, data: Any, generator: Optional[th.Generator] = None) -> SimpleNamespace:
        """Everything both surrogates and their statistics need from a batch, at theta_old."""
        obs, actions = data.observations, data.actions.reshape(len(data.actions), -1)
        n_samples = len(actions)
        adv_raw = data.advantages
        if self.normalize_advantage and n_samples > 1:
            scale = 1.0 / (adv_raw.std().item() + 1e-8)
            adv = (adv_raw - adv_raw.mean()) * scale
        else:
            scale, adv = 1.0, adv_raw
        with th.no_grad():
            mean_old = self.policy.actor_mean(obs)
            pi_features = self.policy.extract_features(obs, self.policy.pi_features_extractor)
            batch = SimpleNamespace(
                obs=obs,
                actions=actions,
                n=n_samples,
                adv=adv,
                # A_phi is regressed on the advantages in the units the score term uses, so the
                # critic's pathwise term needs no further scaling; the model's return is in reward
                # units and is divided by the same factor as the advantages.
                path_scale=scale if self._resolved_source == "model" else 1.0,
                mean_old=mean_old,
                eps=(actions - mean_old) * th.exp(-self.policy.log_std),
                pi_features=pi_features,
                q_features=self.policy.q_features(obs),
                clipped_actions=self.policy.clip_action(actions),
                log_std_old=self.policy.log_std.detach().clone(),
                future_eps=th.randn(n_samples, max(self.model_horizon - 1, 1), actions.shape[1], device=self.device, generator=generator),
                raw_obs=obs if isinstance(obs, th.Tensor) else pi_features,  # model source needs flat Box obs
            )
        return batch

    def _batch_moments(self, batch: SimpleNamespace) -> Optional[Dict[str, BatchMoments]]:
        return self._rollout_moments(
            batch.pi_features, batch.q_features, batch.raw_obs, batch.eps, batch.actions, batch.adv, batch.future_eps, batch.path_scale
        )

    def _maybe_oracle(self) -> Tuple[Optional[LambdaEstimate], Optional[LambdaEstimate]]:
        """lam* from a large fresh batch at the current policy, every ``oracle_freq`` updates; and,
        with ``oracle_frozen_clock``, the same at the frozen env parameters."""
        if not self.oracle_freq or self._n_rollouts_trained % self.oracle_freq != 0:
            return None, None
        if self._oracle is None:
            self._oracle = OracleLambda(self, self.oracle_env, self.oracle_samples)
        live = self._oracle_estimate(self._oracle)
        if self.oracle_frozen_clock is None:
            return live, None
        if self._frozen_oracle is None:
            self._frozen_oracle = OracleLambda(self, self.oracle_env, self.oracle_samples, frozen_clock=self.oracle_frozen_clock)
        return live, self._oracle_estimate(self._frozen_oracle)

    def _oracle_estimate(self, oracle: OracleLambda) -> Optional[LambdaEstimate]:
        data, generator = oracle.collect()
        np_state, th_state = np.random.get_state(), th.get_rng_state()
        training_model, own_model = self._dynamics_model, oracle.differentiable_model()
        try:
            if own_model is not None and self._resolved_source == "model":
                self._dynamics_model = own_model
            moments = self._batch_moments(self._prepare_batch(data, generator=generator))
        finally:  # the statistics must not move the training run's RNG (or its model) either
            self._dynamics_model = training_model
            np.random.set_state(np_state)
            th.set_rng_state(th_state)
        if moments is None:
            return None
        return self._rollout_estimate(moments["global"])

    def _rollout_estimate(self, moments: BatchMoments) -> LambdaEstimate:
        """lam of one batch alone, by the same rule as the window (bias-aware, same B and bounds)."""
        return pooled_estimate([moments], bias_correction=self.bias_correction, batch_size=self._gradient_batch_size(), bounds=self.lambda_bounds)

    def _pathwise_kl_limit(self, clip_range: Optional[float]) -> Optional[float]:
        if self.pathwise_kl_limit == "auto":
            return None if clip_range is None else 0.5 * clip_range**2
        return self.pathwise_kl_limit

    def _pathwise(
        self,
        mean: th.Tensor,
        log_std: th.Tensor,
        eps: th.Tensor,
        q_features: th.Tensor,
        obs: th.Tensor,
        future_eps: th.Tensor,
    ) -> th.Tensor:
        """Batched Q~ for the training loss."""
        if self._resolved_source == "model":

            def mean_fn(observations: th.Tensor) -> th.Tensor:
                return self._frozen_actor(self.policy.extract_features(observations, self.policy.pi_features_extractor))

            return self._pathwise_value(mean, log_std, eps, q_features=q_features, obs=obs, mean_fn=mean_fn, future_eps=future_eps)
        return self._pathwise_value(mean, log_std, eps, q_features=q_features)

    def _pathwise_value(self, mean, log_std, eps, **kwargs) -> th.Tensor:
        """:func:`hybrid_pg.surrogates.pathwise_value` bound to this algorithm's critic or model."""
        if self._resolved_source == "model":
            return pathwise_value(
                mean,
                log_std,
                eps,
                clip_action=self.policy.clip_action,
                model=self._dynamics_model,
                obs=kwargs["obs"],
                mean_fn=kwargs["mean_fn"],
                value_fn=lambda o: self._frozen_value(self.policy.extract_features(o, self.policy.vf_features_extractor)),
                future_eps=kwargs["future_eps"],
                gamma=self.gamma,
                horizon=self.model_horizon,
            )
        return pathwise_value(
            mean,
            log_std,
            eps,
            clip_action=self.policy.clip_action,
            advantage=self._frozen_advantage,
            q_features=kwargs["q_features"],
        )

    def _rollout_moments(self, pi_features, q_features, raw_obs, eps, actions, adv, future_eps, scale):
        """Per-group moments of the per-sample parameter gradients of both surrogates.

        MLP heads with one-step surrogates use the exact outer-product factorisation (two backward
        passes); anything else (k-step model returns, heads with non-Linear weights) the general
        ``torch.func`` path. Both give the same numbers (tested). Returns None when the gradients
        are not finite (e.g. a diverged critic).
        """
        one_step = self._resolved_source != "model" or self.model_horizon == 1
        try:
            if one_step and supports_outer_product_moments(self._actor_head):
                return outer_product_group_moments(
                    self._actor_head,
                    pi_features,
                    self.policy.log_std,
                    path_fn=lambda m, s: scale
                    * self._pathwise_value(m, s, eps, q_features=q_features, obs=raw_obs, mean_fn=None, future_eps=future_eps),
                    score_fn=lambda m, s: adv * gaussian_log_prob(m, s, actions),
                )
            return self._rollout_moments_vmap(pi_features, q_features, raw_obs, eps, actions, adv, future_eps, scale)
        except ValueError:
            # BatchMoments rejects non-finite gradients
            return None

    def _rollout_moments_vmap(self, pi_features, q_features, raw_obs, eps, actions, adv, future_eps, scale):
        extract = lambda o: self.policy.extract_features(o, self.policy.pi_features_extractor)  # noqa: E731
        fn = single_sample_surrogates(
            self._actor_head,
            extract_features=extract,
            pathwise=lambda m, s, e, **kw: self._pathwise_value(m, s, e, **kw),
            log_prob=gaussian_log_prob,
        )
        scale_t = th.tensor(scale, dtype=th.float32, device=self.device)
        return per_sample_group_moments(
            lambda hp, ls, *sample: fn(hp, ls, *sample, scale_t),
            self._actor_head,
            self.policy.log_std,
            [pi_features, q_features, raw_obs, eps, actions, adv, future_eps],
            chunk_size=self.stats_chunk_size,
        )

    # ------------------------------------------------------------------------------------------
    # logging
    # ------------------------------------------------------------------------------------------

    def _log_update(self, logs, lam, moments, stats_ok, stats_time, update_time, clip_range) -> None:
        record = self.logger.record
        raw_logs = logs
        logs = {k: th.stack(v).mean().item() for k, v in logs.items() if v}
        for key in ("policy_loss", "value_loss", "q_loss", "approx_kl", "clip_fraction"):
            if key in logs:
                record(f"train/{key}", logs[key])
        if "path_dropped" in logs:
            record("hybrid/pathwise_dropped_fraction", logs["path_dropped"])
        record("hybrid/critic_diverged_steps", len(raw_logs["q_diverged"]))
        record("hybrid/skipped_steps", len(raw_logs["skipped_steps"]))
        if "entropy" in logs:
            record("train/entropy_loss", -logs["entropy"])
        if clip_range is not None:
            record("train/clip_range", clip_range)
        record("train/explained_variance", explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten()))
        record("train/n_updates", self._n_updates, exclude="tensorboard")
        record("train/std", th.exp(self.policy.log_std).mean().item())

        record("hybrid/lambda", lam["global"] if self.lambda_groups == "global" else float("nan"))
        record("hybrid/lambda_mean", lam["mean"])
        record("hybrid/lambda_log_std", lam["log_std"])
        record("hybrid/stats_valid", float(stats_ok))
        record("hybrid/stats_time_fraction", stats_time / max(stats_time + update_time, 1e-12))
        window = self.lambda_windows["global"]
        win_est = window.estimate(batch_size=self._gradient_batch_size())
        record("hybrid/lambda_window", win_est.lam)
        record("hybrid/window_size", len(window))
        if window.detector is not None:
            record("hybrid/change_alarm", float(window.last_alarm is not None))
            record("hybrid/change_alarms_total", window.detector.n_alarms)
        record("hybrid/effective_sample_size", window.effective_sample_size)
        health = window.between_within()
        record("hybrid/window_f_path", health["path"])
        record("hybrid/window_f_score", health["score"])
        if moments is None:
            return
        batch = self._rollout_estimate(moments["global"])
        record("hybrid/lambda_batch", batch.lam)
        record("hybrid/var_path", batch.var_path)
        record("hybrid/var_score", batch.var_score)
        record("hybrid/cov", batch.cov)
        record("hybrid/corr", batch.corr)
        record("hybrid/bias_sq", batch.bias_sq)
        applied = _applied_variance(moments, lam)
        record("hybrid/var_applied", applied)
        record("hybrid/variance_ratio_vs_score", applied / batch.var_score if batch.var_score > 0 else float("nan"))
        record("hybrid/variance_reduction", win_est.variance_reduction)
        if win_est.var_score > 0:
            record("hybrid/variance_reduction_vs_score", 1.0 - win_est.var_hybrid / win_est.var_score)
        # how much one weight per group would lower this rollout's variance vs one global weight
        per_group = [pooled_estimate([moments[g]], bounds=self.lambda_bounds) for g in GROUPS]
        best_global = pooled_estimate([moments["global"]], bounds=self.lambda_bounds).var_hybrid
        if best_global > 0:
            record("hybrid/per_group_gain", 1.0 - sum(p.var_hybrid for p in per_group) / best_global)

    def collect_rollouts(self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int) -> bool:
        # a non-stationary env's clock when the rollout starts: the model source and the oracle's
        # env copy use the rollout's midpoint (see _rollout_clock)
        self._rollout_clock_start = env_clock(env)
        return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)

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


def _applied_variance(moments: Dict[str, Any], lam: Dict[str, float]) -> float:
    """This rollout's per-sample variance of the gradient actually applied (sum over groups)."""
    total = 0.0
    for g in GROUPS:
        est = pooled_estimate([moments[g]], bounds=None)
        total += mixed_variance(lam[g], est.var_path, est.var_score, est.cov)
    return total


def _minibatches(n: int, batch_size: int, device: th.device):
    perm = th.as_tensor(np.random.permutation(n), device=device)
    for start in range(0, n, batch_size):
        yield perm[start : start + batch_size]


def _index_obs(obs, idx):
    if isinstance(obs, dict):
        return {k: v[idx] for k, v in obs.items()}
    return obs[idx]


def _check_action_space(action_space: spaces.Space) -> None:
    if not isinstance(action_space, spaces.Box):
        raise ValueError(
            f"HybridPG trains Gaussian policies on continuous (Box) action spaces; got {action_space}. "
            "Use A2C/PPO for discrete actions."
        )
    if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
        raise ValueError(
            "HybridPG needs finite action bounds (the pathwise term clips actions to the Box like "
            f"SB3 does before env.step); got low={action_space.low}, high={action_space.high}"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _validate_hyperparameters(**hp: Any) -> None:
    """Fail at construction, naming the parameter, before any env or network is built."""

    def bad(name: str, why: str) -> None:
        raise ValueError(f"{name}={hp[name]!r}: {why}")

    def int_at_least(name: str, low: int) -> None:
        if not _is_int(hp[name]) or hp[name] < low:
            bad(name, f"must be an integer >= {low}")

    def positive_number(name: str, allow_none: bool = False, allow_zero: bool = False) -> None:
        value = hp[name]
        if value is None and allow_none:
            return
        # `not value > 0` is also true for NaN
        if not _is_number(value) or not math.isfinite(value) or not (value > 0 or (allow_zero and value == 0)):
            bad(name, "must be a finite number " + (">= 0" if allow_zero else "> 0") + (" (or None)" if allow_none else ""))

    for name in ("n_steps", "n_epochs", "lambda_window", "model_horizon", "stats_chunk_size", "bias_horizon"):
        int_at_least(name, 1)
    if hp["batch_size"] is not None:
        int_at_least("batch_size", 1)
    int_at_least("lambda_warmup", 0)
    int_at_least("oracle_freq", 0)
    int_at_least("oracle_samples", 2)
    if hp.get("oracle_frozen_clock") is not None:
        int_at_least("oracle_frozen_clock", 0)
        if not hp["oracle_freq"]:
            bad("oracle_frozen_clock", "needs the oracle on (oracle_freq > 0)")
    for name in ("gamma", "gae_lambda"):
        if not _is_number(hp[name]) or not 0.0 <= hp[name] <= 1.0:
            bad(name, "must lie in [0, 1]")
    positive_number("max_grad_norm")
    for name in ("vf_coef", "q_coef"):
        positive_number(name, allow_zero=True)
    if not _is_number(hp["ent_coef"]) or not math.isfinite(hp["ent_coef"]):
        bad("ent_coef", "must be a finite number")
    if not isinstance(hp["bias_correction"], (bool, np.bool_)):
        bad("bias_correction", "must be True or False")
    if hp["estimator"] not in ESTIMATORS:
        bad("estimator", f"must be one of {ESTIMATORS}")
    if hp["pathwise_source"] not in PATHWISE_SOURCES:
        bad("pathwise_source", f"must be one of {PATHWISE_SOURCES}")
    if hp["lambda_mode"] not in WINDOW_MODES:
        bad("lambda_mode", f"must be one of {WINDOW_MODES}")
    decay = hp["lambda_decay"]
    if decay is not None:
        if hp["lambda_mode"] != "ema":
            bad("lambda_decay", "only applies to lambda_mode='ema'")
        if not _is_number(decay) or not 0.0 <= decay < 1.0:
            bad("lambda_decay", "must lie in [0, 1)")
    detector = hp["lambda_detector"]
    if detector is not None:
        if hp["lambda_mode"] != "adaptive":
            bad("lambda_detector", "only applies to lambda_mode='adaptive'")
        try:
            CusumDetector(2, **detector)
        except (TypeError, ValueError) as exc:
            bad("lambda_detector", str(exc))
    if hp["lambda_groups"] not in LAMBDA_GROUPS:
        bad("lambda_groups", f"must be one of {LAMBDA_GROUPS}")
    bounds = hp["lambda_bounds"]
    if bounds is not None:
        try:
            _check_bounds(bounds)
        except (ValueError, TypeError) as exc:
            bad("lambda_bounds", str(exc))
        if not (0.0 <= bounds[0] <= bounds[1] <= 1.0):
            bad("lambda_bounds", "must satisfy 0 <= lo <= hi <= 1 (or None for the unclipped weight)")
    if hp["fixed_lambda"] is not None:
        if hp["estimator"] != "hybrid":
            bad("fixed_lambda", f"only applies to estimator='hybrid' (got estimator={hp['estimator']!r})")
        if not (_is_number(hp["fixed_lambda"]) and 0.0 <= hp["fixed_lambda"] <= 1.0):
            bad("fixed_lambda", "must be a number in [0, 1]")
    if hp["use_sde"]:
        bad("use_sde", "gSDE is not supported: the pathwise term needs the per-step Gaussian noise eps")
    if not callable(hp["clip_range"]):
        positive_number("clip_range", allow_none=True)
    positive_number("target_kl", allow_none=True)
    limit = hp["pathwise_kl_limit"]
    if not (limit is None or limit == "auto" or (_is_number(limit) and limit > 0)):
        bad("pathwise_kl_limit", f"must be 'auto', None or a number > 0, got {limit!r}")
