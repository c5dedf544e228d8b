"""Hybrid (pathwise + score) gradients for a VAE encoder: our reconstruction of the paper's VAE run.

Run:  python examples/vae.py [--out docs/results/vae] [--seeds 5] [--epochs 150] [--quick]

The seed paper (Oden, arXiv 2602.17013) reports a 9% variance reduction on VAEs (CIFAR-10), with
lam* starting near 0.8 and rising to about 0.98 during training. Only its abstract and figure
captions are available, so everything here is *our reconstruction*, not the paper's setup.

Dataset: scikit-learn's bundled ``load_digits`` (1797 grey-scale 8x8 digits, pixel values 0..16,
scaled to [0, 1] and modelled with a Bernoulli decoder). It ships inside the scikit-learn package,
so the run needs no network (CIFAR-10 cannot be downloaded on the machines this project runs on)
and takes CPU minutes. It is NOT CIFAR-10: the images are 64-dimensional instead of 3072, the
networks are small MLPs, and the numbers below are not comparable one-to-one with the paper's.

Model: encoder x -> (mu, log_sigma) (an MLP of nn.Linear layers, latent dimension ``--latent``),
decoder z -> Bernoulli logits. The ELBO is E_q[log p(x|z)] - KL(q(z|x) || N(0, I)):

* the KL term is analytic and differentiated exactly;
* the decoder gets the ordinary gradient of log p(x|z) at the sampled z;
* only the *encoder's* gradient of the reconstruction term f(z) = log p(x|z), z = mu + sigma eps,
  is estimated by the hybrid: per sample, the pathwise and score estimators w.r.t. (mu, log_sigma)
  come from :func:`hybrid_pg.estimator.pathwise_gradients` / :func:`~hybrid_pg.estimator.score_gradients`,
  and are carried to the encoder *parameters* by the chain rule (the outer-product moments of
  :func:`hybrid_pg.per_sample.outer_product_group_moments`, exact for an all-Linear encoder).

The weight applied to minibatch t is lam* of :class:`hybrid_pg.window.WindowedLambda` over the
previous ``--window`` minibatches' per-sample encoder-parameter gradient moments (the current
minibatch is added only after its update, so the weight never depends on the noise it weights).
Three estimators are trained: ``hybrid`` (that adaptive weight), ``pathwise`` (lam = 1, the usual
reparameterised VAE) and ``score`` (lam = 0). All three record the same per-minibatch moments, so
lam* and the variance reduction are also seen along the pure estimators' trajectories.

Outputs (in ``--out``): curves.csv (train and held-out ELBO per estimator, seed, epoch), moments.csv
(per epoch: lam applied, in-sample lam*, Var_P, Var_M, Cov, variance reductions), summary.json
(settings and the aggregated numbers), vae.png (ELBO curves, lam* over training, variance reduction).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch as th  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from hybrid_pg.estimator import (  # noqa: E402
    BatchMoments,
    LambdaEstimate,
    mixed_variance,
    pathwise_gradients,
    pooled_estimate,
    score_gradients,
)
from hybrid_pg.per_sample import outer_product_group_moments  # noqa: E402
from hybrid_pg.window import WindowedLambda  # noqa: E402

ESTIMATORS = ("hybrid", "pathwise", "score")
BASELINES = ("posterior-mean", "loo")
FIXED_LAMBDA = {"pathwise": 1.0, "score": 0.0}
SPLIT_SEED = 20260217  # the train / held-out split is the same for every run
N_HELD_OUT = 297  # 1797 = 1500 train + 297 held out


@dataclass
class Settings:
    epochs: int = 150
    seeds: int = 5
    latent: int = 4
    hidden: int = 64
    batch_size: int = 100
    lr: float = 1e-3
    window: int = 8
    eval_samples: int = 4
    baseline: str = "posterior-mean"


QUICK = Settings(epochs=3, seeds=2, latent=2, hidden=16, batch_size=100, eval_samples=1)


# ----------------------------------------------------------------------------------------------
# data and model
# ----------------------------------------------------------------------------------------------


def load_split() -> tuple[th.Tensor, th.Tensor]:
    """(train, held_out) digit images as float32 in [0, 1], shape (n, 64); a fixed split."""
    from sklearn.datasets import load_digits  # optional dependency: the `vae` extra

    x = th.as_tensor(load_digits().data / 16.0, dtype=th.float32)
    perm = th.randperm(x.shape[0], generator=th.Generator().manual_seed(SPLIT_SEED))
    return x[perm[N_HELD_OUT:]], x[perm[:N_HELD_OUT]]


def make_vae(n_in: int, hidden: int, latent: int) -> tuple[nn.Module, nn.Module]:
    """Encoder x -> [mu, log_sigma] (2 * latent outputs; all nn.Linear) and decoder z -> logits."""
    encoder = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent))
    decoder = nn.Sequential(nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, n_in))
    return encoder, decoder


def log_likelihood(decoder: nn.Module, z: th.Tensor, x: th.Tensor) -> th.Tensor:
    """log p(x | z) per image (Bernoulli on [0, 1] pixel intensities), shape (n,)."""
    return -F.binary_cross_entropy_with_logits(decoder(z), x, reduction="none").sum(-1)


def kl_standard_normal(mu: th.Tensor, log_std: th.Tensor) -> th.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent dimensions, shape (n,)."""
    return 0.5 * (mu * mu + th.exp(2.0 * log_std) - 1.0 - 2.0 * log_std).sum(-1)


