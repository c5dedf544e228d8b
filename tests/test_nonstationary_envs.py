"""Non-stationary envs: schedules, the clock wrapper, parameter adapters, the goal env and the
coupled bandit with its closed-form lam*.

Schedules are checked at given steps, for call-order independence and config round trips; the
wrapper for its clock across resets, save/load and VecEnvs (Monitor + SubprocVecEnv); adapters by
predicting the simulator's next state from the changed parameters; the bandit's closed form
against coupled.py (exactly) and Monte Carlo (tolerance: N_SE standard errors). Every random draw
is seeded.
"""

from __future__ import annotations

import copy
import json

import gymnasium as gym
import numpy as np
import pytest
import torch as th
import yaml
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import hybrid_pg_envs
from hybrid_pg.ground_truth.coupled_bandit import bandit_moments, oracle_lambda, per_sample_gradients
from hybrid_pg.ground_truth.coupled_bandit import expected_reward as _expected_reward
from hybrid_pg_envs import (
    CoupledBanditEnv,
    DiffPendulumEnv,
    LQREnv,
    NonStationaryWrapper,
    PointMassGoalEnv,
    find_differentiable_model,
    find_nonstationary_wrapper,
    get_clocks,
    has_differentiable_model,
    load_vec_state_dicts,
    make_schedule,
    sync_clock,
    vec_state_dicts,
)
from hybrid_pg_envs.adapters import AttributeAdapter, MujocoAdapter, PendulumAdapter, make_adapter
from hybrid_pg_envs.goal import PointMassModel
from hybrid_pg_envs.schedules import ScheduleError

N_SE = 4.0
NEW_IDS = [
    "hybrid_pg/SwitchingPendulum-v0",
    "hybrid_pg/PointMassGoal-v0",
    "hybrid_pg/DriftingGoal-v0",
    "hybrid_pg/SwitchingGoal-v0",
    "hybrid_pg/CoupledBandit-v0",
    "hybrid_pg/DriftingCoupledBandit-v0",
]
# by design: physical action units (pendulum torque, bandit's wide bounds), the goal env's
# unbounded state, and gymnasium's note that a wrapper is not its unwrapped env
EXPECTED_WARNINGS = ("symmetric and normalized", "infinity", "different from the unwrapped")


def _pendulum(schedules, **kwargs):
    return NonStationaryWrapper(DiffPendulumEnv(), schedules, **kwargs)


# ---------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, expected",
    [
        (10.0, {0: 10.0, 10**9: 10.0}),
        ({"kind": "constant", "value": -2.5}, {0: -2.5, 77: -2.5}),
        (
            {"kind": "linear", "start": 10.0, "end": 14.0, "duration": 100, "delay": 50},
            {0: 10.0, 50: 10.0, 100: 12.0, 125: 13.0, 150: 14.0, 10**6: 14.0},
        ),
        ({"kind": "linear", "start": 1.0, "rate": 0.5}, {0: 1.0, 4: 3.0, 1000: 501.0}),
        (
            {"kind": "sinusoid", "base": 10.0, "amplitude": 2.0, "period": 100},
            {0: 10.0, 25: 12.0, 50: 10.0, 75: 8.0, 125: 12.0, 10**6 + 75: 8.0},
        ),
        ({"kind": "sinusoid", "base": 0.0, "amplitude": 1.0, "period": 40, "phase": 0.25}, {0: 1.0, 10: 0.0, 20: -1.0}),
        ({"kind": "switch", "values": [1.0, 2.0, 3.0], "at": [10, 20]}, {0: 1.0, 9: 1.0, 10: 2.0, 19: 2.0, 20: 3.0, 10**6: 3.0}),
        ({"kind": "switch", "values": [10.0, 14.0], "every": 5}, {0: 10.0, 4: 10.0, 5: 14.0, 9: 14.0, 10: 10.0, 15: 14.0}),
        ({"kind": "switch", "values": [10.0, 14.0], "every": 5, "delay": 3}, {0: 10.0, 7: 10.0, 8: 14.0, 13: 10.0}),
        ({"kind": "random_walk", "start": 3.0, "step_std": 0.1, "low": 0.0, "high": 5.0, "delay": 10}, {0: 3.0, 10: 3.0}),
        ({"kind": "random_switch", "values": [1.0, 2.0, 3.0], "every": 5, "start": 2.0}, {0: 2.0, 4: 2.0}),
    ],
)
def test_schedule_values_at_given_steps(config, expected):
    schedule = make_schedule(config)
    for step, value in expected.items():
        assert schedule.value(step) == pytest.approx(value, abs=1e-12), (step, value)
    # normalised config: plain data, YAML round trip, same values
    cfg = schedule.to_config()
    again = make_schedule(yaml.safe_load(yaml.safe_dump(cfg)))
    assert again == schedule and again.to_config() == cfg
    steps = list(expected) + [1, 2, 3, 4097, 12345]
    np.testing.assert_array_equal(again.values(steps), schedule.values(steps))


