"""The same weight on another device: CPU against CUDA (or any two devices) for a seeded rollout.

For each cell (an env and a pathwise source) a model is trained on the CPU for a few rollouts, so
its windows hold statistics and its critic has learnt something. It is saved and loaded on the
other device (SB3's ``load(device=...)``, the path a user takes to move a model), the CPU model's
last rollout is copied into the loaded model's buffer, and both compute what ``train()`` computes
before its update (:meth:`hybrid_pg.HybridPG.rollout_statistics`): the weight per group from the
window, the rollout's per-group moments (the per-sample statistics) and the weight this rollout
alone gives. Reported per cell: the largest absolute difference of the weights and the largest
relative difference of the moments, against tolerances::

    python examples/device_parity.py --device cuda

On a machine without CUDA, ``--device cpu`` runs the same comparison CPU against CPU: the loaded
copy must then give exactly the same numbers, which checks that saving and loading carries
everything the weight depends on (windows, critic, replay, normaliser).

The cells cover every source and both statistics paths: the advantage head (plain, as a control
variate, with LayerNorm and per-group weights, with the HL-Gauss loss), the replay critic, the differentiable Pendulum model
(one step: the outer-product path; two steps: the ``torch.func`` path) and, where ``mujoco`` is
installed, MuJoCo's derivatives on HalfCheetah.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch as th

#: per cell: (env id, HybridPG settings beyond :data:`SHARED`)
CELLS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "critic": ("hybrid_pg/Pendulum-v0", dict(pathwise_source="critic")),
    "control_variate": ("hybrid_pg/Pendulum-v0", dict(pathwise_source="critic", control_variate=True)),
    "critic_layer_norm_per_group": (
        "hybrid_pg/Pendulum-v0",
        dict(pathwise_source="critic", lambda_groups="per_group", policy_kwargs=dict(net_arch=[64, 64], advantage_layer_norm=True)),
    ),
    "critic_hl_gauss": (
        "hybrid_pg/Pendulum-v0",
        dict(pathwise_source="critic", policy_kwargs=dict(net_arch=[64, 64], advantage_layer_norm=True, advantage_loss="hl_gauss")),
    ),
    "replay_critic": ("hybrid_pg/Pendulum-v0", dict(pathwise_source="replay_critic")),
    "model": ("hybrid_pg/Pendulum-v0", dict(pathwise_source="model")),
    "model_two_steps": ("hybrid_pg/Pendulum-v0", dict(pathwise_source="model", model_horizon=2)),
    "mujoco": ("HalfCheetah-v5", dict(pathwise_source="mujoco")),
}
#: small rollouts, a few epochs: enough for a filled window and a trained critic in seconds
SHARED: Dict[str, Any] = dict(n_steps=256, batch_size=64, n_epochs=2, policy_kwargs=dict(net_arch=[64, 64]))
N_ENVS = 2
#: moments compared (relative difference) and the weights compared (absolute difference)
MOMENT_FIELDS = ("ss_path", "ss_score", "ss_cross", "lr_ss_path", "lr_ss_score", "lr_ss_cross")
BUFFER_ARRAYS = ("observations", "actions", "rewards", "returns", "episode_starts", "values", "log_probs", "advantages")


@dataclasses.dataclass(frozen=True)
class Statistics:
    """What one model computes from the rollout: weights by name and moments by (group, field)."""

    weights: Dict[str, float]
    moments: Dict[str, float]


@dataclasses.dataclass(frozen=True)
class ParityRow:
    cell: str
    env_id: str
    device: str
    lam: float  # the window's global weight on the reference device
    max_lam_diff: float
    max_moment_rel_diff: float
    worst_moment: str
    ok: bool


def available_cells() -> List[str]:
    """The cells this machine can run (MuJoCo's only with ``mujoco`` installed)."""
    has_mujoco = importlib.util.find_spec("mujoco") is not None
    return [name for name, (_, settings) in CELLS.items() if has_mujoco or settings.get("pathwise_source") != "mujoco"]


def statistics(model: Any, seed: int = 0) -> Statistics:
    """The weights and moments ``model`` computes from the rollout in its buffer (nothing changes);
    the source's own noise from a CPU generator seeded with ``seed``, the same on every device."""
    lam, moments = model.rollout_statistics(generator=th.Generator().manual_seed(seed))
    weights = {f"window_{g}": float(v) for g, v in lam.items()}
    values: Dict[str, float] = {}
    if moments is not None:
        weights["rollout_alone"] = float(model.weight_estimate(moments["global"]).lam)
        for group, m in moments.items():
            for name in MOMENT_FIELDS:
                values[f"{group}.{name}"] = float(getattr(m, name))
            values[f"{group}.|mean_path|"] = float(m.mean_path.double().norm())
            values[f"{group}.|mean_score|"] = float(m.mean_score.double().norm())
    return Statistics(weights, values)


def copy_rollout(source: Any, target: Any) -> None:
    """``source``'s rollout buffer (arrays and state) into ``target``'s, whatever its device."""
    a, b = source.rollout_buffer, target.rollout_buffer
    for name in BUFFER_ARRAYS:
        value = getattr(a, name)
        setattr(b, name, {k: v.copy() for k, v in value.items()} if isinstance(value, dict) else value.copy())
    b.pos, b.full, b.generator_ready = a.pos, a.full, a.generator_ready


def compare(reference: Statistics, other: Statistics) -> Tuple[float, float, str]:
    """(largest |weight difference|, largest relative moment difference, the moment it was on). A
    covariance (``*ss_cross``) is compared on the scale of its two variances, the others on their own."""
    if set(reference.weights) != set(other.weights) or set(reference.moments) != set(other.moments):
        return math.inf, math.inf, "the two devices computed different statistics (one was not finite)"
    lam_diff = max((abs(reference.weights[k] - other.weights[k]) for k in reference.weights), default=0.0)
    worst, rel = "", 0.0
    for key, value in reference.moments.items():
        scale = max(abs(value), abs(other.moments[key]))
        if key.endswith("ss_cross"):  # a signed sum that can cancel: on the scale of its two variances
            group, field = key.split(".")
            prefix = field[: -len("ss_cross")]
            scale = max(
                scale, math.sqrt(abs(reference.moments[f"{group}.{prefix}ss_path"] * reference.moments[f"{group}.{prefix}ss_score"]))
            )
        d = 0.0 if scale == 0 else abs(value - other.moments[key]) / scale
        if d > rel or not math.isfinite(d):
            worst, rel = key, d
    return lam_diff, rel, worst


def train_reference(env_id: str, settings: Mapping[str, Any], seed: int = 0, rollouts: int = 5) -> Any:
    """A HybridPG trained on the CPU for ``rollouts`` rollouts (2 envs, VecNormalize)."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    from hybrid_pg import HybridPG

    env = VecNormalize(make_vec_env(env_id, n_envs=N_ENVS, seed=seed))
    model = HybridPG("MlpPolicy", env, seed=seed, device="cpu", **{**SHARED, **settings})
    model.learn(rollouts * model.n_steps * N_ENVS)
    return model


def check_cell(
    name: str, device: str, seed: int = 0, rollouts: int = 5, tol_lam: float = 1e-3, tol_rel: float = 1e-3, tamper: Optional[Any] = None
) -> ParityRow:
    """One cell: train on the CPU, load on ``device``, compare (``tamper(loaded_model)``, for tests,
    changes the loaded copy before the comparison)."""
    from hybrid_pg import HybridPG

    env_id, settings = CELLS[name]
    model = train_reference(env_id, settings, seed, rollouts)
    reference = statistics(model, seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.zip"
        model.save(path)
        other = HybridPG.load(path, env=model.get_env(), device=device)
    copy_rollout(model, other)
    if tamper is not None:
        tamper(other)
    lam_diff, rel, worst = compare(reference, statistics(other, seed))
    model.get_env().close()
    ok = lam_diff <= tol_lam and rel <= tol_rel
    return ParityRow(name, env_id, str(other.device), reference.weights.get("window_global", math.nan), lam_diff, rel, worst, ok)


def device_name(device: str) -> str:
    """The card (``torch.cuda.get_device_name``) or the CPU."""
    d = th.device(device)
    if d.type == "cuda":
        return f"{th.cuda.get_device_name(d)} (CUDA {th.version.cuda}, torch {th.__version__})"
    return f"CPU (torch {th.__version__})"


def format_rows(rows: Sequence[ParityRow], tol_lam: float, tol_rel: float) -> str:
    lines = [
        f"{'cell':30s} {'env':24s} {'lam (cpu)':>9s} {'max |dlam|':>11s} {'max rel dmoment':>16s}  ok   worst moment",
    ]
    for r in rows:
        lines.append(
            f"{r.cell:30s} {r.env_id:24s} {r.lam:9.4f} {r.max_lam_diff:11.2e} {r.max_moment_rel_diff:16.2e}  "
            f"{'yes' if r.ok else 'NO ':3s}  {r.worst_moment}"
        )
    lines.append(f"tolerances: |dlam| <= {tol_lam:g}, relative moment difference <= {tol_rel:g}")
    return "\n".join(lines)


def run(
    device: str, cells: Optional[Sequence[str]] = None, seed: int = 0, rollouts: int = 5, tol_lam: float = 1e-3, tol_rel: float = 1e-3
) -> List[ParityRow]:
    names = list(cells) if cells else available_cells()
    unknown = sorted(set(names) - set(CELLS))
    if unknown:
        raise ValueError(f"unknown cells {unknown}; known: {sorted(CELLS)}")
    th.set_num_threads(1)
    np.random.seed(seed)
    return [check_cell(n, device, seed, rollouts, tol_lam, tol_rel) for n in names]
