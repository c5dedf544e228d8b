"""The gradient audit: every estimator of a checkpoint against the true-gradient reference.

At a checkpoint (a saved model and its VecNormalize statistics) the audit draws ``rollouts``
independent rollouts of the algorithm's own size (each from its own reset seed, after a random
burn-in so the states look like a training rollout's), and on each computes, in reward units (the
advantage normaliser undone, so every estimator and the reference share one scale):

* ``score``: the score-function gradient with the run's GAE advantages (what the REINFORCE cell
  applies), ``pathwise``: the run's own pathwise source, ``mix``: lam * pathwise + (1 - lam) *
  score at the lam the run applied last (per group), and ``pathwise_<name>`` for each extra source
  (e.g. MuJoCo's derivatives at a checkpoint trained with the advantage head);
* the reference (:mod:`hybrid_pg.reference_gradient`, ``visitation`` weighting) at every
  ``stride``-th state of the same rollout: paired with the estimators, so the between-state noise
  they share cancels from their differences.

Per estimator and parameter group (``mean``, ``log_std``, ``all``), over the rollouts:

* ``cos_single``: the mean cosine of one rollout's estimate with the reference (leave-one-out: the
  reference of the other rollouts, independent of this one), raw and corrected for the reference's
  reliability (``cos_single_corrected``); ``cos_mean``: the cosine of the rollout-averaged estimate;
* ``rel_bias``: ||E g - g_ref|| / ||g_ref||, debiased for the noise of both averages (the squared
  norm of a mean of R paired differences minus trace(Cov) / R), with a bootstrap CI over rollouts;
* ``proj``: the error's component along the reference, (E g - g_ref) . g_ref / ||g_ref||^2
  (-1: nothing of the true direction; 0: the right length along it);
* ``rel_var``: trace Cov(g) of one rollout / ||g_ref||^2; ``rel_mse`` = rel_bias^2 + rel_var;
* ``lam_mse`` (the pathwise estimators): the weight that minimises E||lam g_P + (1 - lam) g_M -
  g_ref||^2 for one rollout, the weight the rule should have picked.

Strata (MuJoCo envs): the same statistics restricted to the samples whose step changes the set of
active contacts (``contact_change``) and to the others (``steady``): estimator and reference both
averaged over the stratum's states. Critic checks at the reference states: the correlation and
the slope of the source's advantage (the advantage head's, in reward units) against the Monte
Carlo returns' differences, and the value head's error against the Monte Carlo value.

``python examples/gradient_audit.py configs/audit/<question>.yaml`` trains the runs with
checkpoints (the grid's settings and seeds: they reproduce the grid's runs), audits every
checkpoint (one CSV each, written atomically: resumable) and writes the report. With
``compare_with: {audit: <another audit's output folder>, run: <its run label>}`` the report also
pairs each checkpoint with that run's at the same seed and step (a changed critic against the old one:
``configs/audit/hopper_layer_norm.yaml``).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch as th
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hybrid_pg.experiments.config import section_error
from hybrid_pg.experiments.run_files import write_atomically
from hybrid_pg.online_signals import WINDOW_SIGNAL_KEYS
from hybrid_pg.reference_gradient import (
    GROUPS,
    Normalisation,
    clone_env,
    corrected_cosine,
    cosine,
    flat_group_gradients,
    group_parameters,
    hold_clock,
    monte_carlo_returns,
    sample_actions,
    score_contributions,
    spearman_brown,
    unit_gradients,
)
from hybrid_pg.rollout import collect_rollout, prepare_batch

CHECKPOINT_DIR = "checkpoints"
AUDIT_DIR = "audit"


# ------------------------------------------------------------------------------------------------
# settings
# ------------------------------------------------------------------------------------------------


class ReferenceSettings(BaseModel):
    """The reference's budget at each checkpoint (the audit file's ``reference`` section)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    rollouts: int = Field(12, ge=4, description="independent rollouts of the run's size per checkpoint")
    states_per_rollout: int = Field(32, ge=1, description="states of each rollout that get the reference")
    actions: int = Field(4, ge=2, description="actions per reference state")
    tail_weight: float = Field(0.05, gt=0.0, lt=1.0, description="discount after which a return runs on for a geometric tail")
    burn_in: int = Field(1000, ge=0, description="most env steps of a rollout's random burn-in")
    bootstrap: int = Field(2000, ge=100, description="bootstrap resamples of the bias CIs")
    #: actions in antithetic pairs (hybrid_pg.reference_gradient.score_contributions): an even
    #: ``actions`` >= 4
    antithetic: bool = Field(True, description="actions in antithetic pairs")

    @model_validator(mode="after")
    def _even_pairs(self) -> "ReferenceSettings":
        if self.antithetic and (self.actions < 4 or self.actions % 2):
            raise ValueError(f"actions must be an even number >= 4 with antithetic pairs, got {self.actions}")
        return self