@th.no_grad()
def elbo(encoder: nn.Module, decoder: nn.Module, x: th.Tensor, samples: int, generator: th.Generator) -> float:
    """Mean ELBO per image (nats), reconstruction term averaged over ``samples`` draws."""
    mu, log_std = encoder(x).chunk(2, dim=-1)
    recon = th.stack(
        [log_likelihood(decoder, mu + th.exp(log_std) * th.randn(mu.shape, generator=generator), x) for _ in range(samples)]
    ).mean(0)
    return float((recon - kl_standard_normal(mu, log_std)).mean())


# ----------------------------------------------------------------------------------------------
# the two estimators of the encoder's reconstruction gradient
# ----------------------------------------------------------------------------------------------


def output_gradients(out: th.Tensor, decoder: nn.Module, x: th.Tensor, eps: th.Tensor, baseline: str = "posterior-mean"):
    """Per-sample gradients of f = log p(x | mu + sigma eps) w.r.t. the encoder outputs (mu, log_sigma).

    :param out: the encoder output [mu, log_sigma] of the images ``x``; ``eps`` the latent noise.
    Returns (f, u_path, u_score), u_* of shape (n, 2 * latent) ordered like the encoder output.
    f keeps its graph to the decoder parameters (their ordinary gradient).

    Score baseline: b_i = f evaluated at the posterior mean, log p(x_i | z = mu_i), with the decoder
    fixed. It depends on the image and the current parameters but not on eps_i, so the score
    estimator stays unbiased. A per-image baseline is needed because log p(x|z) differs between
    images by tens of nats, which a running mean (one number for all images) would leave in the
    score term as noise; a leave-one-out baseline would need >= 2 latent draws per image and make the
    per-sample gradients of one image dependent. b_i costs one extra decoder pass.
    ``baseline="loo"`` (a sensitivity check) uses instead the leave-one-out minibatch mean
    b_i = mean_{j != i} f_j, also independent of eps_i.
    """
    mu, log_std = out.detach().chunk(2, dim=-1)
    z = (mu + th.exp(log_std) * eps).requires_grad_(True)
    f = log_likelihood(decoder, z, x)
    (df_dz,) = th.autograd.grad(f.sum(), z, retain_graph=True)
    if baseline == "posterior-mean":
        with th.no_grad():
            b = log_likelihood(decoder, mu, x)
    elif baseline == "loo":
        b = (f.detach().sum() - f.detach()) / (f.shape[0] - 1)
    else:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    path = pathwise_gradients(df_dz, eps, log_std)
    score = score_gradients(f.detach(), eps, log_std, baseline=b)
    return f, th.cat(path, dim=-1), th.cat(score, dim=-1)


