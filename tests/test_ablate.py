"""``hybrid-pg ablate``: the ablation file, the grid's validation, a tiny parallel run, resuming."""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
from pathlib import Path

import pytest
import yaml

import hybrid_pg.experiments.runner as runner
from hybrid_pg.experiments.ablate import load_ablation, parse_ablation, validate_cells
from hybrid_pg.experiments.cli import main
from hybrid_pg.experiments.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "ablate_smoke.yaml"
PENDULUM = REPO / "configs" / "ablate_pendulum.yaml"
ENVS = ("Pendulum-v1", "hybrid_pg-Pendulum-v0")  # the smoke file's env names (sanitised ids)


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def _mtimes(folder: Path):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablate") / "smoke"
    status, stdout, err = _run(["ablate", str(SMOKE), "--out", str(out), "--workers", "2", "--quiet"])
    assert status == 0, err
    return out, stdout


# ------------------------------------------------------------------------------------------------
# a tiny grid, run twice
# ------------------------------------------------------------------------------------------------


def test_smoke_ablation_writes_tables_and_figures(smoke_run):
    out, stdout = smoke_run
    assert len(list((out / "runs").glob("*/result.json"))) == 8  # 2 envs x 2 estimators x 2 seeds
    for run_dir in (out / "runs").iterdir():  # the run engine's directory, as `hybrid-pg train` writes it
        for name in ("config.yaml", "model.zip", "progress.csv", "diagnostics.csv", "evaluations.csv"):
            assert (run_dir / name).is_file(), (run_dir, name)
    for env in ENVS:
        for name in (
            f"table_{env}.md",
            f"table_{env}.csv",
            f"runs_{env}.csv",
            f"curves_{env}.png",
            f"variance_{env}.png",
            f"lambda_{env}.png",
        ):
            assert (out / name).is_file() and (out / name).stat().st_size > 0, name
            assert str(out / name) in stdout.split()
        with (out / f"table_{env}.csv").open() as fh:
            rows = {r["estimator"]: r for r in csv.DictReader(fh)}
        assert set(rows) == {"hybrid", "reinforce"}
        hybrid, reference = rows["hybrid"], rows["reinforce"]
        for metric in ("final_return", "auc", "var_applied", "variance_ratio"):
            low, point, high = (float(hybrid[f"{metric}_mean{s}"]) for s in ("_lo", "", "_hi"))
            assert low <= point <= high, (env, metric)
            assert hybrid[f"{metric}_iqm"] == ""  # 2 seeds: the IQM would only repeat the mean
            # 2 seeds per cell: paired by seed, and never called significant
            assert hybrid[f"{metric}_paired"] == "1" and hybrid[f"{metric}_test"] == "wilcoxon"
            assert hybrid[f"{metric}_verdict"] == "too few runs" and hybrid[f"{metric}_significant"] == "0"
            assert reference[f"{metric}_diff_vs_ref"] == ""  # the reference is not compared with itself
        assert float(reference["variance_ratio_mean"]) == pytest.approx(1.0)  # REINFORCE is the score gradient
        md = (out / f"table_{env}.md").read_text()
        assert "## Compared with reinforce" in md and "| hybrid | final return |" in md and "IQM" in md
        assert "too few runs" in md and ", significant" not in md
        assert (out / f"curves_{env}.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("summary.md", "summary.csv", "performance_profile.png"):  # across envs
        assert (out / name).is_file() and str(out / name) in stdout.split(), name


def test_a_second_invocation_trains_nothing(smoke_run, monkeypatch):
    out, _ = smoke_run
    before = {d.name: _mtimes(d) for d in (out / "runs").iterdir()}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(runner, "_run_fresh", no_training)
    monkeypatch.setattr(runner, "run", no_training)
    status, stdout, err = _run(["ablate", str(SMOKE), "--out", str(out), "--workers", "2"])
    assert status == 0, err
    assert "8 done, 0 to train" in stdout and "trained 0 of 8 runs" in stdout
    assert {d.name: _mtimes(d) for d in (out / "runs").iterdir()} == before


def test_report_only_rewrites_the_tables_and_trains_nothing(smoke_run, monkeypatch, tmp_path):
    out, _ = smoke_run
    copy = tmp_path / "copy"
    shutil.copytree(out / "runs", copy / "runs")
    some = sorted((copy / "runs").iterdir())[0]
    (some / "result.json").unlink()  # an unfinished run: left alone, left out of the tables

    def no_training(*args, **kwargs):
        raise AssertionError("--report-only trained a run")

    monkeypatch.setattr(runner, "train_grid", no_training)
    monkeypatch.setattr(runner, "run", no_training)
    status, stdout, err = _run(["ablate", str(SMOKE), "--out", str(copy), "--report-only", "--quiet"])
    assert status == 0, err
    assert (copy / "summary.md").exists() and any(p.name.startswith("table_") for p in copy.iterdir())
    assert not (some / "result.json").exists() and some.exists()


def test_dry_run_lists_the_grid_and_trains_nothing(tmp_path):
    status, stdout, err = _run(["ablate", str(SMOKE), "--out", str(tmp_path / "dry"), "--dry-run", "--seeds", "0", "1", "2"])
    assert status == 0, err
    assert "2 envs x 2 estimators x 3 seeds = 12 runs, 0 done, 12 to train" in stdout
    assert "Pendulum-v1__hybrid" in stdout and "hybrid_pg-Pendulum-v0__reinforce" in stdout
    assert not (tmp_path / "dry").exists()


def test_the_shipped_pendulum_ablations_are_valid():
    ablation = load_ablation(PENDULUM)
    assert ablation.seeds == (0, 1, 2, 3, 4) and ablation.reference == "reinforce"
    assert [e.id for e in ablation.envs] == ["Pendulum-v1", "hybrid_pg/Pendulum-v0"]
    assert [e.name for e in ablation.estimators] == ["hybrid", "reinforce", "pathwise"]
    cells = {c.label: c.algo_kwargs for c in ablation.cells}
    assert cells["pendulum_model__hybrid"]["pathwise_source"] == "model"
    assert cells["pendulum_critic__pathwise"]["estimator"] == "pathwise"
    runs = ablation.runs()
    assert len(runs) == 30 and len({runner.run_key(label, config) for label, config in runs}) == 30
    assert all(config["algo"]["algorithm"] == "hybrid_pg" for _, config in runs)

    fixed = load_ablation(PENDULUM.parent / "ablate_fixed_lambda.yaml")
    assert [e.name for e in fixed.estimators] == ["hybrid", "reinforce", "lam0.25", "lam0.5", "lam0.75"]
    cells = {c.label: c.algo_kwargs for c in fixed.cells}
    assert cells["pendulum_model__lam0.5"]["fixed_lambda"] == 0.5
    assert cells["pendulum_model__lam0.5"]["pathwise_source"] == "model"
    assert len(fixed.runs()) == 50


# ------------------------------------------------------------------------------------------------
# bad ablation files fail up front, naming the key, writing nothing
# ------------------------------------------------------------------------------------------------

BASE = {
    "total_timesteps": 256,
    "seeds": [0],
    "algo": {"n_steps": 128},
    "envs": [{"id": "Pendulum-v1", "algo": {"pathwise_source": "critic"}}],
    "estimators": ["hybrid", "reinforce"],
}


def _restrict_reference(raw):
    raw["envs"].append("MountainCarContinuous-v0")
    raw["estimators"][1] = {"name": "reinforce", "algo": {"estimator": "reinforce"}, "envs": ["Pendulum-v1"]}


def _with(change):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    change(raw)
    return raw


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda r: r.update(total_timestep=5), "total_timestep is not a known key"),
        (lambda r: r.pop("envs"), "envs is required"),
        (lambda r: r.update(seeds=[0, -1]), "seeds[1] must be >= 0"),
        (lambda r: r.update(seeds=[0, 0]), "seeds must not repeat"),
        (lambda r: r.update(reference="pathwise"), "reference='pathwise' is not one of the estimators"),
        (lambda r: r.update(fixed_lambdas=[0.5, 1.5]), "fixed_lambdas[1] must be a number in [0, 1]"),
        (lambda r: r["envs"][0].update(n_envs=0), "envs[0].n_envs must be >= 1"),
        (lambda r: r["envs"][0].update(wrapper="x"), "envs[0].wrapper is not a known key"),
        (lambda r: r["estimators"].append({"algo": {}}), "estimators[2].name is required"),
        (lambda r: r["estimators"].append("hybrid"), "estimators[2]: name 'hybrid' is already used by estimators[0]"),
        (lambda r: r["estimators"].append("bad name"), "estimators[2] must be a non-empty name"),
        (lambda r: r.update(baseline={"name": "ppo"}), "baseline.name='ppo' is not one of the estimators"),
        (lambda r: r.update(baseline={"name": "hybrid", "floor": "reinforce"}), "baseline.floor and baseline.floor_at_steps go together"),
        (lambda r: r.update(baseline={"floor": "reinforce"}), "baseline.name is required"),
        (lambda r: r.update(baseline={"name": "hybrid", "flor": "reinforce"}), "baseline.flor is not a known key"),
        (
            lambda r: r["estimators"].append({"name": "x", "envs": ["Pendulm-v1"]}),
            "estimators[2].envs[0]='Pendulm-v1' is not an env entry's name",
        ),
        (lambda r: r["estimators"].append({"name": "x", "envs": []}), "estimators[2].envs must be a non-empty list"),
        (
            lambda r: r["estimators"].append({"name": "x", "envs": "Pendulum-v1"}),
            "estimators[2].envs must be a non-empty list, got 'Pendulum-v1'",
        ),
        (lambda r: _restrict_reference(r), "'reinforce' is the reference, which every env is compared with"),
        (lambda r: r.update(contrasts=[["hybrid", "reinforse"]]), "contrasts[0][1]='reinforse' is not one of the estimators"),
        (lambda r: r.update(contrasts=[["hybrid"]]), "contrasts[0] must be a pair [estimator, against]"),
        (lambda r: r.update(contrasts="hybrid"), "contrasts must be a"),
        (lambda r: r.update(contrasts=[["hybrid", "hybrid"]]), "contrasts[0] compares 'hybrid' with itself"),
        (
            lambda r: r.update(contrasts=[["hybrid", "reinforce"], ["reinforce", "hybrid"]]),
            "contrasts[1]: 'reinforce' and 'hybrid' are already compared",
        ),
    ],
)
def test_bad_ablation_files_name_the_key(change, key):
    with pytest.raises(ConfigError) as info:
        parse_ablation(_with(change))
    assert key in str(info.value)


