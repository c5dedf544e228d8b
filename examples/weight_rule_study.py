"""Old vs new bias-aware weight rule on the coupled bandit (seconds to minutes on one core).

Runs HybridPG with the env's differentiable model as the pathwise source and an oracle (a fresh
large batch at the current policy every update), with the OLD rule (bias_rule="point": B times the
noise-corrected point estimate of ||b||^2, for any source) and the NEW default (WeightRule: no
bias term for an exact model, the bias' upper confidence limit for a learned/mis-specified one),
on three problems:

* ``stationary``: CoupledBandit-v0, exact model; reference lam*_var from the oracle's moments.
* ``drifting``: DriftingCoupledBandit-v0 (target m drifts linearly), exact model; same reference.
* ``biased``: CoupledBandit-v0 with a mis-specified model r~ = r + kappa z (declared
  ``exact = False``): the pathwise bias in parameter space is exactly kappa * d mu / d theta, so
  the MSE-optimal reference is (Var_M - Cov) / (D + B kappa^2 ||d mu/d theta||^2) with the oracle's
  variances and that known bias.

The reference is computed in closed form (:mod:`hybrid_pg.ground_truth.coupled_bandit`) from the
policy each update trains (theta_old: its mean, log_std, critic baseline and d mu / d theta at the
bandit's constant observation), so it carries no sampling noise; the weight from the oracle's
sampled moments is reported too (``o``). Prints mean |lam applied - reference| after the warm-up,
per problem and rule, with the spread over seeds.

    python examples/weight_rule_study.py [--updates 30] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import math

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv

import hybrid_pg_envs  # noqa: F401  (registers the envs)
from hybrid_pg import HybridPG
from hybrid_pg.estimator import lambda_from_moments

try:
    from hybrid_pg.ground_truth.coupled_bandit import bandit_moments
except ImportError:  # the pre-refactor code kept the closed form beside the env
    from hybrid_pg_envs.coupled_bandit import bandit_moments
from hybrid_pg_envs.coupled_bandit import CoupledBanditEnv, CoupledBanditModel

N_ENVS, N_STEPS, WARMUP = 4, 256, 8
C = 1.5
#: the model's reward bias. With kappa = 0.5, B kappa^2 ||d mu/d theta||^2 dwarfs D and the
#: MSE-optimal weight is ~0 (any rule that says "0" scores perfectly); at 0.05 it is an interior
#: weight, so the row tests whether the rule finds it.
KAPPA = 0.05


class _BiasedModel(CoupledBanditModel):
    exact = False  # tells HybridPG's weight rule to treat this source as learned

    def __init__(self, kappa: float, **kw):
        super().__init__(**kw)
        self.kappa = kappa

    def step(self, obs, action):
        next_obs, reward = super().step(obs, action)
        return next_obs, reward + self.kappa * action[..., 0].to(reward)


class _BiasedEnv(CoupledBanditEnv):
    def get_differentiable_model(self):
        return _BiasedModel(KAPPA, m=self.m, c=self.c, action_bound=self.action_bound)


class _Record(BaseCallback):
    """Per update: the policy it trains (at rollout end, i.e. theta_old) for the closed-form
    reference, then the applied lam and the oracle's moments (at the next rollout's start, before
    SB3 dumps the logs)."""

    def __init__(self):
        super().__init__()
        self.rows = []
        self.policies = []
        self._m_start = None

    def _grab(self):
        v = self.model.logger.name_to_value
        if "hybrid/oracle_var_path" in v:
            self.rows.append(
                (self.model.last_lambda["global"], v["hybrid/oracle_var_path"], v["hybrid/oracle_var_score"], v["hybrid/oracle_cov"])
            )

    def _on_rollout_start(self):
        self._grab()
        self._m_start = getattr(self.model, "_env_params", {}).get("m")

    def _on_rollout_end(self):
        m_end = getattr(self.model, "_env_params", {}).get("m")
        m_mid = None if m_end is None else 0.5 * (m_end + (m_end if self._m_start is None else self._m_start))
        self.policies.append((*_policy_at_obs(self.model), m_mid))

    def _on_training_end(self):
        self._grab()

    def _on_step(self):
        return True


def _policy_at_obs(model):
    """(mu, log_std, V, ||d mu / d theta||^2) at the bandit's (constant) observation."""
    obs = th.as_tensor(model.rollout_buffer.observations.reshape(-1, *model.observation_space.shape)[:1], device=model.device).float()
    head = getattr(model, "actor_head", None) or model._actor_head  # (pre-refactor code: _actor_head)
    features = model.policy.extract_features(obs, model.policy.pi_features_extractor)
    mean = head(features)[0, 0]
    grads = th.autograd.grad(mean, list(head.parameters()))
    mean = mean.detach()
    with th.no_grad():
        value = float(model.policy.predict_values(obs)[0, 0])
    return float(mean), model.policy.log_std[0].item(), value, float(sum((g.double() ** 2).sum() for g in grads))