@dataclass
class AuditRunEntry:
    """A cell of the grid (``env`` x ``estimator``), or a run config file (``config``, e.g. a
    committed run's config.yaml, with ``set`` overrides) audited under the name ``label``."""

    env: str
    estimator: str
    seeds: Tuple[int, ...]
    config: Optional[str] = None
    label: Optional[str] = None
    overrides: Tuple[str, ...] = ()


@dataclass
class AuditConfig:
    name: str
    grid: str
    output_dir: str
    runs: Tuple[AuditRunEntry, ...]
    checkpoints: Tuple[int, ...]
    reference: ReferenceSettings = field(default_factory=lambda: ReferenceSettings())
    extra_sources: Tuple[str, ...] = ()
    seed: int = 0
    #: train each run's whole budget (its final return tells a good seed from a bad one), or stop
    #: at the last checkpoint
    train_full: bool = True
    #: another audit's output folder and one of its run labels: the report pairs this audit's
    #: checkpoints with that run's at the same seed and step (e.g. a changed critic against the old one)
    compare_with: Optional[Tuple[str, str]] = None


_KNOWN = ("name", "grid", "output_dir", "runs", "checkpoints", "reference", "extra_sources", "seed", "train_full", "compare_with")


def _compare_with(path: str, raw: Any) -> Optional[Tuple[str, str]]:
    """``compare_with: {audit: <output folder>, run: <label>}`` (None when absent)."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"audit", "run"} or not all(isinstance(v, str) and v for v in raw.values()):
        raise ValueError(
            f"{path}: compare_with must be a mapping {{audit: <an audit's output folder>, run: <one of its run labels>}}, got {raw!r}"
        )
    return str(raw["audit"]), str(raw["run"])


def load_audit_config(path: str) -> AuditConfig:
    """Read and check an audit file (see configs/audit/); errors name the key."""
    raw = yaml.safe_load(Path(path).read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: an audit file is a mapping")
    unknown = sorted(set(raw) - set(_KNOWN))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; known: {list(_KNOWN)}")
    for key in ("runs", "checkpoints"):
        if key not in raw:
            raise ValueError(f"{path}: '{key}' is required")
    checkpoints = raw["checkpoints"]
    if not isinstance(checkpoints, list) or not checkpoints or not all(isinstance(c, int) and c > 0 for c in checkpoints):
        raise ValueError(f"{path}: checkpoints must be a non-empty list of positive env-step counts, got {checkpoints!r}")
    runs = []
    for i, entry in enumerate(raw["runs"] or []):
        grid_entry = isinstance(entry, dict) and set(entry) == {"env", "estimator", "seeds"}
        file_entry = isinstance(entry, dict) and {"config", "label", "seeds"} <= set(entry) <= {"config", "label", "seeds", "set"}
        if not (grid_entry or file_entry):
            raise ValueError(f"{path}: runs[{i}] must be a mapping with env, estimator, seeds (a grid cell) or config, label, seeds[, set]")
        seeds = entry["seeds"]
        if not isinstance(seeds, list) or not all(isinstance(s, int) and s >= 0 for s in seeds):
            raise ValueError(f"{path}: runs[{i}].seeds must be a list of integers >= 0")
        if grid_entry:
            runs.append(AuditRunEntry(str(entry["env"]), str(entry["estimator"]), tuple(seeds)))
        else:
            overrides = entry.get("set") or []
            if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
                raise ValueError(f"{path}: runs[{i}].set must be a list of 'key=value' overrides")
            runs.append(AuditRunEntry("", "", tuple(seeds), str(entry["config"]), str(entry["label"]), tuple(overrides)))
    if not runs:
        raise ValueError(f"{path}: runs must not be empty")
    reference = raw.get("reference") or {}
    if not isinstance(reference, dict):
        raise ValueError(f"{path}: reference must be a mapping")
    try:
        ref = ReferenceSettings(**reference)
    except ValidationError as exc:
        raise ValueError(f"{path}: {section_error(exc, 'reference', ReferenceSettings)}") from None
    name = raw.get("name") or Path(path).stem
    return AuditConfig(
        name=name,
        grid=str(raw.get("grid") or ""),
        output_dir=str(raw.get("output_dir") or f"results/audit_{name}"),
        runs=tuple(runs),
        checkpoints=tuple(sorted(set(checkpoints))),
        reference=ref,
        extra_sources=tuple(raw.get("extra_sources") or ()),
        seed=int(raw.get("seed", 0)),
        train_full=bool(raw.get("train_full", True)),
        compare_with=_compare_with(path, raw.get("compare_with")),
    )


def audit_runs(config: AuditConfig) -> List[Tuple[str, Dict[str, Any]]]:
    """(label, resolved run config) of every run the audit covers, from the grid's cells."""
    from hybrid_pg.experiments.ablate import load_ablation
    from hybrid_pg.experiments.config import load_config

    by_key: Dict[Tuple[str, int], Dict[str, Any]] = {}
    if any(entry.config is None for entry in config.runs):
        if not config.grid:
            raise ValueError("runs given as env x estimator need the audit file's 'grid' (an ablation file)")
        ablation = load_ablation(config.grid, seeds=sorted({s for r in config.runs for s in r.seeds}))
        by_key = {(label, cfg["train"]["seed"]): cfg for label, cfg in ablation.runs()}
    out = []
    for entry in config.runs:
        if entry.config is not None:
            for seed in entry.seeds:
                overrides = [*entry.overrides, f"train.seed={seed}"]
                out.append((str(entry.label), load_config(entry.config, overrides=overrides, check_environment=False)))
            continue
        label = f"{entry.env}__{entry.estimator}"
        for seed in entry.seeds:
            if (label, seed) not in by_key:
                labels = sorted({lab for lab, _ in by_key})
                raise ValueError(f"the grid {config.grid} has no cell {label!r} (cells: {labels})")
            out.append((label, by_key[(label, seed)]))
    return out