@pytest.mark.parametrize(
    "change, key",
    [
        # an unknown HybridPG keyword in the shared algo section
        (lambda r: r["algo"].update(n_step=3), "algo.n_step: algo.n_step=3: is not a HybridPG setting"),
        # a wrong type in an env entry's algo
        (lambda r: r["envs"][0]["algo"].update(gamma="high"), "envs[0].algo.gamma: algo.gamma='high': must be a number"),
        # a value HybridPG's constructor rejects, in an estimator mapping
        (
            lambda r: r["estimators"].append({"name": "lam2", "algo": {"estimator": "hybrid", "fixed_lambda": 2.0}}),
            "estimators[2].algo.fixed_lambda: algo.fixed_lambda=2.0",
        ),
        # a bare estimator name that is no estimator
        (lambda r: r["estimators"].append("hybird"), "estimators[2]: algo.estimator='hybird'"),
        # a combination: the model source on an env without a differentiable model
        (
            lambda r: r["envs"][0]["algo"].update(pathwise_source="model"),
            "envs[0].algo.pathwise_source: algo.pathwise_source='model' is not supported here: this env provides no differentiable model",
        ),
        # a setting SB3's PPO does not have, in a baseline cell
        (
            lambda r: r["estimators"].append({"name": "ppo", "algo": {"algorithm": "ppo"}}),
            "algo.pathwise_source is not a setting of SB3's PPO here (its settings: ['learning_rate', 'n_steps',",
        ),
        # the env itself
        (lambda r: r["envs"][0].update(id="CartPole-v1"), "envs[0].id: env.id='CartPole-v1' has action space"),
        (lambda r: r["envs"][0].update(id="NoSuchEnv-v0"), "envs[0].id: env.id='NoSuchEnv-v0' is not a registered"),
    ],
)
def test_bad_cells_fail_before_training_naming_the_key(tmp_path, change, key):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_with(change)))
    out = tmp_path / "out"
    status, stdout, err = _run(["ablate", str(path), "--out", str(out)])
    assert status == 2
    assert key in err, err
    assert "cell env=" in err or ".id:" in err
    assert stdout == "" and not out.exists()


