"""Console and plots: the progress bar's total, coinciding curves stay visible, the returns figure
says what its band and its lag are, `hybrid-pg plot` on a non-run directory and on tensorboard logs."""

from __future__ import annotations

import contextlib
import io

import numpy as np

import hybrid_pg.experiments.ablate_report as ablate_report
import hybrid_pg.experiments.plots as plots
from hybrid_pg.experiments.cli import main
from hybrid_pg.experiments.csv_callbacks import rollout_budget


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def _capture(monkeypatch, module):
    figures = []

    def save(fig, path, *args, **kwargs):
        figures.append(fig)
        return path

    monkeypatch.setattr(module, "save_figure", save)
    return figures


def test_progress_total_is_the_rollout_rounded_budget():
    assert rollout_budget(80_000, 1024) == 80_896  # the 80,896/80,000
    assert rollout_budget(1, 1024) == 1024  # ... and its 1,024/1
    assert rollout_budget(2048, 1024) == 2048
    assert rollout_budget(500, None) == 500 and rollout_budget(500, 0) == 500


def test_progress_bar_never_passes_its_total():
    from stable_baselines3 import PPO

    from hybrid_pg.experiments.csv_callbacks import RolloutProgressBar

    bar = RolloutProgressBar()
    model = PPO("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=64, n_epochs=1, device="cpu", seed=0)
    model.learn(100, callback=bar)
    assert bar.total == 128 and bar.shown == 128 and model.num_timesteps == 128


def _result(seed, values):
    rows = [{"time/total_timesteps": float(100 * (i + 1)), "rollout/ep_rew_mean": v} for i, v in enumerate(values)]
    return {"final_return": values[-1], "rows": rows, "spec": {"seed": seed}, "key": f"k{seed}"}


def test_coinciding_curves_have_distinct_styles(monkeypatch, tmp_path):
    figures = _capture(monkeypatch, ablate_report)
    same = {"hybrid": [_result(0, [1.0, 2.0, 3.0])], "reinforce": [_result(0, [1.0, 2.0, 3.0])]}
    ablate_report.plot_curves(same, tmp_path / "c.png", "t")
    lines = figures[0].axes[0].get_lines()
    assert len(lines) == 2
    assert lines[0].get_linestyle() != lines[1].get_linestyle()
    assert lines[0].get_linewidth() > lines[1].get_linewidth() and lines[0].get_zorder() < lines[1].get_zorder()


def _write_run(run_dir):
    run_dir.mkdir()
    (run_dir / "diagnostics.csv").write_text("update,timesteps,time/elapsed,rollout/ep_rew_mean\n1,100,0.1,-5\n2,200,0.2,-4\n")
    (run_dir / "evaluations.csv").write_text("timesteps,mean,std\n100,-4.5,1.0\n200,-3.0,0.5\n")


def test_returns_band_and_lag_are_labelled(monkeypatch, tmp_path):
    figures = _capture(monkeypatch, plots)
    _write_run(tmp_path / "run")
    plots.plot_returns([tmp_path / "run"], tmp_path / "r.png")
    ax = figures[0].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("std over episodes" in t for t in labels) and any("last 100 episodes" in t for t in labels)
    assert any("lags" in t.get_text() for t in ax.texts)


def test_plot_on_a_directory_that_is_not_a_run_exits_2(tmp_path):
    status, _, err = _run(["plot", str(tmp_path)])
    assert status == 2 and "not a run directory" in err and "Traceback" not in err


def test_plot_reads_an_sb3_tensorboard_directory(tmp_path):
    from stable_baselines3.common.logger import Logger, make_output_format

    tb = tmp_path / "tb" / "PPO_1"
    logger = Logger(folder=str(tb), output_formats=[make_output_format("tensorboard", str(tb))])
    for step, value in ((1000, -900.0), (2000, -700.0), (3000, -400.0)):
        logger.record("rollout/ep_rew_mean", value)
        logger.record("eval/mean_reward", value + 50)
        logger.dump(step)
    logger.close()
    status, out, err = _run(["plot", str(tmp_path / "tb")])
    assert status == 0, err
    assert (tmp_path / "tb" / "returns.png").is_file() and (tmp_path / "tb" / "lambda.png").is_file()
    diag, evals = plots._run_columns(tmp_path / "tb")
    assert np.allclose(diag["timesteps"], [1000, 2000, 3000]) and np.allclose(diag["rollout/ep_rew_mean"], [-900, -700, -400])
    assert np.allclose(evals["mean"], [-850, -650, -350])