# ------------------------------------------------------------------------------------------------
# training with checkpoints
# ------------------------------------------------------------------------------------------------


def checkpoint_paths(run_dir: Path, step: int) -> Tuple[Path, Path]:
    folder = run_dir / CHECKPOINT_DIR
    return folder / f"step_{step}.zip", folder / f"vecnormalize_{step}.pkl"


def _checkpoint_callback(run_dir: Path, steps: Sequence[int], stop_after_last: bool) -> Any:
    from stable_baselines3.common.callbacks import BaseCallback

    class SaveAt(BaseCallback):
        """Saves the model (and VecNormalize) at the first rollout end at or after each step (the
        policy saved is the one that collected that rollout); with ``stop_after_last`` training
        stops after the last one."""

        def __init__(self) -> None:
            super().__init__()
            self.todo, self.done = list(steps), False

        def _on_step(self) -> bool:
            return not self.done

        def _on_rollout_end(self) -> None:
            while self.todo and self.num_timesteps >= self.todo[0]:
                step = self.todo.pop(0)
                model_path, norm_path = checkpoint_paths(run_dir, step)
                model_path.parent.mkdir(parents=True, exist_ok=True)
                self.model.save(model_path)
                norm = self.model.get_vec_normalize_env()
                if norm is not None:
                    norm.save(str(norm_path))
            self.done = stop_after_last and not self.todo

    return SaveAt()


def train_with_checkpoints(label: str, config: Mapping[str, Any], out: Path, steps: Sequence[int], full: bool = True) -> Path:
    """The run of ``config`` with checkpoints at ``steps`` (trained once: a complete run is reused).

    ``full``: train the grid's whole budget, so that the run's own final return says whether it
    is a good or a bad seed. Retrained runs reproduce the grid's exactly only on the same machine
    and library builds: the simulator's floating point differs between CPUs in the last digits and
    a chaotic task (Hopper) amplifies that within a few updates."""
    from hybrid_pg.experiments.ablate import RUNS_SUBDIR
    from hybrid_pg.experiments.runner import claim_run, release_run, run, run_key

    run_dir = out / RUNS_SUBDIR / run_key(label, config)
    if all(checkpoint_paths(run_dir, s)[0].exists() for s in steps) and (not full or (run_dir / "result.json").exists()):
        return run_dir
    # the grids' lock protocol: two audit processes never train (or clear) the same run
    if not claim_run(run_dir):
        raise RuntimeError(f"{run_dir} is being trained by another live process; audit other seeds (--seeds) meanwhile")
    try:
        if run_dir.exists():  # an interrupted earlier attempt: the audit's own scratch, trained again
            shutil.rmtree(run_dir)
        run(config, run_dir, quiet=True, callbacks=[_checkpoint_callback(run_dir, steps, stop_after_last=not full)])
    finally:
        release_run(run_dir)
    return run_dir


def load_checkpoint(config: Mapping[str, Any], run_dir: Path, step: int, n_envs: int = 1) -> Any:
    """The model at ``step`` on a fresh in-process copy of the run's env (frozen VecNormalize)."""
    from stable_baselines3.common.vec_env import VecNormalize

    from hybrid_pg.experiments.config import algorithm_class
    from hybrid_pg.experiments.runner import make_vec_env_from

    model_path, norm_path = checkpoint_paths(run_dir, step)
    env_section = {**config["env"], "vec_env": "dummy", "n_envs": n_envs, "normalize": False}
    venv = make_vec_env_from(env_section, config["train"]["seed"])
    if norm_path.exists():
        venv = VecNormalize.load(str(norm_path), venv)
        venv.training = False
    cls = algorithm_class(config["algo"]["algorithm"])
    return cls.load(model_path, env=venv, device="cpu")