def closed_form_reference(problem: str, mu: float, log_std: float, value: float, grad_sq: float, m: float, batch_size: float) -> float:
    """The weight the rule should give, from the bandit's closed-form moments at theta_old.

    The actor's parameter gradients are g_mu * d mu/d theta (the mean network) and g_log_std (its
    own parameter), so their trace moments are the (mu, log_std) moments under the metric
    diag(||d mu/d theta||^2, 1); the score estimator's baseline is the critic's V (gamma = 0).
    Exact model: the variance-optimal lam*; biased model: bias kappa d mu/d theta, so the
    MSE-optimal (Var_M - Cov) / (D + B kappa^2 ||d mu/d theta||^2)."""
    bm = bandit_moments(mu, log_std, m=m, c=C, baseline=value, metric=(grad_sq, 1.0))
    bias_sq = KAPPA**2 * grad_sq if problem == "biased" else 0.0
    return lambda_from_moments(bm.var_path, bm.var_score, bm.cov, bias_sq=bias_sq, batch_size=batch_size).lam


def run(problem: str, rule: str, seed: int, updates: int, window: int = 8) -> dict:
    """One training run; its mean |lam - reference| (``error``), mean signed lam - reference
    (``signed``: the lag shows as a sign), and the per-update series."""
    th.set_num_threads(1)
    if problem == "biased":
        make = lambda: _BiasedEnv(m=-0.5, c=C)  # noqa: E731
    elif problem == "drifting":
        schedules = {"m": {"kind": "linear", "start": -0.5, "end": 0.5, "duration": updates * N_STEPS * N_ENVS}}
        make = lambda: gym.make("hybrid_pg/DriftingCoupledBandit-v0", c=C, schedules=schedules, steps_per_tick=N_ENVS)  # noqa: E731
    else:
        make = lambda: CoupledBanditEnv(m=-0.5, c=C)  # noqa: E731
    env = DummyVecEnv([make] * N_ENVS)
    model = HybridPG(
        "MlpPolicy",
        env,
        n_steps=N_STEPS,
        batch_size=256,
        n_epochs=4,
        learning_rate=3e-3,
        gamma=0.0,
        gae_lambda=1.0,
        pathwise_source="model",
        lambda_warmup=2,
        bias_correction=True,
        normalize_advantage=False,
        oracle_freq=1,
        oracle_samples=4096,
        oracle_env=make,
        seed=seed,
        device="cpu",
        **({} if window == 8 else {"lambda_window": window}),  # (the pre-refactor code knows 8 only as its default)
    )
    bias_rule, _, extrapolation = rule.partition("-")  # e.g. "ucl-trend": UCL bias rule, trend on
    for window in model.lambda_windows.values():
        window.bias_rule = bias_rule
        if extrapolation:
            window.trend = extrapolation == "trend"
    rec = _Record()
    model.learn(updates * N_STEPS * N_ENVS, callback=rec)
    B = model._gradient_batch_size()
    applied, closed, oracle = [], [], []
    for (lam, vp, vm, cov), (mu, log_std, value, grad_sq, m) in zip(rec.rows, rec.policies):
        applied.append(float(lam))
        closed.append(closed_form_reference(problem, mu, log_std, value, grad_sq, -0.5 if m is None else m, B))
        bias_sq = KAPPA**2 * grad_sq if problem == "biased" else 0.0
        oracle.append(lambda_from_moments(vp, vm, cov, bias_sq=bias_sq, batch_size=B).lam)
    diff = np.subtract(applied, closed)[WARMUP:]
    diff_oracle = np.subtract(applied, oracle)[WARMUP:]
    return {
        "error": float(np.mean(np.abs(diff))) if diff.size else math.nan,
        "signed": float(np.mean(diff)) if diff.size else math.nan,
        "error_vs_oracle": float(np.mean(np.abs(diff_oracle))) if diff_oracle.size else math.nan,
        "jitter": float(np.std(np.diff(applied[WARMUP:]), ddof=1)) if len(applied) > WARMUP + 2 else math.nan,
        "applied": applied,
        "reference": closed,
        "oracle_reference": oracle,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--problems", nargs="+", default=["stationary", "drifting", "biased"])
    parser.add_argument(
        "--rules",
        nargs="+",
        default=["point", "ucl", "posterior"],
        help="weight rules to compare: point | ucl | posterior, optionally -level or -trend (the window's "
        "extrapolation; default: the library's); the pre-refactor code ignores them",
    )
    parser.add_argument("--window", type=int, default=8, help="lambda_window (rollouts the weight pools)")
    parser.add_argument("--json", default=None, help="write every run's result (series included) here")
    args = parser.parse_args()
    print(
        f"mean |lam - reference| after {WARMUP} updates ({args.updates} updates of {N_ENVS * N_STEPS}, window {args.window}, seeds {args.seeds});"
    )
    print("reference: closed-form weight at theta_old; cells: mean over seeds [min, max] (mean signed lam - reference)")
    print("o: mean |lam - weight from the oracle's sampled moments| (the old reference, noisy near lam = 1)")
    print(f"{'problem':<12}" + "".join(f"{r:>44}" for r in args.rules))
    results = {}
    for problem in args.problems:
        cells = []
        for rule in args.rules:
            runs = [run(problem, rule, s, args.updates, args.window) for s in args.seeds]
            results[f"{problem}/{rule}"] = {"seeds": args.seeds, "runs": runs}
            errs, signed = [r["error"] for r in runs], [r["signed"] for r in runs]
            vs_oracle = np.mean([r["error_vs_oracle"] for r in runs])
            cells.append(f"{np.mean(errs):.3f} [{min(errs):.3f}, {max(errs):.3f}] ({np.mean(signed):+.3f}) o{vs_oracle:.3f} ")
        print(f"{problem:<12}" + "".join(f"{c:>44}" for c in cells), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh)


if __name__ == "__main__":
    main()
