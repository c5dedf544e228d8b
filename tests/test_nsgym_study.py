"""NS-Gym through configs: the ``nsgym`` wrapper alias (hybrid_pg_envs.nsgym.NSGymWrapper) built by
the run engine (DummyVecEnv and SubprocVecEnv, the oracle on), its schedule against NS-Gym's own
update rule, the oracle's copy, the env checkers, errors naming the bad key, and the control study's
NS-Gym tasks (``schedules_via: nsgym``) with ``--quick`` end to end."""

from __future__ import annotations

import functools
import importlib.util
import json
import pickle
from pathlib import Path

import gymnasium as gym
import pytest
import yaml

ns_gym = pytest.importorskip("ns_gym")

from gymnasium.utils.env_checker import check_env as gym_check_env  # noqa: E402
from ns_gym.schedulers import ContinuousScheduler, PeriodicScheduler  # noqa: E402
from ns_gym.update_functions import IncrementUpdate, LinearInterpolation  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.env_checker import check_env as sb3_check_env  # noqa: E402

from hybrid_pg.experiments.config import ConfigError, load_config  # noqa: E402
from hybrid_pg.experiments.runner import load_result, make_env, run  # noqa: E402
from hybrid_pg_envs.nsgym import NSGymWrapper, make_nsgym_env, parameter_rules  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STUDY_CONFIG = ROOT / "configs" / "nonstationary_control.yaml"
EXPECTED_WARNINGS = ("symmetric and normalized", "infinity", "different from the unwrapped")

CONFIG_YAML = """
env:
  id: Pendulum-v1
  n_envs: 2
  vec_env: {vec_env}
  wrappers:
    - name: nsgym
      kwargs:
        tunable_params:
          m: {{update_fn: IncrementUpdate, update_kwargs: {{k: 0.1}}, scheduler: PeriodicScheduler, scheduler_kwargs: {{period: 64}}}}
          g: {{update_fn: LinearInterpolation, update_kwargs: {{start_val: 10.0, end_val: 12.0, T: 400}}, scheduler: ContinuousScheduler}}
        steps_per_tick: 2
        schedule_seed: 0
algo: {{n_steps: 64, batch_size: 64, n_epochs: 1, oracle_freq: 1, oracle_samples: 64, pathwise_source: critic}}
train: {{total_timesteps: 384}}
"""


def _load(tmp_path: Path, vec_env: str = "dummy", overrides=()):
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG_YAML.format(vec_env=vec_env))
    return load_config(path, overrides)  # builds the env once (check_env)


def _native_path(last_clock: int):
    """NS-Gym's own update rule: its update functions called at every t = 0..last_clock, as its
    wrapper does at step t; entry c holds the parameters of the transition at clock c."""
    fns = {"m": IncrementUpdate(PeriodicScheduler(period=64), k=0.1), "g": LinearInterpolation(ContinuousScheduler(), 10.0, 12.0, T=400)}
    values, path = {"m": 1.0, "g": 10.0}, []
    for t in range(last_clock + 1):
        for name, fn in fns.items():
            values[name] = fn(values[name], t)[0]
        path.append(dict(values))
    return path


class _Probe(BaseCallback):
    """Records each transition's (clock, parameters) and, at the end, the oracle's env copy."""

    def __init__(self):
        super().__init__()
        self.seen, self.oracle = [], None

    def _on_step(self) -> bool:
        self.seen += [(info["env_clock"], info["env_params"]) for info in self.locals["infos"]]
        return True

    def _on_training_end(self) -> None:
        env = self.model.oracle._live.env
        self.oracle = (self.model.rollout_clock, env.env_method("get_clock"), env.env_method("get_wrapper_attr", "current_params"))