# ------------------------------------------------------------------------------------------------
# one checkpoint
# ------------------------------------------------------------------------------------------------


def _base_envs(venv: Any) -> List[Any]:
    base = venv
    while hasattr(base, "venv"):
        base = base.venv
    return list(base.envs)


def _contacts(env: Any) -> int:
    data = getattr(getattr(env, "unwrapped", None), "data", None)
    return int(getattr(data, "ncon", -1)) if data is not None else -1


def _estimator_gradients(model: Any, source: Any, data: Any) -> Dict[str, Any]:
    """Per-sample surrogates of the score and pathwise estimators in reward units (differentiable),
    and the batch they were computed on."""
    from hybrid_pg.surrogates import gaussian_log_prob

    batch = prepare_batch(model.policy, source, data, model.settings.normalize_advantage)
    to_reward = 1.0 / batch.adv_scale
    mean, log_std = model.policy.actor_mean(batch.obs), model.policy.log_std
    score = batch.adv * gaussian_log_prob(mean, log_std, batch.actions) * to_reward
    path = batch.path_scale * source.value(mean, log_std, batch.eps, batch.context) * to_reward
    return {"score": score, "path": path, "batch": batch}


def _group_means(policy: Any, per_sample: th.Tensor, masks: Mapping[str, np.ndarray]) -> Dict[str, Dict[str, th.Tensor]]:
    """stratum -> group -> gradient of the mean of ``per_sample`` over the stratum's samples."""
    groups = group_parameters(policy)
    out = {}
    names = [s for s, m in masks.items() if m.any()]
    for stratum in names:
        idx = th.as_tensor(np.flatnonzero(masks[stratum]))
        out[stratum] = flat_group_gradients(per_sample[idx].mean(), groups, retain_graph=True)
    return out