def test_random_switch_is_piecewise_constant_and_changes_at_every_switch():
    s = make_schedule({"kind": "random_switch", "values": [8.0, 10.0, 14.0], "every": 7, "seed": 3, "start": 10.0})
    v = s.values(range(7 * 40))
    pieces = v.reshape(40, 7)
    assert (pieces == pieces[:, :1]).all()  # constant within each piece
    assert (np.diff(pieces[:, 0]) != 0).all()  # and a different value after every switch
    assert set(pieces[:, 0]) == {8.0, 10.0, 14.0} and pieces[0, 0] == 10.0
    # random dwell times within [min_every, max_every], uniform values in [low, high]
    r = make_schedule({"kind": "random_switch", "low": -1.0, "high": 1.0, "min_every": 3, "max_every": 6, "seed": 1})
    values = r.values(range(600))
    change = np.flatnonzero(np.diff(values)) + 1
    dwell = np.diff(np.r_[0, change])
    assert dwell.min() >= 3 and dwell.max() <= 6 and len(set(dwell)) > 1
    assert np.all(np.abs(values) <= 1.0)
    # seeds matter
    other = make_schedule({**r.to_config(), "seed": 2})
    assert not np.array_equal(other.values(range(600)), values)


@pytest.mark.parametrize(
    "config",
    [
        {"kind": "random_walk", "start": 10.0, "step_std": 0.2, "low": 8.0, "high": 12.0, "seed": 5},
        {"kind": "random_switch", "values": [1.0, 2.0, 3.0], "min_every": 1, "max_every": 4, "seed": 5},
    ],
)
def test_random_schedules_are_pure_functions_of_the_step(config):
    steps = [0, 1, 17, 4095, 4096, 4097, 9000, 30000, 5]
    forward = make_schedule(config).values(steps)
    backward = make_schedule(config).values(steps[::-1])[::-1]  # a fresh instance, other order
    single = [make_schedule(config).value(s) for s in steps]  # each step asked first
    np.testing.assert_array_equal(forward, backward)
    np.testing.assert_array_equal(forward, single)


def test_random_walk_is_bounded_and_moves_by_step_std():
    s = make_schedule({"kind": "random_walk", "start": 0.0, "step_std": 0.05, "low": -1.0, "high": 1.0, "seed": 0, "every": 2})
    v = s.values(range(20000))
    assert v.min() >= -1.0 and v.max() <= 1.0 and v.max() - v.min() > 1.0  # bounded, and it roams
    assert (v[0::2] == v[1::2]).all()  # one move every 2 steps
    moves = np.diff(v[0::2])
    interior = np.abs(v[0::2][:-1]) < 0.8  # away from the reflecting bounds
    assert np.std(moves[interior]) == pytest.approx(0.05, rel=0.05)


@pytest.mark.parametrize(
    "config, field",
    [
        ({"kind": "sinusoid", "base": 1.0, "amplitude": 1.0, "period": -5}, "period"),
        ({"kind": "sinusoid", "base": 1.0, "amplitude": 1.0}, "period"),
        ({"kind": "sinus", "base": 1.0}, "kind"),
        ({"value": 1.0}, "kind"),
        ({"kind": "constant", "value": "ten"}, "value"),
        ({"kind": "constant", "value": float("nan")}, "value"),
        ({"kind": "constant", "value": 1.0, "vlaue": 2.0}, "vlaue"),
        ({"kind": "linear", "start": 0.0}, "end"),
        ({"kind": "linear", "start": 0.0, "end": 1.0, "duration": 10, "rate": 0.1}, "end"),
        ({"kind": "linear", "start": 0.0, "end": 1.0, "duration": 0}, "duration"),
        ({"kind": "linear", "start": 0.0, "rate": 1.0, "delay": -1}, "delay"),
        ({"kind": "switch", "values": [1.0, 2.0, 3.0], "at": [20, 10]}, "at"),
        ({"kind": "switch", "values": [1.0, 2.0], "at": [10, 20]}, "at"),
        ({"kind": "switch", "values": [1.0, 2.0], "every": 2.5}, "every"),
        ({"kind": "switch", "values": [], "every": 2}, "values"),
        ({"kind": "random_switch", "values": [1.0], "every": 5}, "values"),
        ({"kind": "random_switch", "values": [1.0, 1.0], "every": 5}, "values"),
        ({"kind": "random_switch", "values": [1.0, 2.0], "every": 5, "start": 3.0}, "start"),
        ({"kind": "random_switch", "low": 0.0, "high": 1.0, "min_every": 5, "max_every": 2}, "max_every"),
        ({"kind": "random_switch", "low": 1.0, "high": 0.0, "every": 2}, "high"),
        ({"kind": "random_walk", "start": 20.0, "step_std": 1.0, "low": 0.0, "high": 10.0}, "start"),
        ({"kind": "random_walk", "start": 5.0, "step_std": -1.0, "low": 0.0, "high": 10.0}, "step_std"),
        ({"kind": "random_walk", "start": 5.0, "step_std": 1.0, "low": 0.0, "high": 10.0, "seed": -1}, "seed"),
    ],
)
def test_bad_schedule_configs_name_the_field(config, field):
    with pytest.raises(ScheduleError, match=f"'{field}'"):
        make_schedule(config, name="g")
    with pytest.raises(ValueError, match="'g'"):  # the parameter is named too
        make_schedule(config, name="g")