@pytest.mark.parametrize("vec_env", ["dummy", "subproc"])
def test_config_wrapper_through_the_run_engine(vec_env, tmp_path):
    config = _load(tmp_path, vec_env)
    # the env factory the engine hands to SubprocVecEnv pickles (plain config data)
    factory = pickle.loads(pickle.dumps(functools.partial(make_env, config["env"]["id"], config["env"]["wrappers"])))
    assert isinstance(factory().get_wrapper_attr("params_at")(0), dict)
    probe = _Probe()
    result = run(config, tmp_path / "run", callbacks=[probe])
    assert result.timesteps == 384 and (tmp_path / "run" / "result.json").is_file()
    # the training env's schedule is NS-Gym's update rule on the global clock (2 envs: 2 per step)
    clocks = [clock for clock, _ in probe.seen]
    assert clocks == [2 * (i // 2) for i in range(384)]
    native = _native_path(max(clocks) + 2)
    for clock, params in probe.seen:
        assert params == pytest.approx(native[clock], rel=1e-12, abs=0.0), clock
    assert native[128]["m"] == pytest.approx(1.3) and native[383]["g"] == pytest.approx(10.0 + 2.0 * 383 / 400)
    # the oracle's copy (deep copy in-process; rebuilt from env.spec for SubprocVecEnv) is held at the
    # last rollout's midpoint with the training env's parameters of that clock
    rollout_clock, oracle_clocks, oracle_params = probe.oracle
    assert set(oracle_clocks) == {rollout_clock}
    assert all(p == pytest.approx(native[rollout_clock], rel=1e-12, abs=0.0) for p in oracle_params)
    rows = load_result(tmp_path / "run")["rows"]
    assert any("env/m" in row and "env/g" in row for row in rows)
    assert any("hybrid/oracle_lambda" in row for row in rows)


def test_config_wrapper_passes_the_env_checkers(tmp_path, run_env_checker):
    config = _load(tmp_path)
    env_id, wrappers = config["env"]["id"], config["env"]["wrappers"]
    run_env_checker(lambda e: gym_check_env(e, skip_render_check=True), make_env(env_id, wrappers), EXPECTED_WARNINGS)
    run_env_checker(sb3_check_env, make_env(env_id, wrappers), EXPECTED_WARNINGS)


def test_config_wrapper_on_mujoco_passes_the_env_checker(run_env_checker):
    pytest.importorskip("mujoco")
    rule = {
        "update_fn": "IncrementUpdate",
        "update_kwargs": {"k": 1.5},
        "scheduler": "PeriodicScheduler",
        "scheduler_kwargs": {"period": 50, "start": 1},
    }
    env = make_env("HalfCheetah-v5", [{"name": "nsgym", "kwargs": {"tunable_params": {"torso_mass": rule}}}])
    run_env_checker(lambda e: gym_check_env(e, skip_render_check=True), env, EXPECTED_WARNINGS)
    mass0 = env.get_wrapper_attr("params_at")(0)["torso_mass"]
    assert env.get_wrapper_attr("params_at")(49)["torso_mass"] == mass0
    assert env.get_wrapper_attr("params_at")(50)["torso_mass"] == pytest.approx(mass0 + 1.5)


@pytest.mark.parametrize(
    "override, named",
    [
        ("env.wrappers[0].kwargs.schedule_sed=0", ["schedule_sed", "did you mean 'schedule_seed'"]),
        ("env.wrappers[0].kwargs.tunable_params.mass={update_fn: NoUpdate, scheduler: ContinuousScheduler}", ["'mass'", "tunable"]),
        ("env.wrappers[0].kwargs.tunable_params.m.update={k: 1}", ["tunable_params['m']", "'update'"]),
        ("env.wrappers[0].kwargs.tunable_params.m.update_kwargs={kk: 0.1}", ["tunable_params['m']", "'kk'"]),
        ("env.wrappers[0].kwargs.tunable_params.g.scheduler=Continuous", ["tunable_params['g']", "'Continuous'", "'ContinuousScheduler'"]),
        ("env.wrappers[0].kwargs.steps_per_tick=-1", ["steps_per_tick"]),
    ],
)
def test_bad_kwargs_give_a_config_error_naming_the_key(override, named, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG_YAML.format(vec_env="dummy"))
    raw = yaml.safe_load(path.read_text())
    # --set does not index lists: edit the wrapper's kwargs in the file instead
    keys, value = override.split("=", 1)
    node = raw["env"]["wrappers"][0]["kwargs"]
    parts = keys.split(".")[3:]
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    message = str(exc.value)
    assert message.startswith("env.wrappers[0] (nsgym) rejected its kwargs")
    for text in named:
        assert text in message, (text, message)


def test_rules_per_parameter_and_shared():
    rules = parameter_rules(
        {"m": {"update_kwargs": {"k": 0.5}}, "l": {}},
        scheduler="DiscreteScheduler",
        scheduler_kwargs={"event_list": [3]},
        update_fn="IncrementUpdate",
        update_kwargs={"k": 0.1},
    )
    assert rules["m"]["update_kwargs"] == {"k": 0.5} and rules["l"]["update_kwargs"] == {"k": 0.1}
    env = NSGymWrapper(gym.make("Pendulum-v1"), rules)
    assert env.params_at(2) == {"m": 1.0, "l": 1.0} and env.params_at(3) == pytest.approx({"m": 1.5, "l": 1.1})
    with pytest.raises(ValueError, match="not used"):
        make_nsgym_env("Pendulum-v1", {"m": IncrementUpdate(ContinuousScheduler(), k=1.0)}, scheduler="PeriodicScheduler")
    with pytest.raises(ValueError, match="empty"):
        parameter_rules([])


# ---------------------------------------------------------------------------------------------
# the control study's NS-Gym tasks
# ---------------------------------------------------------------------------------------------


def _study():
    spec = importlib.util.spec_from_file_location("nonstationary_control_study", ROOT / "examples" / "nonstationary_control_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_study_nsgym_tasks_grid_and_switch_times():
    study, cfg = _study(), yaml.safe_load(STUDY_CONFIG.read_text())
    pend, cheetah = cfg["tasks"]["nsgym_pendulum"], cfg["tasks"]["nsgym_halfcheetah"]
    assert [study.is_stationary(study.env_rules(pend, e)) for e in pend["envs"]] == [True, False, False]
    assert study.moving_parameter(study.env_rules(pend, "drifting_g")) == "g"
    # PeriodicScheduler(period=P, start=1): NS-Gym's own scheduler fires at P, 2P, ... (t = 0 skipped)
    assert study.switch_times(pend, "stepping_m") == [25000.0, 50000.0, 75000.0]
    assert study.switch_times(pend, "drifting_g") == [] and study.switch_times(pend, "stationary") == []
    assert study.switch_times(cheetah, "stepping_torso_mass") == [100000.0, 200000.0]
    runs = dict(study.build_runs(cfg, ["nsgym_pendulum", "nsgym_halfcheetah"], [3]))
    env = runs["nsgym_pendulum__stepping_m__hybrid_adaptive_16"]["env"]
    assert env["id"] == "Pendulum-v1" and env["n_envs"] == 4
    assert env["wrappers"][0]["name"] == "nsgym"
    assert env["wrappers"][0]["kwargs"]["steps_per_tick"] == 4 and env["wrappers"][0]["kwargs"]["schedule_seed"] == 3
    assert runs["nsgym_pendulum__stepping_m__hybrid_adaptive_16"]["algo"]["pathwise_source"] == "critic"
    assert runs["nsgym_pendulum__stationary__hybrid_adaptive_16"]["algo"]["oracle_frozen_clock"] is None
    assert runs["nsgym_halfcheetah__drifting_friction__ppo"]["env"]["normalize"] is True
    bad = {**pend, "envs": {"x": {**pend["envs"]["stepping_m"], "steps_per_tick": 1}}}
    with pytest.raises(ValueError, match="set by the study"):
        study.run_config_for(bad, cfg, "x", "reinforce", 0)


def test_study_quick_on_nsgym_pendulum(tmp_path):
    out = tmp_path / "out"
    _study().main([str(STUDY_CONFIG), "--quick", "--task", "nsgym_pendulum", "--out", str(out)])
    for name in ("report_nsgym_pendulum.md", "summary_nsgym_pendulum.json", "nsgym_pendulum_lambda.png", "nsgym_pendulum_returns.png"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary_nsgym_pendulum.json").read_text())
    assert summary["runs"] == 2 * 4  # stationary + stepping_m, x (2 hybrid modes + reinforce + ppo), 1 seed
    assert {q["env"] for q in summary["question"]} == {"stepping_m"}
    tracking = {(r["env"], r["mode"]): r for r in summary["tracking"]}
    assert tracking[("stepping_m", "adaptive_16")]["switches"] == [266.0, 532.0, 798.0]  # the quick period: 800 // 3
    assert "n/a (no switches)" in (out / "report_nsgym_pendulum.md").read_text()  # the stationary env
    run_dir = next((out / "runs").glob("nsgym_pendulum__stepping_m__reinforce*"))
    ms = [row["env/m"] for row in load_result(run_dir)["rows"] if "env/m" in row]
    assert ms[0] == pytest.approx(1.0) and ms[-1] > ms[0]