def audit_rollout(model: Any, venv: Any, settings: ReferenceSettings, seed: int, extra_sources: Sequence[Any]) -> Dict[str, Any]:
    """The estimators and the paired reference on one rollout (see the module docstring)."""
    policy = model.policy
    n_steps = model.n_steps
    rng = np.random.default_rng(seed)
    generator = th.Generator().manual_seed(seed)
    venv.seed(seed)
    for env in _base_envs(venv):
        hold_clock(env)
    obs = venv.reset()
    burn = int(rng.integers(settings.burn_in + 1))
    if burn:
        _, _, obs = collect_rollout(model, venv, burn, generator, obs=obs)
    stride = max(1, n_steps // settings.states_per_rollout)
    offset = int(rng.integers(stride))
    envs = _base_envs(venv)
    snapshots, snap_obs, snap_index, contacts = [], [], [], np.zeros((n_steps + 1, len(envs)), dtype=int)

    def before_step(t: int, current_obs: Any) -> None:
        for e, env in enumerate(envs):
            contacts[t, e] = _contacts(env)
            if t % stride == offset:
                # SB3's Monitor is spliced out: it refuses a step after the episode ended, and the
                # reference's returns continue through time-limit truncations
                snapshots.append(clone_env(env, without_monitor=True))
                snap_obs.append(np.asarray(current_obs[e]))
                snap_index.append(e * n_steps + t)  # env-major, as the flattened buffer

    data, episode_starts, _ = collect_rollout(model, venv, n_steps, generator, before_step=before_step, obs=obs)
    for e, env in enumerate(envs):
        contacts[n_steps, e] = _contacts(env)
    # a step changes the contact set when the next state's count differs (and is not a reset)
    next_is_start = np.zeros((n_steps, len(envs)), dtype=bool)
    next_is_start[:-1] = np.asarray(episode_starts, dtype=bool)[1:]
    flat_change = ((contacts[1:] != contacts[:-1]) & ~next_is_start).T.reshape(-1)  # env-major
    n = n_steps * len(envs)
    masks = {"all": np.ones(n, dtype=bool)}
    if (contacts >= 0).all():
        masks.update(contact_change=flat_change, steady=~flat_change)

    lam = {g: float(model.last_lambda.get(g, 0.0)) for g in GROUPS}
    own = _estimator_gradients(model, model.pathwise, data)
    grads = {"score": _group_means(policy, own["score"], masks), "pathwise": _group_means(policy, own["path"], masks)}
    for name, source in extra_sources:
        extra = _estimator_gradients(model, source, data)
        grads[f"pathwise_{name}"] = _group_means(policy, extra["path"], masks)
    grads["mix"] = {s: {g: lam[g] * grads["pathwise"][s][g] + (1 - lam[g]) * grads["score"][s][g] for g in GROUPS} for s in grads["score"]}

    # the reference at the snapshotted states of this rollout
    norm = Normalisation(model.get_vec_normalize_env())
    obs_t = th.as_tensor(np.asarray(snap_obs), dtype=th.float32)
    actions = sample_actions(policy, obs_t, settings.actions, generator, antithetic=settings.antithetic)
    returns = monte_carlo_returns(policy, snapshots, actions.numpy(), norm, float(model.gamma), rng, settings.tail_weight)
    per_state = score_contributions(policy, obs_t, actions, returns.values, antithetic=settings.antithetic)
    snap_rows = np.asarray(snap_index)
    reference = {}
    for stratum, mask in masks.items():
        keep = mask[snap_rows]
        if keep.any():
            units = np.zeros(int(keep.sum()), dtype=int)
            idx = th.as_tensor(np.flatnonzero(keep))
            rows = unit_gradients(policy, per_state[idx], th.ones(len(idx)), units, {0: float(len(idx))})
            reference[stratum] = {g: rows[g][0] for g in GROUPS}

    # critic checks at the reference states
    critic = _critic_checks(model, own["batch"], obs_t, actions, returns.values)
    return {
        "grads": grads,
        "reference": reference,
        "lam": lam,
        "env_steps": n_steps * len(envs) + burn * len(envs) + returns.env_steps,
        "n_ref_states": len(snapshots),
        "stratum_share": {s: float(m.mean()) for s, m in masks.items()},
        "critic": critic,
        "std": float(th.exp(policy.log_std.detach()).mean()),
    }


@th.no_grad()
def _critic_checks(model: Any, batch: Any, obs_t: th.Tensor, actions: th.Tensor, returns: np.ndarray) -> Dict[str, float]:
    """The value head against the Monte Carlo value, and the advantage head (when the policy has
    one) against the Monte Carlo returns' differences, at the reference states."""
    policy = model.policy
    mc_value = returns.mean(axis=1)
    value = policy.predict_values(obs_t).numpy().reshape(-1)
    out = {
        "value_rmse_rel": float(np.sqrt(np.mean((value - mc_value) ** 2)) / max(np.std(mc_value), 1e-12)),
        "value_bias_rel": float(np.mean(value - mc_value) / max(np.std(mc_value), 1e-12)),
    }
    if hasattr(policy, "advantage") and hasattr(policy, "advantage_features"):
        n, k = returns.shape
        feats = policy.advantage_features(obs_t)
        head = th.stack([policy.advantage(feats, policy.clip_action(actions[:, j])) for j in range(k)], dim=1).numpy()
        head = head / batch.adv_scale  # reward units
        mc = returns - returns.mean(axis=1, keepdims=True)
        head = head - head.mean(axis=1, keepdims=True)
        x, y = head.reshape(-1), mc.reshape(-1)
        out["adv_head_corr"] = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else float("nan")
        out["adv_head_slope"] = float((x @ y) / max(x @ x, 1e-300))
    return out


def _stack(results: Sequence[Mapping[str, Any]], key: str, stratum: str, group: str) -> Optional[th.Tensor]:
    rows = []
    for r in results:
        source = r["reference"] if key == "reference" else r["grads"][key]
        if stratum not in source:
            return None
        value = source[stratum]
        rows.append(th.cat([value[g] for g in GROUPS]) if group == "all" else value[group])
    return th.stack(rows)


#: below this reliability (expected squared cosine with the truth) a reference is too noisy for a
#: corrected cosine: the correction would divide by almost nothing
MIN_RELIABILITY = 0.2


def _push_interval(name: str, rows: Optional[th.Tensor]) -> Dict[str, float]:
    """Mean over rollouts of the sum of a log_std gradient's components, with a 95% t-interval."""
    from scipy import stats

    if rows is None or rows.shape[0] < 2:
        return {name: float("nan"), f"{name}_lo": float("nan"), f"{name}_hi": float("nan")}
    sums = rows.sum(dim=1).double().numpy()
    mean, se = float(sums.mean()), float(sums.std(ddof=1) / math.sqrt(len(sums)))
    half = float(stats.t.ppf(0.975, len(sums) - 1)) * se
    return {name: mean, f"{name}_lo": mean - half, f"{name}_hi": mean + half}


def _debiased_sq_norm(rows: th.Tensor) -> float:
    """||E x||^2 estimated without the noise of the mean: ||mean||^2 - trace(Cov) / R."""
    r = rows.shape[0]
    return float(rows.mean(0).norm() ** 2 - rows.var(0, unbiased=True).sum() / r)


def summarise(results: Sequence[Mapping[str, Any]], bootstrap: int = 2000, seed: int = 0) -> List[Dict[str, Any]]:
    """The statistics of the module docstring, one row per (estimator, group, stratum)."""
    rng = np.random.default_rng(seed)
    estimators = list(results[0]["grads"])
    # a stratum (e.g. the steps that change the contact set) may hold no reference state in some
    # rollouts: it is summarised over the rollouts where it does, when there are at least 4
    strata = list(dict.fromkeys(k for r in results for k in r["reference"]))
    all_results = results
    rows = []
    for stratum in strata:
        results = [r for r in all_results if stratum in r["reference"]]
        n = len(results)
        if n < 4:
            continue
        for group in (*GROUPS, "all"):
            ref = _stack(results, "reference", stratum, group)
            if ref is None:
                continue
            ref_mean = ref.mean(0)
            # the reference's squared norm without its noise; not positive means the reference is
            # too noisy to scale anything by: every relative statistic is then NaN, not a huge number
            ref_sq = _debiased_sq_norm(ref)
            ref_sq = ref_sq if ref_sq > 0 else float("nan")
            half = spearman_brown(cosine(ref[0::2].mean(0), ref[1::2].mean(0)), 1.0)
            rel_full = spearman_brown(half, n / (n / 2))
            rel_loo = spearman_brown(half, (n - 1) / (n / 2))
            base = {
                "stratum": stratum,
                "group": group,
                "rollouts": n,
                "ref_norm": math.sqrt(ref_sq),
                "ref_relative_se": float(ref.std(0, unbiased=True).norm() / math.sqrt(n) / ref_mean.norm().clamp_min(1e-300)),
                "ref_split_half_cosine": half,
                "ref_reliability": rel_full,
            }
            score = _stack(results, "score", stratum, group)
            for est in estimators:
                e = _stack(results, est, stratum, group)
                if e is None:
                    continue
                diff = e - ref
                loo = (ref.sum(0, keepdim=True) - ref) / (n - 1)
                singles = [cosine(e[i], loo[i]) for i in range(n)]
                bias_sq = _debiased_sq_norm(diff)
                # basic (reverse-percentile) bootstrap of the debiased squared bias: the percentile
                # interval of a debiased statistic need not even cover its own point estimate
                boot = np.array([_debiased_sq_norm(diff[th.as_tensor(rng.integers(n, size=n))]) for _ in range(bootstrap)])
                sq_lo = max(2 * bias_sq - float(np.percentile(boot, 97.5)), 0.0)
                sq_hi = max(2 * bias_sq - float(np.percentile(boot, 2.5)), 0.0)
                # a cosine against a reference with almost no signal cannot be corrected for its noise
                usable = rel_full >= MIN_RELIABILITY
                row = {
                    **base,
                    "estimator": est,
                    "cos_single": float(np.nanmean(singles)),
                    "cos_single_corrected": corrected_cosine(float(np.nanmean(singles)), rel_loo) if usable else float("nan"),
                    "cos_mean": cosine(e.mean(0), ref_mean),
                    "cos_mean_corrected": corrected_cosine(cosine(e.mean(0), ref_mean), rel_full) if usable else float("nan"),
                    "rel_bias": math.sqrt(max(bias_sq, 0.0)) / math.sqrt(ref_sq),
                    "rel_bias_lo": math.sqrt(sq_lo) / math.sqrt(ref_sq),
                    "rel_bias_hi": math.sqrt(sq_hi) / math.sqrt(ref_sq),
                    "bias_ci": "basic",
                    "proj": float(diff.mean(0) @ ref_mean) / float(ref_mean @ ref_mean),
                    "rel_var": float(e.var(0, unbiased=True).sum()) / ref_sq,
                    "lam_mse": float("nan"),
                }
                row["rel_mse"] = row["rel_bias"] ** 2 + row["rel_var"]
                # the push on the policy's spread: the sum of the log_std components (each is
                # d/d log sigma_j), of the estimator and of its difference from the reference, with
                # t-intervals over the rollouts (negative: shrinks sigma)
                for name, values in (("push", e), ("push_diff", diff)):
                    row.update(_push_interval(name, values if group == "log_std" else None))
                row.update(_push_interval("push_ref", ref if group == "log_std" else None))
                if est.startswith("pathwise") and score is not None:
                    d = e - score
                    num = -float(sum(d[i] @ (score[i] - loo[i]) for i in range(n)))
                    den = float(sum(d[i] @ d[i] for i in range(n)))
                    row["lam_mse"] = num / den if den > 0 else float("nan")
                rows.append(row)
    return rows


def audit_checkpoint(model: Any, settings: ReferenceSettings, seed: int, extra_sources: Sequence[str] = ()) -> Dict[str, Any]:
    """Audit one loaded checkpoint: per-rollout results and the summary rows."""
    from hybrid_pg.sources import build_source

    start = time.perf_counter()
    # an extra source the run already uses is its own "pathwise" row, not a second one
    own = getattr(model.pathwise, "name", None)
    sources = [(name, build_source(model, name)) for name in extra_sources if name != own]
    results = [audit_rollout(model, model.env, settings, seed * 10_007 + r, sources) for r in range(settings.rollouts)]
    rows = summarise(results, settings.bootstrap, seed)
    extras = {
        "source": str(own),  # the run's own pathwise source (the "pathwise" rows)
        "seconds": time.perf_counter() - start,
        "env_steps": int(sum(r["env_steps"] for r in results)),
        "ref_states": int(sum(r["n_ref_states"] for r in results)),
        "std": results[0]["std"],
        "lam_mean": results[0]["lam"]["mean"],
        "lam_log_std": results[0]["lam"]["log_std"],
        **{f"share_{k}": float(np.mean([r["stratum_share"][k] for r in results])) for k in results[0]["stratum_share"]},
        **{k: float(np.nanmean([r["critic"][k] for r in results])) for k in results[0]["critic"]},
    }
    return {"rows": rows, "extras": extras}


def checkpoint_signals(model: Any, rollouts: int, seed: int) -> Dict[str, float]:
    """The online agreement signals (:mod:`hybrid_pg.online_signals`) at a checkpoint, averaged over
    ``rollouts`` fresh rollouts of the run's size: what a run logs, to be set against the audit; and
    the direction check's cosine and t statistic (:func:`hybrid_pg.weight_rule.direction_test`) over
    those rollouts taken as one window (:data:`WINDOW_SIGNAL_KEYS`)."""
    from hybrid_pg.correlation import block_ids
    from hybrid_pg.online_signals import online_signals
    from hybrid_pg.rollout import rollout_group_moments
    from hybrid_pg.weight_rule import direction_test

    values: Dict[str, List[float]] = {}
    window: List[Any] = []
    venv = model.env
    for r in range(rollouts):
        generator = th.Generator().manual_seed(seed * 7919 + r)
        venv.seed(seed * 7919 + r)
        for env in _base_envs(venv):
            hold_clock(env)
        data, starts, _ = collect_rollout(model, venv, model.n_steps, generator)
        batch = prepare_batch(model.policy, model.pathwise, data, model.settings.normalize_advantage)
        blocks = block_ids(venv.num_envs, model.n_steps, episode_starts=starts)
        moments = rollout_group_moments(model.policy, model.actor_head, model.pathwise, batch, blocks=blocks)
        for key, value in online_signals(model.pathwise, batch, moments).items():
            values.setdefault(key, []).append(value)
        if moments is not None:
            window.append(moments["global"])
    out = {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in values.items()}
    # the direction check's statistics over the rollouts as one window (all at this checkpoint's theta)
    test = direction_test(window)
    out.update(direction_cos=math.nan if test is None else test.cos, direction_t=math.nan if test is None else test.t)
    return out


def signals_path(out: Path, key: str, step: int) -> Path:
    return out / "signals" / f"{key}__{step}.json"


def run_signals(config: AuditConfig, rollouts: int = 8, log: Any = print) -> List[Path]:
    """The online signals at every checkpoint that has been audited and whose model is on disk
    (one JSON each, written atomically; resumable)."""
    from hybrid_pg.experiments.ablate import RUNS_SUBDIR
    from hybrid_pg.experiments.runner import run_key

    out = Path(config.output_dir)
    written = []
    for label, cfg in audit_runs(config):
        key = run_key(label, cfg)
        run_dir = out / RUNS_SUBDIR / key
        for step in config.checkpoints:
            path = signals_path(out, key, step)
            if not checkpoint_csv(out, key, step).exists() or not checkpoint_paths(run_dir, step)[0].exists():
                continue
            if path.exists() and set(WINDOW_SIGNAL_KEYS) <= set(json.loads(path.read_text())):
                continue  # measured (a file from before the window signals existed is measured again)
            model = load_checkpoint(cfg, run_dir, step, n_envs=cfg["env"].get("n_envs", 1))
            signals = checkpoint_signals(model, rollouts, config.seed + step)
            model.env.close()
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, json.dumps({"run": label, "seed": cfg["train"]["seed"], "step": step, **signals}, sort_keys=True) + "\n")
            log(f"{label} seed {cfg['train']['seed']} step {step}: signals -> {path}")
            written.append(path)
    return written