def test_an_estimator_can_be_limited_to_some_envs(tmp_path):
    """``envs`` on an estimator entry: its cells exist on those envs only; the others are untouched."""
    raw = _with(lambda r: r["envs"].append("MountainCarContinuous-v0"))
    raw["estimators"].append({"name": "fixed", "algo": {"estimator": "hybrid", "fixed_lambda": 0.5}, "envs": ["MountainCarContinuous-v0"]})
    path = tmp_path / "limited.yaml"
    path.write_text(yaml.safe_dump(raw))
    ablation = load_ablation(path)
    labels = sorted(cell.label for cell in ablation.cells)
    assert labels == [
        "MountainCarContinuous-v0__fixed",
        "MountainCarContinuous-v0__hybrid",
        "MountainCarContinuous-v0__reinforce",
        "Pendulum-v1__hybrid",
        "Pendulum-v1__reinforce",
    ]
    assert len(ablation.runs()) == 5


def test_missing_file_and_bad_cli_arguments(tmp_path):
    status, _, err = _run(["ablate", str(tmp_path / "none.yaml")])
    assert status == 2 and "config file not found" in err
    with pytest.raises(SystemExit) as info, contextlib.redirect_stderr(io.StringIO()):
        main(["ablate", str(SMOKE), "--workers", "0"])
    assert info.value.code == 2
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        main(["ablate", str(SMOKE), "--seeds", "-1"])


