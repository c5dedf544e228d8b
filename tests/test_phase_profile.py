"""PhaseTimer: every phase of HybridPG's update is timed, the phases add up to the run, and the
model is left exactly as it was (its methods and the module's functions restored)."""

import hybrid_pg.hybrid_pg as hybrid_module
from hybrid_pg import HybridPG
from hybrid_pg.experiments.phase_profile import HYBRID_PHASES, PhaseTimer


def _model(**kwargs):
    return HybridPG("MlpPolicy", "Pendulum-v1", n_steps=128, batch_size=64, n_epochs=1, lambda_warmup=0, seed=0, device="cpu", **kwargs)


def test_phases_are_timed_and_add_up_and_everything_is_restored():
    model = _model()
    functions = {name: getattr(hybrid_module, name) for name in ("prepare_batch", "rollout_group_moments", "online_signals")}
    with PhaseTimer(model) as timer:
        model.learn(128 * 3)
    assert timer.calls["train"] == 3 and timer.calls["collect rollouts"] == 3
    for name, _ in HYBRID_PHASES:
        assert timer.calls[name] == 3, name
    rows = dict(timer.breakdown())
    assert all(seconds >= 0 for seconds in rows.values())
    assert abs(sum(rows.values()) - timer.total) < 1e-9  # the rows partition the run's wall time
    assert "per-sample statistics" in timer.table(steps=model.num_timesteps)
    # nothing left behind: the class's methods and the module's functions again
    for attr in ("train", "collect_rollouts", "_update", "_log", "_weights_for_this_update"):
        assert attr not in vars(model)
    assert {name: getattr(hybrid_module, name) for name in functions} == functions
    model.learn(128, reset_num_timesteps=False)  # and it still trains


def test_sb3_algorithms_get_the_loop_phases_only():
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", "Pendulum-v1", n_steps=128, batch_size=64, n_epochs=1, seed=0, device="cpu")
    with PhaseTimer(model) as timer:
        model.learn(256)
    assert [name for name, _ in timer.breakdown()] == ["collect rollouts", "train", "outside both"]
    assert timer.calls["train"] == 2