# ------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------


def checkpoint_csv(out: Path, key: str, step: int) -> Path:
    return out / AUDIT_DIR / f"{key}__{step}.csv"


def write_checkpoint_csv(path: Path, label: str, seed: int, step: int, audit: Mapping[str, Any]) -> None:
    import csv
    import io

    rows = [{"run": label, "seed": seed, "step": step, **row, **audit["extras"]} for row in audit["rows"]]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, buf.getvalue())


def check_run_labels(config: AuditConfig, only_runs: Optional[Sequence[str]], runs: Sequence[Tuple[str, Any]]) -> None:
    """A clear error for a ``--runs`` label the audit file does not have."""
    if only_runs is None:
        return
    labels = sorted({label for label, _ in runs})
    unknown = sorted(set(only_runs) - set(labels))
    if unknown:
        raise ValueError(f"{config.name}: no run labelled {', '.join(unknown)} (labels: {', '.join(labels)})")


def check_extra_sources(config: AuditConfig, runs: Sequence[Tuple[str, Any]]) -> None:
    """A clear error, before anything trains, for an extra source that cannot serve a run's env
    (e.g. MuJoCo's derivatives on an env the differentiable model does not cover): each run's
    untrained model is built once per label and asked for every extra source."""
    if not config.extra_sources:
        return
    from hybrid_pg.experiments.runner import build_model, make_vec_env_from
    from hybrid_pg.sources import build_source

    seen = set()
    for label, cfg in runs:
        if label in seen:
            continue
        seen.add(label)
        venv = make_vec_env_from({**cfg["env"], "vec_env": "dummy", "n_envs": 1, "normalize": False}, cfg["train"]["seed"])
        try:
            model = build_model(cfg, venv)
            for name in config.extra_sources:
                try:
                    build_source(model, name)
                except ValueError as exc:
                    raise ValueError(f"{config.name}: extra source {name!r} cannot serve {label}: {exc}") from exc
        finally:
            venv.close()