def test_ablate_help():
    with pytest.raises(SystemExit) as info, contextlib.redirect_stdout(io.StringIO()) as out:
        main(["ablate", "--help"])
    assert info.value.code == 0
    text = out.getvalue()
    for option in ("CONFIG", "--workers", "--out", "--seeds", "--dry-run", "IQM"):
        assert option in text


def test_the_mujoco_benchmark_grid_is_valid():
    pytest.importorskip("mujoco")
    ablation = load_ablation(PENDULUM.parent / "mujoco_benchmark.yaml")
    assert [e.id for e in ablation.envs] == ["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5"]
    assert ablation.output_dir == "docs/results/mujoco" and ablation.seeds == (0, 1, 2, 3, 4)
    runs = ablation.runs()
    assert len(runs) == 75  # 3 envs x 5 cells x 5 seeds
    for label, config in runs:
        assert config["env"]["normalize"] is True and config["train"]["eval_freq"] == 20_000 and config["train"]["eval_episodes"] == 5
        assert config["algo"]["n_steps"] == 2048 and config["algo"]["policy_kwargs"] == {"net_arch": [64, 64]}
        assert config["algo"]["algorithm"] == ("ppo" if label.endswith("__ppo") else "hybrid_pg")


def test_the_ten_seed_benchmark_limits_the_source_cells_to_their_tasks():
    pytest.importorskip("mujoco")
    ablation = load_ablation(PENDULUM.parent / "mujoco_benchmark10.yaml")
    cells = {cell.label for cell in ablation.cells}
    assert len(ablation.runs()) == 230  # 4 envs x 5 cells + Hopper, Walker2d x MuJoCo + HalfCheetah x replay, x 10 seeds
    assert {label for label in cells if label.endswith("__hybrid_mujoco")} == {"Hopper-v5__hybrid_mujoco", "Walker2d-v5__hybrid_mujoco"}
    assert {label for label in cells if label.endswith("__hybrid_replay")} == {"HalfCheetah-v5__hybrid_replay"}
    assert all(
        f"{env}__{name}" in cells
        for env in ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5")
        for name in ("ppo", "reinforce", "hybrid", "hybrid_layer_norm", "hybrid_score_std")
    )
    layer_norm = next(c for c in ablation.cells if c.label == "Hopper-v5__hybrid_layer_norm")
    assert layer_norm.config["algo"]["policy_kwargs"] == {"net_arch": [64, 64], "advantage_layer_norm": True}  # merged, not replaced


def test_the_zoo_first_look_gives_both_cells_the_zoos_settings():
    pytest.importorskip("mujoco")
    ablation = load_ablation(PENDULUM.parent / "zoo_first_look.yaml")
    assert len(ablation.runs()) == 12 and ablation.total_timesteps == 1_000_000
    for env in ("HalfCheetah-v5", "Hopper-v5"):
        ppo, hybrid = (next(c for c in ablation.cells if c.label == f"{env}__{name}") for name in ("ppo", "hybrid"))
        shared = {k: v for k, v in ppo.config["algo"].items() if k != "algorithm"}
        assert shared.items() <= hybrid.config["algo"].items()  # the hybrid gets every zoo setting unchanged
        assert shared["policy_kwargs"]["net_arch"] == {"pi": [256, 256], "vf": [256, 256]}


def test_extra_seeds_train_only_themselves_but_the_reports_cover_the_file_seeds_too():
    ablation = load_ablation(SMOKE, seeds=[5])
    assert ablation.seeds == (5,) and ablation.report_seeds == (0, 1, 5)
    assert load_ablation(SMOKE).report_seeds == (0, 1)


