"""NS-Gym interoperability (hybrid_pg_envs.nsgym): NS-Gym's schedulers and update functions on the
global step clock, the clock protocol, deep copies for the oracle, checkers, and a HybridPG run."""

from __future__ import annotations

import copy
import math
import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest

ns_gym = pytest.importorskip("ns_gym")

from gymnasium.utils.env_checker import check_env as gym_check_env  # noqa: E402
from ns_gym.schedulers import ContinuousScheduler, DiscreteScheduler, PeriodicScheduler  # noqa: E402
from ns_gym.update_functions import IncrementUpdate, LinearInterpolation, RandomWalk  # noqa: E402
from ns_gym.wrappers import NSClassicControlWrapper  # noqa: E402
from stable_baselines3.common.env_checker import check_env as sb3_check_env  # noqa: E402
from stable_baselines3.common.monitor import Monitor  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

from hybrid_pg_envs.clock import env_clock, get_clocks, has_clock, sync_clock  # noqa: E402
from hybrid_pg_envs.nsgym import NSGymAdapter, make_nsgym_env  # noqa: E402

EXPECTED_WARNINGS = ("symmetric and normalized", "infinity", "different from the unwrapped")


def _fns():
    """m: +0.1 every 20 steps (fires at t = 0, 20, ...); g: a seeded random walk every step."""
    return {
        "m": IncrementUpdate(PeriodicScheduler(period=20), k=0.1),
        "g": RandomWalk(ContinuousScheduler(), sigma=0.05, seed=3),
    }


def _pendulum(**kwargs) -> NSGymAdapter:
    kwargs.setdefault("checkpoint_every", 16)
    return make_nsgym_env("Pendulum-v1", _fns(), **kwargs)


def _run(env, n, seed=0):
    rng = np.random.default_rng(seed)
    infos = []
    for _ in range(n):
        space = env.action_space
        obs, reward, term, trunc, info = env.step(rng.uniform(space.low, space.high).astype(space.dtype))
        infos.append(info)
        if term or trunc:
            env.reset()
    return infos


def test_observations_are_the_state_box_and_params_are_reported():
    env = _pendulum()
    assert env.observation_space == gym.make("Pendulum-v1").observation_space
    obs, info = env.reset(seed=0)
    assert isinstance(obs, np.ndarray) and env.observation_space.contains(obs)
    assert info["env_clock"] == 0 and set(info["env_params"]) == {"m", "g"}
    assert info["env_params"]["m"] == pytest.approx(1.1)  # NS-Gym's update at t = 0 fires already
    obs, reward, *_, info = env.step(np.zeros(1, np.float32))
    assert isinstance(reward, float) and env.observation_space.contains(obs)
    assert all(isinstance(v, float) for v in info["env_params"].values())


def test_same_parameters_as_native_ns_gym_within_its_first_episode():
    """NS-Gym's step t and the adapter's clock t give the same parameters (same update rule)."""
    native = NSClassicControlWrapper(gym.make("Pendulum-v1"), _fns())
    native.reset(seed=0)  # NS-Gym re-seeds its random update functions from the reset seed ...
    env = _pendulum(schedule_seed=0)  # ... as schedule_seed does (reset seeds leave the schedule alone)
    env.reset(seed=0)
    for t in range(60):
        action = np.array([0.3], np.float32)
        native.step(action)
        *_, info = env.step(action)
        assert info["env_clock"] == t
        assert info["env_params"] == {"m": native.unwrapped.m, "g": native.unwrapped.g}