def select_runs(
    config: AuditConfig, only_seeds: Optional[Sequence[int]] = None, only_runs: Optional[Sequence[str]] = None, check_sources: bool = True
) -> List[Tuple[str, Dict[str, Any]]]:
    """The runs of the file that ``only_seeds`` / ``only_runs`` (labels) select, the grid read and
    validated once; an unknown label, and (``check_sources``) an extra source that cannot serve a
    selected run's env, are refused here, before anything trains."""
    runs = audit_runs(config)
    check_run_labels(config, only_runs, runs)
    selected = [
        (label, cfg)
        for label, cfg in runs
        if (only_runs is None or label in only_runs) and (only_seeds is None or cfg["train"]["seed"] in only_seeds)
    ]
    if check_sources:
        check_extra_sources(config, selected)
    return selected


def run_audit(
    config: AuditConfig,
    only_seeds: Optional[Sequence[int]] = None,
    log: Any = print,
    only_runs: Optional[Sequence[str]] = None,
    runs: Optional[Sequence[Tuple[str, Dict[str, Any]]]] = None,
) -> List[Path]:
    """Train what is missing, audit what is not audited yet; returns the checkpoint CSVs.
    ``only_seeds`` / ``only_runs`` (labels) restrict it to those seeds / runs of the file; ``runs``:
    a :func:`select_runs` already made (the filters are then not applied again)."""
    from hybrid_pg.experiments.runner import run_key

    out = Path(config.output_dir)
    written = []
    for label, cfg in select_runs(config, only_seeds, only_runs) if runs is None else runs:
        seed = cfg["train"]["seed"]
        key = run_key(label, cfg)
        todo = [s for s in config.checkpoints if not checkpoint_csv(out, key, s).exists()]
        if not todo:
            written += [checkpoint_csv(out, key, s) for s in config.checkpoints]
            continue
        t0 = time.perf_counter()
        run_dir = train_with_checkpoints(label, cfg, out, config.checkpoints, full=config.train_full)
        log(f"{label} seed {seed}: checkpoints ready ({time.perf_counter() - t0:.0f} s)")
        for step in todo:
            model = load_checkpoint(cfg, run_dir, step, n_envs=cfg["env"].get("n_envs", 1))
            audit = audit_checkpoint(model, config.reference, config.seed + 1000 * seed + step, config.extra_sources)
            path = checkpoint_csv(out, key, step)
            write_checkpoint_csv(path, label, seed, step, audit)
            e = audit["extras"]
            log(f"  step {step}: {e['seconds']:.0f} s, {e['env_steps']} env steps, -> {path}")
            written.append(path)
            model.env.close()
    return written


def save_meta(config: AuditConfig) -> None:
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"name": config.name, "grid": config.grid, "checkpoints": list(config.checkpoints), "reference": config.reference.model_dump()}
    write_atomically(out / "audit_settings.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