def test_bad_schedule_arguments():
    with pytest.raises(ScheduleError, match="number or a mapping"):
        make_schedule("ten")
    with pytest.raises(ValueError, match="step"):
        make_schedule(1.0).value(-1)
    with pytest.raises(ValueError, match="step"):
        make_schedule(1.0).value(2.5)


# ---------------------------------------------------------------------------------------------
# the wrapper: clock, info, state
# ---------------------------------------------------------------------------------------------


def test_clock_runs_across_resets_and_params_are_reported():
    schedule = {"kind": "linear", "start": 10.0, "rate": 0.25}
    env = NonStationaryWrapper(gym.make("Pendulum-v1", max_episode_steps=5), {"g": schedule})
    obs, info = env.reset(seed=0)
    assert info["env_params"] == {"g": 10.0} and info["env_clock"] == 0
    for t in range(13):
        obs, r, term, trunc, info = env.step(np.zeros(1, dtype=np.float32))
        # the transition used the parameters at the clock before the step
        assert info["env_params"] == {"g": pytest.approx(10.0 + 0.25 * t)} and info["env_clock"] == t
        if term or trunc:
            obs, info = env.reset()
            assert info["env_params"] == {"g": pytest.approx(10.0 + 0.25 * (t + 1))}
    assert env.get_clock() == 13
    assert env.unwrapped.g == pytest.approx(10.0 + 0.25 * 13)  # the simulator holds the next transition's
    assert env.current_params == {"g": pytest.approx(10.0 + 0.25 * 13)}
    # the clock reaches the wrapper from outside the whole stack
    outer = Monitor(gym.wrappers.RecordEpisodeStatistics(env))
    outer.get_wrapper_attr("set_clock")(400)
    assert env.get_clock() == 400 and env.unwrapped.g == pytest.approx(110.0)
    assert find_nonstationary_wrapper(outer) is env and find_nonstationary_wrapper(gym.make("Pendulum-v1")) is None


def test_steps_per_tick_and_frozen_clock():
    env = _pendulum({"g": {"kind": "linear", "start": 0.0, "rate": 1.0}}, steps_per_tick=4, clock_start=2)
    env.reset(seed=0)
    params = [env.step(np.zeros(1, dtype=np.float32))[-1]["env_params"]["g"] for _ in range(3)]
    assert params == [2.0, 6.0, 10.0] and env.get_clock() == 14
    frozen = _pendulum({"g": {"kind": "linear", "start": 0.0, "rate": 1.0}}, steps_per_tick=0, clock_start=7)
    frozen.reset(seed=0)
    assert {frozen.step(np.zeros(1, dtype=np.float32))[-1]["env_params"]["g"] for _ in range(3)} == {7.0}


