"""examples/vae.py: the --quick run writes its outputs, and the two encoder estimators it mixes agree."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch as th
from torch.func import functional_call, grad, vmap

from hybrid_pg.estimator import BatchMoments, optimal_lambda

pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("vae_example", ROOT / "examples" / "vae.py")
vae = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = vae  # dataclasses look their module up while the class is created
spec.loader.exec_module(vae)


def _tiny_model(seed: int = 0):
    th.manual_seed(seed)
    encoder, decoder = vae.make_vae(n_in=6, hidden=5, latent=2)
    with th.no_grad():  # a posterior with sigma well away from 1 and a non-zero mean
        encoder[2].bias.copy_(th.tensor([0.4, -0.3, -0.7, -0.2]))
    x = th.rand(1, 6, generator=th.Generator().manual_seed(seed))
    return encoder, decoder, x


def _per_sample_param_grads(encoder, x, u):
    """Explicit per-sample encoder-parameter gradients of <encoder(x_i), u_i>, shape (n, n_params)."""
    params = {k: v.detach() for k, v in encoder.named_parameters()}

    def one(p, xi, ui):
        return (functional_call(encoder, p, (xi[None],))[0] * ui).sum()

    g = vmap(grad(one), in_dims=(None, 0, 0))(params, x, u)
    return th.cat([g[k].reshape(x.shape[0], -1) for k in params], dim=1)


N_SAMPLES = 20_000


def _samples():
    """The tiny model, one image repeated N_SAMPLES times, fixed latent noise, both estimators."""
    th.set_num_threads(1)
    encoder, decoder, x1 = _tiny_model()
    x = x1.expand(N_SAMPLES, -1)
    eps = th.randn(N_SAMPLES, 2, generator=th.Generator().manual_seed(1))
    out = encoder(x)
    f, u_path, u_score = vae.output_gradients(out, decoder, x, eps)
    return encoder, decoder, x, eps, out, f, u_path, u_score


def _noise_ratio(m: BatchMoments, vector: th.Tensor) -> float:
    """n ||vector||^2 / Var(g_P - g_M) (trace): about 1 for vector = mean_P - mean_M when both are unbiased."""
    return m.n * float(vector @ vector) / ((m.ss_path + m.ss_score - 2 * m.ss_cross) / (m.n - 1))


def test_pathwise_and_score_encoder_gradients_agree_and_moments_are_exact():
    encoder, _, x, _, _, _, u_path, u_score = _samples()
    m = vae.encoder_moments(encoder, x, u_path, u_score)

    # the outer-product moments equal those of explicitly computed per-sample parameter gradients
    gp = _per_sample_param_grads(encoder, x[:300], u_path[:300]).double()
    gm = _per_sample_param_grads(encoder, x[:300], u_score[:300]).double()
    ref, fast = BatchMoments.from_samples(gp, gm), vae.encoder_moments(encoder, x[:300], u_path[:300], u_score[:300])
    for key in ("ss_path", "ss_score", "ss_cross"):
        assert getattr(fast, key) == pytest.approx(getattr(ref, key), rel=1e-4)
    assert th.allclose(fast.mean_path, ref.mean_path, rtol=1e-4, atol=1e-7)

    # both estimators are unbiased for the same gradient: the mean difference is Monte-Carlo noise,
    # n ||mean_P - mean_M||^2 has expectation Var(g_P - g_M) (trace)
    ratio = _noise_ratio(m, m.mean_path - m.mean_score)
    assert 0.05 < ratio < 4.0, f"n ||mean_P - mean_M||^2 / Var(g_P - g_M) = {ratio:.2f}, expected about 1"
    d = gp - gm  # per-coordinate z-scores on the explicit subsample too (looser: n = 300)
    z = d.mean(0) / (d.std(0) / math.sqrt(d.shape[0]) + 1e-12)
    assert float(z.abs().max()) < 4.5
    # the gradient itself is far from zero (otherwise agreement would be vacuous)
    assert _noise_ratio(m, m.mean_path) > 100

    est = optimal_lambda(gp, gm)
    assert 0.0 <= est.lam <= 1.0 and est.var_hybrid <= min(est.var_path, est.var_score) + 1e-9


@pytest.mark.parametrize("bug", ["baseline uses the sample's own f", "score term misses 1/sigma"])
def test_biased_score_estimator_is_detected(bug):
    """The agreement check can fail: two typical bugs bias the score term and are caught."""
    encoder, decoder, x, eps, out, f, u_path, _ = _samples()
    mu, log_std = out.detach().chunk(2, dim=-1)
    with th.no_grad():
        b = vae.log_likelihood(decoder, mu, x)
    if bug.startswith("baseline"):
        bad = vae.score_gradients(f.detach(), eps, log_std, baseline=b + 0.3 * (f.detach() - b))
    else:
        bad = vae.score_gradients(f.detach(), eps, th.zeros_like(log_std), baseline=b)
    m = vae.encoder_moments(encoder, x, u_path, th.cat(bad, dim=-1))
    assert _noise_ratio(m, m.mean_path - m.mean_score) > 4.0


def test_quick_run_writes_outputs(tmp_path):
    summary = vae.main(["--quick", "--out", str(tmp_path)])
    for name in ("curves.csv", "moments.csv", "summary.json", "vae.png"):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, name
    s = vae.QUICK
    with open(tmp_path / "curves.csv", newline="") as fh:
        curves = list(csv.DictReader(fh))
    assert len(curves) == len(vae.ESTIMATORS) * s.seeds * (s.epochs + 1)
    assert all(math.isfinite(float(r["test_elbo"])) and float(r["test_elbo"]) < 0 for r in curves)
    with open(tmp_path / "moments.csv", newline="") as fh:
        moments = list(csv.DictReader(fh))
    assert len(moments) == len(vae.ESTIMATORS) * s.seeds * s.epochs
    for r in moments:
        for key in ("lam_applied", "lam_window", "lam_star"):
            assert 0.0 <= float(r[key]) <= 1.0
        assert float(r["var_path"]) > 0 and float(r["var_score"]) > 0
        assert float(r["reduction_star"]) >= -1e-9  # lam* in [0, 1] is never worse than the best single
    applied = {r["estimator"]: {float(x["lam_applied"]) for x in moments if x["estimator"] == r["estimator"]} for r in moments}
    assert applied["pathwise"] == {1.0} and applied["score"] == {0.0}
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