def test_a_baseline_section_adds_the_goals_report(smoke_run, tmp_path):
    out, _ = smoke_run
    raw = yaml.safe_load(SMOKE.read_text())
    raw["baseline"] = {"name": "reinforce", "floor": "reinforce", "floor_at_steps": 256}
    config = tmp_path / "with_baseline.yaml"
    config.write_text(yaml.safe_dump(raw))
    before = _mtimes(out / "runs")
    status, stdout, err = _run(["ablate", str(config), "--out", str(out), "--report-only"])
    assert status == 0, err
    assert _mtimes(out / "runs") == before  # the baseline is not part of a run's name: nothing retrains
    text = (out / "goals_reinforce.md").read_text()
    assert str(out / "goals_reinforce.md") in stdout.split()
    for env in ENVS:
        assert f"## {env}" in text
    assert "| hybrid | 2 |" in text and "not decided: fewer than 5 runs per side" in text


def test_a_grid_adopts_the_runs_another_grid_finished_with_the_same_settings(smoke_run, monkeypatch, tmp_path):
    out, _ = smoke_run
    raw = yaml.safe_load(SMOKE.read_text())
    raw["envs"][0]["name"] = "renamed"  # a new label: only the seed and the settings' hash identify a run
    raw["envs"][1]["algo"]["learning_rate"] = 5e-4  # new settings: nothing to adopt for this env
    raw["reuse_runs_from"] = [str(out)]
    config = tmp_path / "reuse.yaml"
    config.write_text(yaml.safe_dump(raw))
    status, stdout, err = _run(["ablate", str(config), "--out", str(tmp_path / "new"), "--dry-run"])
    assert status == 0, err
    assert "8 runs, 0 done, 8 to train (4 of them finished by another grid, copied from reuse_runs_from)" in stdout
    assert not (tmp_path / "new").exists()  # a dry run copies nothing

    trained = []

    def train_grid(runs, runs_dir, **kw):
        trained.extend(label for label, _ in runner.pending(runs, runs_dir))
        return runner.GridOutcome(trained=[], held=[])

    monkeypatch.setattr(runner, "train_grid", train_grid)
    status, stdout, err = _run(["ablate", str(config), "--out", str(tmp_path / "new"), "--quiet"])
    assert status == 0, err
    assert sorted(set(trained)) == ["hybrid_pg-Pendulum-v0__hybrid", "hybrid_pg-Pendulum-v0__reinforce"]
    adopted = sorted((tmp_path / "new" / "runs").glob("renamed__*"))
    assert len(adopted) == 4 and all(runner.is_finished(d) for d in adopted)
    for run_dir in adopted:
        source = Path((run_dir / runner.ADOPTED_FILE).read_text().strip())
        assert source.parent == out / "runs" and source.name.replace("Pendulum-v1", "renamed") == run_dir.name
        assert (run_dir / "result.json").read_bytes() == (source / "result.json").read_bytes()
    assert (tmp_path / "new" / "table_renamed.md").is_file()  # the adopted runs are in the report


def test_contrasts_are_read_and_leave_the_run_keys_alone(tmp_path):
    # a report-only key: adding it must not rename (and so retrain) a single run
    raw = _with(lambda r: r.update(contrasts=[["hybrid", "reinforce"]]))
    ablation = parse_ablation(raw)
    assert ablation.contrasts == (("hybrid", "reinforce"),)
    assert parse_ablation(_with(lambda r: None)).contrasts == ()
    with_pairs = validate_cells(ablation)
    without = validate_cells(parse_ablation(_with(lambda r: None)))
    assert [cfg for _, cfg in with_pairs.runs()] == [cfg for _, cfg in without.runs()]


def test_reuse_runs_from_must_name_folders(tmp_path):
    raw = yaml.safe_load(SMOKE.read_text())
    raw["reuse_runs_from"] = [str(tmp_path / "no_such_grid")]
    config = tmp_path / "reuse.yaml"
    config.write_text(yaml.safe_dump(raw))
    status, _, err = _run(["ablate", str(config), "--out", str(tmp_path / "new"), "--dry-run"])
    assert status == 2 and "reuse_runs_from: " in err and "no_such_grid is not a folder" in err
    raw["reuse_runs_from"] = [""]
    with pytest.raises(ConfigError, match=r"reuse_runs_from\[0\] must be a folder"):
        parse_ablation(raw)