def _drive(env, n, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        obs, r, term, trunc, info = env.step(rng.uniform(-2, 2, size=1).astype(np.float32))
        rows.append((info["env_clock"], info["env_params"]))
        if term or trunc:
            env.reset()
    return rows


SCHEDULES = {
    "g": {"kind": "random_walk", "start": 10.0, "step_std": 0.3, "low": 8.0, "high": 14.0, "seed": 4},
    "m": {"kind": "random_switch", "values": [0.8, 1.0, 1.2], "min_every": 2, "max_every": 5, "seed": 9},
    "l": {"kind": "sinusoid", "base": 1.0, "amplitude": 0.1, "period": 17},
}


def test_state_dict_round_trip_resumes_the_sequence():
    def make(**kwargs):
        return NonStationaryWrapper(gym.make("Pendulum-v1", max_episode_steps=7), SCHEDULES, **kwargs)

    reference = make()
    reference.reset(seed=0)
    full = _drive(reference, 50)

    first = make()
    first.reset(seed=0)
    head = _drive(first, 30)
    state = json.loads(json.dumps(first.state_dict()))  # plain data
    assert yaml.safe_load(yaml.safe_dump(state)) == state
    # a fresh wrapper with other schedules and clock is fully replaced by the state
    resumed = NonStationaryWrapper(gym.make("Pendulum-v1", max_episode_steps=7), {"g": 3.0}, clock_start=999)
    resumed.load_state_dict(state)
    assert resumed.get_clock() == 30 and resumed.unwrapped.g == pytest.approx(first.unwrapped.g)
    resumed.reset(seed=1)
    tail = _drive(resumed, 20)
    assert head + tail == full  # same clocks, same parameter values, in the same order

    with pytest.raises(ValueError, match="unknown keys"):
        resumed.load_state_dict({"clock": 3, "clok": 4})
    with pytest.raises(ValueError, match="clock"):
        resumed.load_state_dict({"clock": -3})


def test_wrapper_argument_validation():
    with pytest.raises(ValueError, match=r"cannot drive parameter\(s\) \['gravity'\]"):
        _pendulum({"gravity": 9.0})
    with pytest.raises(ValueError, match="'m' must be > 0"):
        _pendulum({"m": {"kind": "linear", "start": 1.0, "rate": -1.0}}, clock_start=5)
    shrinking = _pendulum({"m": {"kind": "linear", "start": 1.0, "rate": -0.1}})
    with pytest.raises(ValueError, match="'m' must be > 0"):
        shrinking.set_clock(20)
    assert shrinking.get_clock() == 0 and shrinking.unwrapped.m == 1.0  # nothing changed
    with pytest.raises(ValueError, match="model_mode"):
        _pendulum({"g": 10.0}, model_mode="frozen")
    with pytest.raises(ValueError, match="steps_per_tick"):
        _pendulum({"g": 10.0}, steps_per_tick=-1)
    with pytest.raises(ValueError, match="'period'"):
        _pendulum({"g": {"kind": "sinusoid", "base": 10.0, "amplitude": 1.0, "period": 0}})
    with pytest.raises(ValueError, match="different env"):
        NonStationaryWrapper(DiffPendulumEnv(), {"g": 10.0}, adapter=PendulumAdapter(DiffPendulumEnv()))
    with pytest.raises(TypeError, match="PendulumEnv"):
        PendulumAdapter(LQREnv())


# ---------------------------------------------------------------------------------------------
# adapters change the simulator
# ---------------------------------------------------------------------------------------------


def test_pendulum_adapter_changes_the_dynamics():
    # g switches at step 2, m and l drift: predict thdot' from the formula at each step's values
    env = _pendulum(
        {
            "g": {"kind": "switch", "values": [10.0, 4.0], "at": [2]},
            "m": {"kind": "linear", "start": 1.0, "end": 2.0, "duration": 5},
            "l": {"kind": "switch", "values": [1.0, 0.5], "every": 3},
        }
    )
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    changed = set()
    for _ in range(6):
        th0, thdot0 = env.unwrapped.state
        u = float(rng.uniform(-1.5, 1.5))
        obs, _, _, _, info = env.step(np.array([u], dtype=np.float32))
        g, m, l = (info["env_params"][k] for k in ("g", "m", "l"))
        changed.add((g, m, l))
        expected = thdot0 + (3 * g / (2 * l) * np.sin(th0) + 3.0 / (m * l**2) * np.float32(u)) * 0.05
        assert obs[2] == pytest.approx(np.clip(expected, -8, 8), rel=1e-5)
    assert len(changed) == 6
    # and the generic wrapper drives plain gymnasium Pendulum-v1 the same way
    assert isinstance(make_adapter(gym.make("Pendulum-v1")), PendulumAdapter)


def test_lqr_adapter_scales_the_system():
    base = LQREnv(horizon=50, x0_std=0.0, x0_mean=[1.0, -1.0])
    A0, B0 = base.A.copy(), base.B.copy()
    env = NonStationaryWrapper(base, {"B_scale": {"kind": "switch", "values": [1.0, 3.0], "at": [2]}, "A_scale": 0.5})
    obs, _ = env.reset(seed=0)
    for t in range(4):
        x, u = obs[:2].astype(np.float64), np.array([0.7])
        obs, *_ = env.step(u.astype(np.float32))
        s = 1.0 if t < 2 else 3.0
        np.testing.assert_allclose(obs[:2], 0.5 * A0 @ x + s * B0 @ u, rtol=1e-5)
    np.testing.assert_allclose(env.unwrapped.lqr_kwargs()["B"], 3.0 * B0)  # the closed form follows
    with pytest.raises(ValueError, match="R_scale"):
        NonStationaryWrapper(LQREnv(), {"R_scale": -1.0})


def test_attribute_adapter_on_any_env():
    env = NonStationaryWrapper(gym.make("CartPole-v1"), {"gravity": {"kind": "switch", "values": [9.8, 0.0], "at": [1]}})
    assert isinstance(env.adapter, AttributeAdapter)
    env.reset(seed=0)
    env.unwrapped.state = np.array([0.0, 0.0, 0.1, 0.0])
    _, _, _, _, info = env.step(0)
    assert info["env_params"] == {"gravity": 9.8} and env.unwrapped.gravity == 0.0
    with pytest.raises(ValueError, match="not real-valued"):
        NonStationaryWrapper(gym.make("CartPole-v1"), {"no_such_thing": 1.0})


def _mujoco_env():
    pytest.importorskip("mujoco")
    try:
        return gym.make("InvertedPendulum-v5")
    except (ImportError, gym.error.DependencyNotInstalled) as exc:  # e.g. no imageio
        pytest.skip(f"gymnasium's MuJoCo envs are not usable here: {exc}")


def _mujoco_step(env, schedules, action, qpos=(0.0, 0.1)):
    wrapper = NonStationaryWrapper(env, schedules)
    wrapper.reset(seed=0)
    wrapper.unwrapped.set_state(np.array(qpos), np.zeros(2))
    obs, *_ = wrapper.step(np.array([action], dtype=np.float32))
    return obs


def test_mujoco_adapter_changes_the_simulator():
    env = _mujoco_env()
    assert isinstance(make_adapter(env), MujocoAdapter)
    rest = np.array([0.0, 0.1, 0.0, 0.0])
    # no gravity, no force: a tilted pole at rest stays exactly where it is
    np.testing.assert_array_equal(_mujoco_step(_mujoco_env(), {"gravity": 0.0}, 0.0), rest)
    # from rest the pole's fall is (nearly) linear in g
    fall_1 = _mujoco_step(_mujoco_env(), {"gravity": 9.81}, 0.0)[2:]
    fall_2 = _mujoco_step(_mujoco_env(), {"gravity": 19.62}, 0.0)[2:]
    np.testing.assert_allclose(fall_2, 2 * fall_1, rtol=0.02)
    # gear x2 at action a is the same force as gear x1 at action 2a: exactly the same step
    np.testing.assert_array_equal(
        _mujoco_step(_mujoco_env(), {"gear_scale": 2.0}, 0.5), _mujoco_step(_mujoco_env(), {"gear_scale": 1.0}, 1.0)
    )
    # twice the mass, half the acceleration from the same force (no gravity; damping is not scaled)
    push_1 = _mujoco_step(_mujoco_env(), {"gravity": 0.0}, 1.0)[2:]
    push_2 = _mujoco_step(_mujoco_env(), {"gravity": 0.0, "body_mass_scale": 2.0}, 1.0)[2:]
    np.testing.assert_allclose(push_2, push_1 / 2, rtol=0.05)
    # friction scales every geom's coefficients, relative to the original (never compounded)
    wrapper = NonStationaryWrapper(env, {"friction_scale": {"kind": "switch", "values": [2.0, 1.0], "at": [1]}})
    original = wrapper.adapter.original["geom_friction"]
    np.testing.assert_allclose(env.unwrapped.model.geom_friction, 2 * original)
    wrapper.reset(seed=0)
    wrapper.step(np.zeros(1, dtype=np.float32))
    np.testing.assert_array_equal(env.unwrapped.model.geom_friction, original)
    with pytest.raises(ValueError, match="cannot drive"):
        NonStationaryWrapper(_mujoco_env(), {"g": 1.0})


def test_a_deep_copy_of_a_mujoco_env_follows_its_own_schedule():
    # the oracle deep-copies the training env; the copy's clock must move the copy's simulator
    # (copy.deepcopy copies an MjModel without entering it in the memo: an adapter that stored the
    # model changed an orphan copy, so every oracle of a MuJoCo run sat at the parameters of the moment
    # it was copied and its frozen-clock twin reported no env drift)
    wrapper = NonStationaryWrapper(_mujoco_env(), {"friction_scale": {"kind": "linear", "start": 1.0, "end": 0.4, "duration": 100}})
    wrapper.reset(seed=0)
    original = wrapper.adapter.original["geom_friction"]
    twin = copy.deepcopy(wrapper)
    assert twin.unwrapped.model is not wrapper.unwrapped.model
    twin.set_clock(100)
    np.testing.assert_allclose(twin.unwrapped.model.geom_friction, 0.4 * original)
    np.testing.assert_allclose(wrapper.unwrapped.model.geom_friction, original)  # the original is untouched
    wrapper.set_clock(50)
    np.testing.assert_allclose(wrapper.unwrapped.model.geom_friction, 0.7 * original)
    np.testing.assert_allclose(twin.unwrapped.model.geom_friction, 0.4 * original)


# ---------------------------------------------------------------------------------------------
# differentiable models: live and stale
# ---------------------------------------------------------------------------------------------


def test_live_model_follows_and_stale_model_does_not():
    schedules = {"g": {"kind": "switch", "values": [10.0, 14.0], "every": 3}}
    live, stale = _pendulum(schedules), _pendulum(schedules, model_mode="stale")
    live_model, stale_model = live.get_differentiable_model(), stale.get_differentiable_model()
    for env in (live, stale):
        env.reset(seed=0)
    obs = live.reset(seed=0)[0]
    for t in range(5):
        action = np.array([0.5], dtype=np.float32)
        x = th.as_tensor(obs, dtype=th.float64)[None]
        a = th.as_tensor(action, dtype=th.float64)[None]
        pred_live = live_model.step(x, a)[0][0].numpy()
        pred_stale = stale_model.step(x, a)[0][0].numpy()
        obs, *_ = live.step(action)
        stale.step(action)
        np.testing.assert_allclose(pred_live, obs, rtol=1e-5, atol=1e-6)  # the same object, kept in sync
        if t >= 3:  # after the switch the stale model is mis-specified
            assert abs(pred_stale[2] - obs[2]) > 1e-3
    assert live_model.parameters_dict()["g"] == 14.0 and stale_model.parameters_dict()["g"] == 10.0
    assert live.get_differentiable_model() is live_model
    # through a VecEnv, find_differentiable_model gets the wrapper's model
    venv = DummyVecEnv([lambda: stale])
    assert find_differentiable_model(venv).parameters_dict()["g"] == 10.0
    # the stale model survives save/load
    restored = _pendulum(schedules, model_mode="stale", clock_start=4)
    assert restored.get_differentiable_model().parameters_dict()["g"] == 14.0
    restored.load_state_dict(stale.state_dict())
    assert restored.get_differentiable_model().parameters_dict()["g"] == 10.0 and restored.unwrapped.g == 14.0


def test_model_at_an_earlier_clock_leaves_the_env_as_it_was():
    schedules = {"g": {"kind": "switch", "values": [10.0, 14.0], "every": 3}}
    live, stale = _pendulum(schedules), _pendulum(schedules, model_mode="stale")
    for env in (live, stale):
        env.reset(seed=0)
        for _ in range(4):
            env.step(np.zeros(1, dtype=np.float32))
    before = live.get_differentiable_model()
    earlier = live.differentiable_model_at(1)
    assert earlier.parameters_dict()["g"] == 10.0 and earlier is not before
    assert live.get_clock() == 4 and live.unwrapped.g == 14.0 and before.parameters_dict()["g"] == 14.0
    assert live.differentiable_model_at(7).parameters_dict()["g"] == 10.0  # 6..8 is the third regime
    assert stale.differentiable_model_at(4) is stale.get_differentiable_model()  # stale is stale at any clock


def test_set_clock_can_hold_the_parameters_still():
    env = _pendulum({"g": {"kind": "linear", "start": 0.0, "rate": 1.0}}, steps_per_tick=4)
    env.reset(seed=0)
    env.set_clock(9, steps_per_tick=0)
    assert {env.step(np.zeros(1, dtype=np.float32))[-1]["env_params"]["g"] for _ in range(3)} == {9.0}
    with pytest.raises(ValueError, match="steps_per_tick"):
        env.set_clock(3, steps_per_tick=-1)
    assert env.get_clock() == 9 and env.steps_per_tick == 0  # a refused call changes nothing


class _HalfGravityPendulum(DiffPendulumEnv):
    """A model with a buffer that mirrors no env attribute: the wrapper must rebuild it."""

    def get_differentiable_model(self):
        model = super().get_differentiable_model()
        model.register_buffer("g_half", th.tensor(self.g / 2, dtype=th.float64))
        return model


def test_live_model_of_an_env_whose_buffers_are_not_attributes():
    env = NonStationaryWrapper(_HalfGravityPendulum(), {"g": {"kind": "linear", "start": 10.0, "rate": 1.0}})
    model = env.get_differentiable_model()
    assert env._mirrored is None  # the slow path
    env.reset(seed=0)
    for _ in range(3):
        env.step(np.zeros(1, dtype=np.float32))
    assert model.parameters_dict()["g"] == 13.0 and model.parameters_dict()["g_half"] == 6.5


def test_no_model_through_the_wrapper_when_the_base_has_none():
    env = NonStationaryWrapper(gym.make("Pendulum-v1"), {"g": 9.0})
    assert not hasattr(env, "get_differentiable_model")
    venv = DummyVecEnv([lambda: Monitor(env)])
    assert not has_differentiable_model(venv) and find_differentiable_model(venv) is None
    assert has_differentiable_model(DummyVecEnv([lambda: _pendulum({"g": 9.0})]))


def test_clock_through_monitor_and_subproc_vec_env():
    def make():
        schedules = {"g": {"kind": "linear", "start": 10.0, "rate": 0.5}}
        return Monitor(gym.make("hybrid_pg/SwitchingPendulum-v0", schedules=schedules, steps_per_tick=2))

    venv = SubprocVecEnv([make, make], start_method="fork")
    try:
        venv.reset()
        for _t in range(3):
            _, _, _, infos = venv.step(np.zeros((2, 1), dtype=np.float32))
        assert get_clocks(venv) == [6, 6]  # 2 envs x 3 steps: global steps
        assert [info["env_params"]["g"] for info in infos] == [12.0, 12.0]  # clock 4 before the 3rd step
        # set_attr stops at the outermost wrapper; env_method reaches the clock
        sync_clock(venv, 100)
        assert get_clocks(venv) == [100, 100]
        _, _, _, infos = venv.step(np.zeros((2, 1), dtype=np.float32))
        assert [info["env_params"]["g"] for info in infos] == [60.0, 60.0]
        assert find_differentiable_model(venv).parameters_dict()["g"] == pytest.approx(61.0)  # live, clock 102
        states = vec_state_dicts(venv)
        venv.step(np.zeros((2, 1), dtype=np.float32))
        load_vec_state_dicts(venv, states)
        assert get_clocks(venv) == [102, 102]
        sync_clock(venv, 7, indices=[1])
        assert get_clocks(venv) == [102, 7]
    finally:
        venv.close()
    with pytest.raises(ValueError, match="no NonStationaryWrapper"):
        sync_clock(DummyVecEnv([lambda: gym.make("Pendulum-v1")]), 3)


# ---------------------------------------------------------------------------------------------
# registered ids and checkers
# ---------------------------------------------------------------------------------------------


def test_registration():
    hybrid_pg_envs.register_envs()  # idempotent
    assert gym.spec("hybrid_pg/SwitchingPendulum-v0").max_episode_steps == 200
    assert gym.spec("hybrid_pg/DriftingGoal-v0").max_episode_steps == 100
    assert gym.spec("hybrid_pg/CoupledBandit-v0").max_episode_steps is None  # one-step episodes
    env = gym.make("hybrid_pg/SwitchingPendulum-v0")
    assert env.get_wrapper_attr("state_dict")()["schedules"] == {
        "g": {"kind": "switch", "values": [10.0, 14.0], "every": 50000, "delay": 0}
    }
    env = gym.make("hybrid_pg/DriftingGoal-v0", clock_start=5000, hide_goal=True)  # a quarter period
    _, info = env.reset(seed=0)
    assert info["env_params"] == {"goal_x": pytest.approx(0.0, abs=1e-12), "goal_y": pytest.approx(1.0)}
    assert env.observation_space.shape == (4,)


@pytest.mark.parametrize("env_id", NEW_IDS)
def test_checkers(env_id, run_env_checker):
    # the gymnasium checker replays a seed and expects the same transition: a seeded reset puts the
    # clock back, so the running clock passes too (it failed before: the clock survived the reset)
    env = gym.make(
        env_id, **({"schedules": {"g": {"kind": "linear", "start": 10.0, "rate": 0.01}}} if "SwitchingPendulum" in env_id else {})
    )
    target = find_nonstationary_wrapper(env) or env.unwrapped
    run_env_checker(lambda e: gym_check_env(e, skip_render_check="Pendulum" in env_id), target, EXPECTED_WARNINGS)
    env = gym.make(env_id)
    run_env_checker(sb3_check_env, find_nonstationary_wrapper(env) or env.unwrapped, EXPECTED_WARNINGS)


# ---------------------------------------------------------------------------------------------
# the goal env
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hide_goal", [False, True])
def test_goal_env_model_matches_and_goal_moves(hide_goal):
    env = gym.make(
        "hybrid_pg/SwitchingGoal-v0",
        hide_goal=hide_goal,
        schedules={
            "goal_x": {"kind": "switch", "values": [1.0, -1.0], "every": 4},
            "goal_y": 0.5,
            "mass": 2.0,
        },
    )
    model = find_differentiable_model(DummyVecEnv([lambda: env]))
    assert isinstance(model, PointMassModel)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for t in range(10):
        action = rng.uniform(-1.5, 1.5, size=2).astype(np.float32)  # bound 1: some clipped
        pred_obs, pred_r = model.step(th.as_tensor(obs, dtype=th.float64)[None], th.as_tensor(action, dtype=th.float64)[None])
        obs, r, term, trunc, info = env.step(action)
        goal = np.array([info["env_params"]["goal_x"], 0.5])
        assert goal[0] == (1.0 if (t // 4) % 2 == 0 else -1.0)
        assert r == pytest.approx(-(np.sum((obs[:2] - goal) ** 2) + 0.01 * np.sum(np.clip(action, -1, 1) ** 2)), rel=1e-5)
        np.testing.assert_allclose(pred_obs[0].numpy(), obs, rtol=1e-5, atol=1e-6)
        assert pred_r.item() == pytest.approx(r, rel=1e-5)
        assert len(obs) == (4 if hide_goal else 6)
        if not hide_goal:
            np.testing.assert_allclose(obs[4:], goal)
    gen = th.Generator().manual_seed(0)
    x = th.randn(4, 4 if hide_goal else 6, dtype=th.float64, generator=gen).requires_grad_(True)
    a = (0.5 * th.randn(4, 2, dtype=th.float64, generator=gen)).requires_grad_(True)
    assert th.autograd.gradcheck(lambda o, u: model.step(o, u), (x, a))


def test_goal_env_validation():
    with pytest.raises(ValueError, match="mass"):
        PointMassGoalEnv(mass=0.0)
    with pytest.raises(ValueError, match="unknown physical parameter"):
        PointMassGoalEnv().set_physical_parameters(goal_z=1.0)
    with pytest.raises(ValueError, match="options"):
        PointMassGoalEnv().reset(options={"pos": [1.0]})
    img = PointMassGoalEnv(render_mode="rgb_array")
    img.reset(seed=0)
    assert img.render().shape == (96, 96, 3)


# ---------------------------------------------------------------------------------------------
# the coupled bandit and its closed-form lam*
# ---------------------------------------------------------------------------------------------


def test_bandit_env_and_model():
    env = gym.make("hybrid_pg/DriftingCoupledBandit-v0", schedules={"m": {"kind": "switch", "values": [0.0, 3.0], "at": [2]}, "c": 2.0})
    model = find_differentiable_model(DummyVecEnv([lambda: env]))
    env.reset(seed=0)
    for t, z in enumerate([0.5, 2.5, 2.5, 60.0]):
        obs, r, term, trunc, info = env.step(np.array([z], dtype=np.float32))
        m = 0.0 if t < 2 else 3.0
        zc = min(z, 50.0)  # the action bound
        assert info["env_params"] == {"m": m, "c": 2.0}
        assert r == pytest.approx(-min((zc - m) ** 2, 4.0)) and term and not trunc
        np.testing.assert_array_equal(obs, [1.0])
        env.reset()
    assert model.parameters_dict()["m"] == 3.0
    z = th.tensor([[2.0], [3.5], [10.0]], dtype=th.float64, requires_grad=True)
    _, r = model.step(th.ones(3, 1, dtype=th.float64), z)
    r.sum().backward()
    np.testing.assert_allclose(r.detach().numpy(), [-1.0, -0.25, -4.0])
    np.testing.assert_allclose(z.grad[:, 0].numpy(), [2.0, -1.0, 0.0])  # -f'(z): zero where clipped
    assert model.terminal(th.ones(3, 1)).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="c"):
        CoupledBanditEnv(c=0.0)


@pytest.mark.parametrize("theta, alpha, m, c, b", [(0.5, 0.7, 0.0, 1.0, 0.0), (-0.3, -1.2, 0.4, 0.8, 0.5), (1.0, 0.0, 0.0, 2.0, 1.0)])
def test_bandit_moments_reduce_to_the_coupled_problem(theta, alpha, m, c, b):
    """coupled.py's scalar theta moves (mu, log sigma) along v = (1, alpha): metric v v^T."""
    from hybrid_pg.ground_truth.coupled import coupled_moments

    v = np.array([1.0, alpha])
    ours = bandit_moments(theta, alpha * theta, m, c, baseline=-b, metric=np.outer(v, v))  # f = -reward
    ref = coupled_moments(theta, alpha, m, c, b)
    for key in ("var_path", "var_score", "cov", "lam_star"):
        assert getattr(ours, key) == pytest.approx(getattr(ref, key), rel=1e-9, abs=1e-12), key
    assert -(np.dot(v, ours.grad)) == pytest.approx(ref.true_grad, rel=1e-9, abs=1e-12)


def test_bandit_moments_match_monte_carlo_and_finite_differences():
    mu, log_std, m, c = 0.3, -0.2, 1.0, 1.0
    exact = bandit_moments(mu, log_std, m, c, metric=[2.0, 1.0])
    # the gradient of the closed-form expected reward, by central differences
    h = 1e-5
    fd = [
        (_expected_reward(mu + h, log_std, m, c) - _expected_reward(mu - h, log_std, m, c)) / (2 * h),
        (_expected_reward(mu, log_std + h, m, c) - _expected_reward(mu, log_std - h, m, c)) / (2 * h),
    ]
    np.testing.assert_allclose(exact.grad, fd, rtol=1e-6)
    np.testing.assert_allclose(exact.grad_score, fd, rtol=1e-6)
    assert exact.clip_mass < 1e-100

    n, groups = 200_000, 40
    eps = np.random.default_rng(0).standard_normal(n)
    g_path, g_score = per_sample_gradients(mu, log_std, eps, m, c, baseline=exact.baseline)
    # the pathwise samples agree with autograd through the env's torch model
    model = CoupledBanditEnv(m=m, c=c).get_differentiable_model()
    mean = th.full((500,), mu, dtype=th.float64, requires_grad=True)
    log_sigma = th.full((500,), log_std, dtype=th.float64, requires_grad=True)
    z = mean + th.exp(log_sigma) * th.as_tensor(eps[:500])
    model.step(th.ones(500, 1, dtype=th.float64), z[:, None])[1].sum().backward()
    np.testing.assert_allclose(np.stack([mean.grad, log_sigma.grad], -1), g_path[:500], rtol=1e-10, atol=1e-12)

    W = np.diag([2.0, 1.0])

    def stats(gp, gs):
        cp, cs = np.cov(gp.T), np.cov(gs.T)
        cx = (gp - gp.mean(0)).T @ (gs - gs.mean(0)) / (len(gp) - 1)
        vp, vs, cv = np.sum(W * cp), np.sum(W * cs), np.sum(W * cx)
        return np.array([vp, vs, cv, (vs - cv) / (vp + vs - 2 * cv)])

    est = stats(g_path, g_score)
    # jackknife over groups for the standard errors (lam* is a ratio)
    parts = np.array_split(np.arange(n), groups)
    loo = np.array([stats(np.delete(g_path, p, 0), np.delete(g_score, p, 0)) for p in parts])
    se = np.sqrt((groups - 1) / groups * np.sum((loo - loo.mean(0)) ** 2, axis=0))
    truth = np.array([exact.var_path, exact.var_score, exact.cov, exact.lam_star])
    assert np.all(np.abs(est - truth) < N_SE * se), (est, truth, se)
    assert np.all(se < 0.05 * np.abs(truth))  # the test has power
    assert oracle_lambda(mu, log_std, m, c, metric=[2.0, 1.0]) == exact.lam_star
    assert 0.0 <= oracle_lambda(mu, log_std, m, c, bounds=(0.0, 1.0)) <= 1.0


def test_bandit_oracle_tracks_a_drifting_target():
    env = gym.make("hybrid_pg/DriftingCoupledBandit-v0")
    wrapper = find_nonstationary_wrapper(env)
    lams = []
    for step in (0, 5000, 10000, 15000):
        wrapper.set_clock(step)
        _, info = env.reset(seed=0)
        lams.append(oracle_lambda(0.0, 0.0, **info["env_params"]))
    # m = 2 sin(2 pi t / 20000): symmetric problem at m = 0, mirror images at m = +-2
    assert lams[0] == pytest.approx(lams[2]) and lams[1] == pytest.approx(lams[3])
    assert abs(lams[0] - lams[1]) > 0.05
    with pytest.raises(ValueError, match="metric"):
        oracle_lambda(0.0, 0.0, metric=[[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="baseline"):
        oracle_lambda(0.0, 0.0, baseline="median")
