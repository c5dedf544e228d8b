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

Prints mean |lam applied - reference| after the warm-up, per problem and rule.

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
from hybrid_pg_envs.coupled_bandit import CoupledBanditEnv, CoupledBanditModel

N_ENVS, N_STEPS, WARMUP = 4, 256, 8
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
    """After each update (at the next rollout's start, before SB3 dumps the logs): applied lam and
    the oracle's moments."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def _grab(self):
        v = self.model.logger.name_to_value
        if "hybrid/oracle_var_path" in v:
            self.rows.append((self.model.last_lambda["global"], v["hybrid/oracle_var_path"], v["hybrid/oracle_var_score"], v["hybrid/oracle_cov"], _mean_grad_sq(self.model)))

    def _on_rollout_start(self):
        self._grab()

    def _on_training_end(self):
        self._grab()

    def _on_step(self):
        return True


def _mean_grad_sq(model) -> float:
    """||d mu / d theta||^2 at the bandit's (constant) observation, over the actor head."""
    obs = th.as_tensor(model.rollout_buffer.observations.reshape(-1, *model.observation_space.shape)[:1], device=model.device).float()
    features = model.policy.extract_features(obs, model.policy.pi_features_extractor)
    head = getattr(model, "actor_head", None) or model._actor_head  # (pre-refactor code: _actor_head)
    mean = head(features)[0, 0]
    grads = th.autograd.grad(mean, list(head.parameters()))
    return float(sum((g.double() ** 2).sum() for g in grads))


def run(problem: str, rule: str, seed: int, updates: int) -> dict:
    """One training run; its mean |lam - reference| (``error``), mean signed lam - reference
    (``signed``: the lag shows as a sign), and the per-update series."""
    th.set_num_threads(1)
    if problem == "biased":
        make = lambda: _BiasedEnv(c=1.5)  # noqa: E731
    elif problem == "drifting":
        schedules = {"m": {"kind": "linear", "start": -0.5, "end": 0.5, "duration": updates * N_STEPS * N_ENVS}}
        make = lambda: gym.make("hybrid_pg/DriftingCoupledBandit-v0", c=1.5, schedules=schedules, steps_per_tick=N_ENVS)  # noqa: E731
    else:
        make = lambda: CoupledBanditEnv(m=-0.5, c=1.5)  # noqa: E731
    env = DummyVecEnv([make] * N_ENVS)
    model = HybridPG(
        "MlpPolicy", env, n_steps=N_STEPS, batch_size=256, n_epochs=4, learning_rate=3e-3, gamma=0.0, gae_lambda=1.0,
        pathwise_source="model", lambda_warmup=2, bias_correction=True, normalize_advantage=False,
        oracle_freq=1, oracle_samples=4096, oracle_env=make, seed=seed, device="cpu",
    )
    bias_rule, _, extrapolation = rule.partition("-")  # e.g. "ucl-trend": UCL bias rule, trend on
    for window in model.lambda_windows.values():
        window.bias_rule = bias_rule
        if extrapolation:
            window.trend = extrapolation == "trend"
    rec = _Record()
    model.learn(updates * N_STEPS * N_ENVS, callback=rec)
    B = model._gradient_batch_size()
    applied, refs = [], []
    for lam, vp, vm, cov, grad_sq in rec.rows:
        bias_sq = KAPPA**2 * grad_sq if problem == "biased" else 0.0
        refs.append(lambda_from_moments(vp, vm, cov, bias_sq=bias_sq, batch_size=B).lam)
        applied.append(float(lam))
    diff = np.subtract(applied, refs)[WARMUP:]
    return {
        "error": float(np.mean(np.abs(diff))) if diff.size else math.nan,
        "signed": float(np.mean(diff)) if diff.size else math.nan,
        "applied": applied,
        "reference": refs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--problems", nargs="+", default=["stationary", "drifting", "biased"])
    parser.add_argument("--rules", nargs="+", default=["point", "ucl"], help="weight rules to compare: point | ucl, optionally -level or -trend (the window's "
                        "extrapolation; default: the library's); the pre-refactor code ignores them")
    parser.add_argument("--json", default=None, help="write every run's result (series included) here")
    args = parser.parse_args()
    print(f"mean |lam - reference| after {WARMUP} updates ({args.updates} updates of {N_ENVS * N_STEPS}, seeds {args.seeds});")
    print("cells: mean over seeds [min, max] (mean signed lam - reference)")
    print(f"{'problem':<12}" + "".join(f"{r:>34}" for r in args.rules))
    results = {}
    for problem in args.problems:
        cells = []
        for rule in args.rules:
            runs = [run(problem, rule, s, args.updates) for s in args.seeds]
            results[f"{problem}/{rule}"] = {"seeds": args.seeds, "runs": runs}
            errs, signed = [r["error"] for r in runs], [r["signed"] for r in runs]
            cells.append(f"{np.mean(errs):.3f} [{min(errs):.3f}, {max(errs):.3f}] ({np.mean(signed):+.3f})")
        print(f"{problem:<12}" + "".join(f"{c:>34}" for c in cells), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh)


if __name__ == "__main__":
    main()