def test_the_clock_counts_global_steps_across_episodes():
    env = _pendulum(steps_per_tick=2)
    env.reset(seed=0)
    infos = _run(env, 250)  # Pendulum truncates at 200: one unseeded reset in between
    clocks = [i["env_clock"] for i in infos]
    assert clocks == list(range(0, 500, 2)) and env.get_clock() == 500
    ms = [i["env_params"]["m"] for i in infos]
    assert ms == [pytest.approx(1.0 + 0.1 * (c // 20 + 1)) for c in clocks]
    changed = [i["Ground Truth Env Change"]["m"] for i in infos]
    assert changed[10] == 1 and changed[9] == 0  # clock 20: the second firing
    assert env.unwrapped.m == pytest.approx(env.current_params["m"]) == pytest.approx(env.params_at(500)["m"])


def test_set_clock_holds_and_rewinds_exactly():
    env = _pendulum()
    env.reset(seed=0)
    first = [i["env_params"] for i in _run(env, 100)]
    env.set_clock(37, steps_per_tick=0)  # into the past: replayed from a checkpoint
    assert env.current_params == first[37] and env.unwrapped.g == first[37]["g"]
    held = _run(env, 10)
    assert all(i["env_params"] == first[37] and i["env_clock"] == 37 for i in held)
    env.set_clock(5, steps_per_tick=1)
    assert [i["env_params"] for i in _run(env, 95)] == first[5:]
    assert env.params_at(250) == env.params_at(250)  # ahead of the generator, then a lookup
    with pytest.raises(ValueError):
        env.set_clock(-1)


def test_seeded_reset_rewinds_and_state_dict_resumes():
    env = _pendulum(schedule_seed=7)
    obs0, _ = env.reset(seed=1)
    _run(env, 30)
    obs1, info = env.reset(seed=1)  # back to the clock last set (construction)
    assert info["env_clock"] == 0 and np.array_equal(obs0, obs1)
    env.set_clock(90)
    _run(env, 10)
    state = env.state_dict()
    assert state["clock"] == 100 and pickle.loads(pickle.dumps(state)) == state
    fresh = _pendulum(schedule_seed=7)
    fresh.load_state_dict(state)
    assert fresh.get_clock() == 100 and fresh.current_params == env.current_params
    with pytest.raises(ValueError, match="NSGymAdapter state"):
        fresh.load_state_dict({"clock": 1, "schedules": {}})


def test_deepcopy_is_faithful_and_follows_the_schedule():
    env = _pendulum()
    env.reset(seed=0)
    _run(env, 50)
    twin = copy.deepcopy(Monitor(env)).env  # what the oracle does (Monitor spliced out there)
    assert twin is not env and twin.unwrapped is not env.unwrapped and twin.get_clock() == 50
    # a faithful copy (NS-Gym's own deepcopy rebuilds a "planning env"): same transition
    action = np.array([1.0], np.float32)
    a, b = env.step(action), twin.step(action)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] and a[4]["env_params"] == b[4]["env_params"]
    # independent clocks; the copy held at t has the parameters of time t of the original
    _run(twin, 30)
    assert env.get_clock() == 51 and twin.get_clock() == 81
    for t in (3, 40, 200):
        twin.set_clock(t, steps_per_tick=0)
        assert twin.current_params == env.params_at(t)
        assert twin.unwrapped.m == env.params_at(t)["m"] and twin.unwrapped.g == env.params_at(t)["g"]
        assert all(i["env_params"] == env.params_at(t) for i in _run(twin, 5))


def test_vec_env_clock_protocol():
    venv = DummyVecEnv([lambda: Monitor(_pendulum())])
    assert has_clock(venv) and env_clock(venv) == 0
    venv.reset()
    venv.step(np.zeros((1, 1), np.float32))
    sync_clock(venv, 120, steps_per_tick=0)
    venv.step(np.zeros((1, 1), np.float32))
    assert get_clocks(venv) == [120]


def test_spec_rebuilds_the_same_env():
    env = make_nsgym_env("Pendulum-v1", {"m": RandomWalk(ContinuousScheduler(), sigma=0.01)})  # unseeded walk
    rebuilt = gym.make(pickle.loads(pickle.dumps(env.spec)))  # e.g. in a SubprocVecEnv worker
    set_clock = rebuilt.get_wrapper_attr("set_clock")
    set_clock(64)
    assert rebuilt.get_wrapper_attr("current_params") == env.params_at(64)


@pytest.mark.parametrize(
    "env_id, fns",
    [
        ("Pendulum-v1", _fns),
        ("MountainCarContinuous-v0", lambda: {"power": LinearInterpolation(ContinuousScheduler(), 0.0015, 0.003, T=500)}),
    ],
)
def test_checkers(env_id, fns, run_env_checker):
    # the running clock passes gymnasium's determinism check: a seeded reset rewinds it
    env = make_nsgym_env(env_id, fns())
    run_env_checker(lambda e: gym_check_env(e, skip_render_check=True), env, EXPECTED_WARNINGS)
    run_env_checker(sb3_check_env, make_nsgym_env(env_id, fns()), EXPECTED_WARNINGS)


def test_make_by_names():
    env = make_nsgym_env(
        "Pendulum-v1",
        ["m", "l"],
        scheduler="DiscreteScheduler",
        scheduler_kwargs={"event_list": {3}},
        update_fn="IncrementUpdate",
        update_kwargs={"k": 0.5},
    )
    assert env.params_at(2) == {"m": 1.0, "l": 1.0} and env.params_at(3) == {"m": 1.5, "l": 1.5}
    env = make_nsgym_env("Pendulum-v1", ["g"], scheduler=DiscreteScheduler({1}), update_fn=IncrementUpdate, update_kwargs={"k": 1.0})
    assert env.params_at(1)["g"] == 11.0
    with pytest.raises(ValueError, match="no NS-Gym tunable"):
        make_nsgym_env("Pendulum-v1", {"mass": IncrementUpdate(ContinuousScheduler(), k=1.0)})
    with pytest.raises(ValueError, match="unknown NS-Gym scheduler"):
        make_nsgym_env("Pendulum-v1", ["m"], scheduler="Nope", update_fn="IncrementUpdate")
    with pytest.raises(ValueError, match="needs scheduler"):
        make_nsgym_env("Pendulum-v1", ["m"])
    with pytest.raises(TypeError, match="NS-Gym-wrapped"):
        NSGymAdapter(gym.make("Pendulum-v1"))


def test_rejected_update_keeps_the_value():
    env = make_nsgym_env("Pendulum-v1", {"m": IncrementUpdate(PeriodicScheduler(period=2), k=-0.4)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert [env.params_at(t)["m"] for t in range(6)] == pytest.approx([0.6, 0.6, 0.2, 0.2, 0.2, 0.2])


def test_hybrid_pg_trains_and_logs_the_drifting_parameter():
    from stable_baselines3.common.logger import KVWriter, Logger

    from hybrid_pg import HybridPG

    rows = []

    class Capture(KVWriter):
        def write(self, key_values, key_excluded, step=0):
            rows.append(dict(key_values))

    env = make_nsgym_env("Pendulum-v1", {"m": IncrementUpdate(PeriodicScheduler(period=64), k=0.1)})
    model = HybridPG("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, oracle_freq=1, oracle_samples=128, seed=0)
    model.set_logger(Logger(folder=None, output_formats=[Capture()]))
    model.learn(64 * 4)
    ms = [r["env/m"] for r in rows if "env/m" in r]
    assert len(ms) >= 3 and ms == sorted(ms) and ms[-1] > ms[0]
    assert all(math.isfinite(r["hybrid/oracle_lambda"]) for r in rows if "hybrid/oracle_lambda" in r)
    # the oracle's env copy is held at the last rollout's midpoint, with that moment's parameters
    oracle_env = model.oracle._live.env
    clock = oracle_env.env_method("get_clock")[0]
    assert clock == model.rollout_clock
    assert oracle_env.env_method("get_wrapper_attr", "current_params")[0] == env.params_at(clock)


def test_mujoco_half_cheetah_mass_and_gravity():
    pytest.importorskip("mujoco")
    fns = {
        "torso_mass": IncrementUpdate(PeriodicScheduler(period=50), k=0.5),
        "gravity": LinearInterpolation(ContinuousScheduler(), -9.81, -12.0, T=200),  # z component
    }
    env = make_nsgym_env("HalfCheetah-v5", fns, checkpoint_every=32)
    obs, info = env.reset(seed=0)
    assert obs.shape == (17,) and set(info["env_params"]) == {"torso_mass", "gravity"}
    torso = env.unwrapped.model.body("torso").id
    mass0 = float(gym.make("HalfCheetah-v5").unwrapped.model.body_mass[torso])
    infos = _run(env, 60)
    assert infos[-1]["env_params"]["torso_mass"] == pytest.approx(mass0 + 1.0)  # fired at t = 0 and 50
    assert infos[-1]["env_params"]["gravity"] == pytest.approx(-9.81 - 2.19 * 59 / 200)
    np.testing.assert_allclose(env.unwrapped.model.opt.gravity, [0.0, 0.0, env.current_params["gravity"]])
    # MuJoCo envs deep-copy as fresh envs: the adapter carries the simulator state and parameters over
    twin = copy.deepcopy(env)
    action = np.full(6, 0.3, np.float32)
    a, b = env.step(action), twin.step(action)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    twin.set_clock(10, steps_per_tick=0)
    assert twin.unwrapped.model.body_mass[torso] == pytest.approx(mass0 + 0.5)
    assert twin.unwrapped.model.opt.gravity[2] == pytest.approx(env.params_at(10)["gravity"])
    assert env.unwrapped.model.body_mass[torso] == pytest.approx(mass0 + 1.0)  # the original is untouched


def test_quickstart_example_runs(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "nsgym_quickstart.py"
    spec = importlib.util.spec_from_file_location("nsgym_quickstart", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--timesteps", "1024"])
    assert "clock 1024" in capsys.readouterr().out
