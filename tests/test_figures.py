"""Every figure type the command line writes, rendered and measured: no text cut at the figure's
edge, no legend over a plotting area, a footnote or another text, no two texts on top of each other,
axis labels in words (no raw logger keys), and PNG, PDF or SVG on request, the same bytes each time."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import List

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.text import Annotation, Text

import hybrid_pg.experiments.ablate_report as ablate_report
import hybrid_pg.experiments.lambda_figure as lambda_figure
import hybrid_pg.experiments.plots as plots
from hybrid_pg.experiments import figure_io
from hybrid_pg.experiments.cli import main

LONG_NAME = "pendulum_critic__hybrid_replay_s12_0123abcd"  # run names are about 40 characters


def _write_run(run_dir: Path, n: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    steps = np.arange(1, n + 1) * 1024
    lines = ["update,timesteps,time/elapsed,rollout/ep_rew_mean,hybrid/lambda,hybrid/var_path,hybrid/var_score,hybrid/corr"]
    for i, t in enumerate(steps):
        lines.append(
            f"{i + 1},{t},{0.5 * i},{-1200 + 25 * i + 20 * rng.normal()},{min(1, 0.02 * i)},"
            f"{np.exp(rng.normal())},{10 * np.exp(rng.normal())},{np.tanh(rng.normal())}"
        )
    (run_dir / "diagnostics.csv").write_text("\n".join(lines) + "\n")
    evals = ["timesteps,mean,std"] + [f"{t},{-1100 + 30 * i},{50 + i}" for i, t in enumerate(steps[::5])]
    (run_dir / "evaluations.csv").write_text("\n".join(evals) + "\n")
    return run_dir


def _lambda_columns(n: int = 60, learned: bool = True) -> dict:
    rng = np.random.default_rng(1)
    t = np.arange(1, n + 1) * 2048.0
    return {
        "timesteps": t,
        "hybrid/lambda": np.clip(np.linspace(0.0, 0.8, n) + 0.02 * rng.normal(size=n), 0, 1),
        "hybrid/var_path": np.exp(rng.normal(size=n)) * 1e-2,
        "hybrid/var_score": 1e3 * np.exp(rng.normal(size=n)),
        "hybrid/corr": np.tanh(rng.normal(size=n)),
        "hybrid/variance_ratio_vs_reinforce": np.exp(-2 + 0.5 * rng.normal(size=n)),
        "hybrid/variance_reduction_vs_better": np.full(n, 0.4),
        "hybrid/oracle_lambda_var": np.linspace(0.2, 0.9, n),
        "hybrid/oracle_lambda_var_se": np.full(n, 0.05),
        "hybrid/oracle_lambda_mse": np.linspace(0.1, 0.7, n),
        "hybrid/oracle_lambda_mse_se": np.full(n, 0.05),
        "hybrid/oracle_lambda_is_mse": np.full(n, 1.0 if learned else 0.0),
    }


def _result(seed: int, n: int = 50) -> dict:
    """A finished run as load_result returns it (progress rows only)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        rows.append(
            {
                "time/total_timesteps": float(2048 * (i + 1)),
                "rollout/ep_rew_mean": 100.0 * i + 50 * rng.normal(),
                "hybrid/var_applied": float(np.exp(3 + rng.normal())),
                "hybrid/variance_ratio_vs_reinforce": float(np.exp(-2 + 0.3 * rng.normal())),
                "hybrid/lambda": float(min(1.0, 0.02 * i)),
            }
        )
    return {"rows": rows, "spec": {"seed": seed}, "key": f"run_s{seed}"}


RESULTS = {name: [_result(10 * k + s) for s in range(3)] for k, name in enumerate(("ppo", "reinforce", "hybrid", "hybrid_replay"))}
PROFILE = {name: (np.linspace(1, 0, 51), np.linspace(0.9, 0, 51), np.linspace(1, 0.1, 51)) for name in RESULTS}