def encoder_moments(encoder: nn.Module, x: th.Tensor, u_path: th.Tensor, u_score: th.Tensor) -> BatchMoments:
    """Moments of the per-sample encoder-*parameter* gradients J_i^T u_i of both estimators.

    The linear surrogates <out_i + offset, u_i> have exactly these per-sample gradients; the
    outer-product path of :mod:`hybrid_pg.per_sample` reduces them without materialising them. Its
    second group (the zero ``offset``) holds the gradients w.r.t. the encoder outputs, not used here.
    """
    offset = th.zeros(u_path.shape[1])
    moments = outer_product_group_moments(
        encoder,
        x,
        offset,
        lambda out, off: ((out + off) * u_path).sum(-1),
        lambda out, off: ((out + off) * u_score).sum(-1),
    )
    return moments["mean"]


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------


def train(estimator: str, seed: int, s: Settings, data: tuple[th.Tensor, th.Tensor]) -> tuple[list, list]:
    """One run; returns (curve rows, per-epoch moment rows)."""
    x_train, x_test = data
    th.manual_seed(seed)
    encoder, decoder = make_vae(x_train.shape[1], s.hidden, s.latent)
    opt = th.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=s.lr)
    # fallback lam = 1 (pathwise) for the first minibatch, when the window is empty: here, unlike in
    # RL with a learned critic, the pathwise estimator is exact, and it is the standard VAE choice.
    window = WindowedLambda(window=s.window, fallback=1.0)
    # diagnostic only (never applied): the same window without the library's default [0, 1] clip, to
    # see what the raw minimiser (lam > 1: g_P + (lam - 1)(g_P - g_M), a control variate) would give
    window_raw = WindowedLambda(window=s.window, fallback=1.0, bounds=None)
    data_gen = th.Generator().manual_seed(seed)
    eval_gen = th.Generator().manual_seed(10_000 + seed)
    curves, moments_rows = [], []

    def evaluate(epoch: int, step: int) -> None:
        curves.append(
            dict(
                estimator=estimator,
                seed=seed,
                epoch=epoch,
                step=step,
                train_elbo=elbo(encoder, decoder, x_train, s.eval_samples, eval_gen),
                test_elbo=elbo(encoder, decoder, x_test, s.eval_samples, eval_gen),
            )
        )

    step = 0
    evaluate(0, 0)
    for epoch in range(1, s.epochs + 1):
        batches: List[BatchMoments] = []
        applied, lam_window, var_applied, var_window, lam_raw, var_raw = [], [], [], [], [], []
        for idx in th.randperm(x_train.shape[0], generator=data_gen).split(s.batch_size):
            x = x_train[idx]
            out = encoder(x)
            mu, log_std = out.chunk(2, dim=-1)
            eps = th.randn(mu.shape, generator=data_gen)
            f, u_path, u_score = output_gradients(out, decoder, x, eps, s.baseline)
            prev: LambdaEstimate = window.estimate()  # previous minibatches only
            prev_raw = window_raw.estimate()
            lam = FIXED_LAMBDA.get(estimator, prev.lam)
            u_mix = lam * u_path + (1.0 - lam) * u_score
            # loss: decoder reconstruction (z detached inside f), encoder reconstruction through the
            # mixed cotangent of its outputs, analytic KL for both mu and log_sigma.
            loss = -(f.mean() + (out * u_mix.detach()).sum(-1).mean()) + kl_standard_normal(mu, log_std).mean()
            opt.zero_grad()
            loss.backward()
            # statistics of this minibatch at the pre-update parameters, then into the window
            m = encoder_moments(encoder, x, u_path, u_score)
            opt.step()
            window.add(m)
            window_raw.add(m)
            batches.append(m)
            cur = pooled_estimate([m], bounds=None)
            applied.append(lam)
            lam_window.append(prev.lam)
            var_applied.append(mixed_variance(lam, cur.var_path, cur.var_score, cur.cov))
            var_window.append(mixed_variance(prev.lam, cur.var_path, cur.var_score, cur.cov))
            lam_raw.append(prev_raw.lam)
            var_raw.append(mixed_variance(prev_raw.lam, cur.var_path, cur.var_score, cur.cov))
            step += 1
        pooled = pooled_estimate(batches)  # in-sample lam* of this epoch's minibatches, in [0, 1]
        pooled_raw = pooled_estimate(batches, bounds=None)
        best_single = min(pooled.var_path, pooled.var_score)
        moments_rows.append(
            dict(
                estimator=estimator,
                seed=seed,
                epoch=epoch,
                step=step,
                lam_applied=float(np.mean(applied)),
                lam_window=float(np.mean(lam_window)),
                lam_star=pooled.lam,
                lam_star_unclipped=pooled.lam_unclipped,
                var_path=pooled.var_path,
                var_score=pooled.var_score,
                cov=pooled.cov,
                corr=pooled.corr,
                var_applied=float(np.mean(var_applied)),
                var_hybrid_window=float(np.mean(var_window)),
                var_hybrid_star=pooled.var_hybrid,
                reduction_star=pooled.variance_reduction,
                reduction_window=_reduction(var_window, best_single),
                lam_window_unclipped=float(np.mean(lam_raw)),
                reduction_star_unclipped=pooled_raw.variance_reduction,
                reduction_window_unclipped=_reduction(var_raw, best_single),
            )
        )
        evaluate(epoch, step)
    return curves, moments_rows