def _draw(tmp_path: Path, suffix: str = "png") -> dict:
    """name -> a callable that writes one figure type under tmp_path."""
    one = _write_run(tmp_path / LONG_NAME)
    several = [one] + [_write_run(tmp_path / f"{LONG_NAME}_{k}", seed=k) for k in (1, 2)]
    return {
        "returns": lambda: plots.plot_returns([one], tmp_path / f"returns.{suffix}"),
        "returns_overlay": lambda: plots.plot_returns(several, tmp_path / f"overlay.{suffix}"),
        "lambda": lambda: plots.plot_lambda(one, tmp_path / f"lambda.{suffix}"),
        "lambda_oracle": lambda: lambda_figure.plot_lambda_columns(_lambda_columns(), tmp_path / f"lam_o.{suffix}", title=LONG_NAME),
        "lambda_empty": lambda: lambda_figure.plot_lambda_columns({"timesteps": np.arange(3.0)}, tmp_path / f"lam_e.{suffix}"),
        "curves": lambda: ablate_report.plot_curves(RESULTS, tmp_path / f"curves.{suffix}", "Pendulum-v1 (pendulum_critic)"),
        "variance": lambda: ablate_report.plot_variance(RESULTS, tmp_path / f"variance.{suffix}", "Pendulum-v1 (pendulum_critic)"),
        "weight": lambda: ablate_report.plot_lambda(RESULTS, tmp_path / f"weight.{suffix}", "Pendulum-v1 (pendulum_critic)"),
        "weight_empty": lambda: ablate_report.plot_lambda({"reinforce": []}, tmp_path / f"w_e.{suffix}", "Pendulum-v1"),
        "profile": lambda: ablate_report._plot_profiles(PROFILE, 3, tmp_path / f"profile.{suffix}"),
    }


def _capture(monkeypatch) -> List[Figure]:
    """Record every figure the modules save (and still write it)."""
    figures: List[Figure] = []
    real = figure_io.save_figure

    def save(fig, path, *args, **kwargs):
        figures.append(fig)
        return real(fig, path, *args, **kwargs)

    for module in (plots, lambda_figure, ablate_report):
        monkeypatch.setattr(module, "save_figure", save)
    return figures


def _texts(fig: Figure) -> List[Text]:
    """The texts the figure shows: every visible, non-empty text, tick labels only at ticks within
    their axis' view (matplotlib keeps, but does not draw, the others)."""
    hidden = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not low - 1e-9 * abs(high - low) <= tick.get_loc() <= high + 1e-9 * abs(high - low):
                    hidden |= {id(tick.label1), id(tick.label2)}
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in hidden]


def _inside_legend(t: Text, legends: List[Legend]) -> bool:
    return any(t in leg.get_texts() or t is leg.get_title() for leg in legends)


FIGURES = [
    "returns",
    "returns_overlay",
    "lambda",
    "lambda_oracle",
    "lambda_empty",
    "curves",
    "variance",
    "weight",
    "weight_empty",
    "profile",
]


@pytest.mark.parametrize("name", FIGURES)
def test_no_text_is_cut_or_covered(monkeypatch, tmp_path, name):
    figures = _capture(monkeypatch)
    written = _draw(tmp_path)[name]()
    assert written.stat().st_size > 5_000
    (fig,) = figures
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    texts = _texts(fig)
    legends = [leg for leg in fig.findobj(Legend)]
    boxes = {id(t): t.get_window_extent(renderer) for t in texts}
    for t in texts:
        box = boxes[id(t)]
        assert page.x0 - 1 <= box.x0 and box.x1 <= page.x1 + 1 and page.y0 - 1 <= box.y0 and box.y1 <= page.y1 + 1, (
            f"{name}: {t.get_text()!r} reaches past the figure's edge: {box} vs {page}"
        )
    plot_areas = [ax.bbox for ax in fig.axes if ax.get_visible()]
    loose = [t for t in texts if not _inside_legend(t, legends)]
    for leg in legends:
        frame = leg.get_window_extent(renderer)
        for area in plot_areas:
            assert not frame.overlaps(area), f"{name}: a legend covers a plotting area"
        for t in loose:
            assert not frame.overlaps(boxes[id(t)]), f"{name}: the legend covers {t.get_text()!r}"
    # no two texts outside legends on top of each other (labels, ticks, titles, footnotes)
    for i, a in enumerate(loose):
        for b in loose[i + 1 :]:
            assert not boxes[id(a)].overlaps(boxes[id(b)]), f"{name}: {a.get_text()!r} overlaps {b.get_text()!r}"
    notes = [t for t in texts if isinstance(t, Annotation)]
    for note in notes:
        for area in plot_areas:
            assert not boxes[id(note)].overlaps(area), f"{name}: the footnote runs into a plotting area"
    # axis labels and titles in words, not logger keys
    for ax in fig.axes:
        for label in (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()):
            assert "rollout/" not in label and "hybrid/" not in label, label


def test_returns_names_the_run_once_and_explains_every_band(monkeypatch, tmp_path):
    figures = _capture(monkeypatch)
    draw = _draw(tmp_path)
    draw["returns"]()
    draw["returns_overlay"]()
    single, overlay = figures
    (ax,) = single.axes
    assert LONG_NAME in ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert not any(LONG_NAME in label for label in labels)  # the run name is in the title, not in every label
    assert any("std over episodes" in label for label in labels) and any("last 100 episodes" in label for label in labels)
    assert any("lags" in t.get_text() for t in ax.texts)
    overlay_labels = [t.get_text() for t in overlay.axes[0].get_legend().get_texts()]
    assert sum(LONG_NAME in label for label in overlay_labels) == 3  # one colour key per run, once each


def test_every_band_of_the_ablation_figures_is_explained(monkeypatch, tmp_path):
    figures = _capture(monkeypatch)
    draw = _draw(tmp_path)
    for name in ("curves", "variance", "weight", "profile"):
        draw[name]()
    for fig in figures:
        titles = [leg.get_title().get_text() for leg in fig.findobj(Legend)]
        assert any("shaded: 95%" in title for title in titles), titles


def test_lambda_log_ticks_are_plain_numbers(monkeypatch, tmp_path):
    figures = _capture(monkeypatch)
    _draw(tmp_path)["lambda_oracle"]()
    (fig,) = figures
    fig.canvas.draw()
    ratio_axis = fig.axes[1]
    low, high = ratio_axis.get_ylim()
    shown = [t.get_text() for t in ratio_axis.get_yticklabels() if low <= t.get_position()[1] <= high and t.get_text()]
    assert len(shown) >= 4, shown  # 1-2-5 ticks, not a lone 10^0
    assert not any("10^" in s or "$" in s for s in shown), shown
    assert {"0.1", "1"} <= set(shown), shown


@pytest.mark.parametrize("suffix", ["pdf", "svg"])
def test_vector_figures_are_the_same_bytes_each_time(tmp_path, suffix):
    draw = _draw(tmp_path, suffix)
    first = draw["returns"]().read_bytes()
    second = draw["returns"]().read_bytes()
    assert first == second and len(first) > 1000
    assert draw["curves"]().suffix == f".{suffix}"


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def test_plot_writes_the_format_asked_for(tmp_path):
    run = _write_run(tmp_path / "run")
    status, out, err = _cli(["plot", str(run), "--format", "svg"])
    assert status == 0, err
    assert (run / "returns.svg").read_bytes().lstrip().startswith(b"<?xml") and (run / "lambda.svg").is_file()
    status, _, err = _cli(["plot", str(run), "--out", str(tmp_path / "both.pdf")])
    assert status == 0 and (tmp_path / "both.pdf").read_bytes().startswith(b"%PDF")
    status, _, err = _cli(["plot", str(run), "--out", str(tmp_path / "both.jpg")])
    assert status == 2 and ".png, .pdf or .svg" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        _cli(["plot", str(run), "--format", "jpg"])
    assert exc.value.code == 2


def test_a_figure_path_names_its_formats():
    assert figure_io.figure_path("d", "returns", "pdf") == Path("d/returns.pdf")
    with pytest.raises(ValueError, match="png, pdf, svg"):
        figure_io.figure_path("d", "returns", "jpg")