def _reduction(variances: Sequence[float], best_single: float) -> float:
    """1 - mean variance of the mix / min(Var_P, Var_M) (0 when that minimum is 0)."""
    return 1.0 - float(np.mean(variances)) / best_single if best_single > 0 else 0.0


# ----------------------------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------------------------


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _spread(values: Sequence[float]) -> Dict[str, float]:
    v = np.asarray(values, dtype=float)
    return dict(mean=float(v.mean()), min=float(v.min()), max=float(v.max()), n_seeds=int(v.size))


def _series(rows: Sequence[dict], estimator: str, key: str) -> np.ndarray:
    """seeds x epochs array of ``key`` for one estimator."""
    seeds = sorted({r["seed"] for r in rows})
    return np.array([[r[key] for r in rows if r["estimator"] == estimator and r["seed"] == sd] for sd in seeds])


def summarise(curves: list, moments: list, s: Settings) -> dict:
    """Per estimator: mean and min/max over seeds of the headline numbers."""
    out: dict = {"settings": vars(s), "estimators": {}}
    for est in ESTIMATORS:
        col = {
            k: _series(moments, est, k)
            for k in (
                "lam_star",
                "lam_star_unclipped",
                "var_path",
                "var_score",
                "var_applied",
                "reduction_star",
                "reduction_window",
                "reduction_star_unclipped",
                "reduction_window_unclipped",
            )
        }
        test = _series(curves, est, "test_elbo")
        out["estimators"][est] = {
            "final_train_elbo": _spread(_series(curves, est, "train_elbo")[:, -1]),
            "final_test_elbo": _spread(test[:, -1]),
            "test_elbo_at_quarter_of_training": _spread(test[:, (test.shape[1] - 1) // 4]),
            "lam_star_first_epoch": _spread(col["lam_star"][:, 0]),
            "lam_star_last_epoch": _spread(col["lam_star"][:, -1]),
            "lam_star_unclipped_first_epoch": _spread(col["lam_star_unclipped"][:, 0]),
            "lam_star_unclipped_last_epoch": _spread(col["lam_star_unclipped"][:, -1]),
            "var_path_last_epoch": _spread(col["var_path"][:, -1]),
            "var_score_last_epoch": _spread(col["var_score"][:, -1]),
            "var_applied_estimator_last_epoch": _spread(col["var_applied"][:, -1]),
        }
        for key in ("reduction_star", "reduction_window", "reduction_star_unclipped", "reduction_window_unclipped"):
            out["estimators"][est][f"{key}_mean_over_epochs"] = _spread(col[key].mean(1))
    return out


def plot(curves: list, moments: list, path: Path) -> None:
    colours = {"hybrid": "C0", "pathwise": "C1", "score": "C2"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for est in ESTIMATORS:
        c = colours[est]
        epochs = _series(curves, est, "epoch")[0]
        for key, ls, lab in (("train_elbo", "-", "train"), ("test_elbo", "--", "held-out")):
            y = _series(curves, est, key)
            axes[0].plot(epochs, y.mean(0), ls, color=c, label=f"{est} ({lab})")
            axes[0].fill_between(epochs, y.min(0), y.max(0), color=c, alpha=0.15)
        ep = _series(moments, est, "epoch")[0]
        for ax, key in ((axes[1], "lam_star"), (axes[2], "reduction_star")):
            y = _series(moments, est, key)
            ax.plot(ep, y.mean(0), color=c, label=f"{est} run")
            ax.fill_between(ep, y.min(0), y.max(0), color=c, alpha=0.15)
    hyb_epochs = _series(moments, "hybrid", "epoch")[0]
    for ax, keys in (
        (axes[1], (("lam_window", "lam applied (window)"), ("lam_star_unclipped", "lam* unclipped"))),
        (
            axes[2],
            (
                ("reduction_window", "at applied lam"),
                ("reduction_star_unclipped", "at unclipped lam* (in-sample)"),
                ("reduction_window_unclipped", "at unclipped window lam"),
            ),
        ),
    ):
        for (key, lab), ls in zip(keys, (":", "-.", "--")):
            ax.plot(hyb_epochs, _series(moments, "hybrid", key).mean(0), ls, color="k", label=f"hybrid run: {lab}")
    axes[0].set(xlabel="epoch", ylabel="ELBO per image (nats)", title="ELBO (mean, band = min/max over seeds)")
    lo = min(np.percentile(_series(curves, e, "test_elbo"), 5) for e in ESTIMATORS)
    axes[0].set_ylim(bottom=lo)
    axes[1].set(xlabel="epoch", ylabel="lam*", title="lam* (in-sample, pooled per epoch; clipped to [0, 1])")
    axes[2].set(xlabel="epoch", ylabel="1 - Var(hybrid) / min(Var_P, Var_M)", title="variance reduction vs best single estimator")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("VAE encoder gradient on sklearn digits (our reconstruction; not CIFAR-10)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="docs/results/vae")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tiny nets, 3 epochs)")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--baseline", choices=BASELINES, default=None, help="score-term baseline (default posterior-mean)")
    args = p.parse_args(argv)
    th.set_num_threads(1)
    s = QUICK if args.quick else Settings()
    overrides = {k: v for k, v in (("seeds", args.seeds), ("epochs", args.epochs), ("baseline", args.baseline)) if v is not None}
    s = replace(s, **overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_split()
    curves, moments = [], []
    t0 = time.perf_counter()
    for est in ESTIMATORS:
        for seed in range(s.seeds):
            c, m = train(est, seed, s, data)
            curves += c
            moments += m
            print(
                f"{est:8s} seed {seed}: test ELBO {c[-1]['test_elbo']:8.2f}  lam* first/last epoch "
                f"{m[0]['lam_star']:.3f}/{m[-1]['lam_star']:.3f}  reduction(last) {m[-1]['reduction_star']:.3f}",
                flush=True,
            )
    summary = summarise(curves, moments, s)
    _write_csv(out / "curves.csv", curves)
    _write_csv(out / "moments.csv", moments)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(curves, moments, out / "vae.png")
    print(f"wrote {out}/curves.csv, moments.csv, summary.json, vae.png ({time.perf_counter() - t0:.0f} s)")
    return summary


if __name__ == "__main__":
    main()
