"""The declared logged keys (hybrid_pg.update_log.LOGGED_KEYS) are exactly the keys HybridPG writes.

Three short runs switch every optional diagnostic on between them (per-group weights, the adaptive
window, the oracle with a frozen-clock twin on a non-stationary env, an exact model source, the
replay critic); every key written must be declared, every declared key must be written by one of
them, and the console column must say what SB3's stdout table really shows. The documentation's
logged-keys table is generated from the same declaration (tests/test_docs.py checks it is current).
"""

from __future__ import annotations

import importlib.util

import gymnasium as gym
import pytest
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger

from hybrid_pg import HybridPG
from hybrid_pg.update_log import LOGGED_KEYS, REMOVED_KEYS

#: written by SB3's own collect/dump code, not by HybridPG
SB3_PREFIXES = ("rollout/", "time/")
#: keys only a MuJoCo run writes
MUJOCO_ONLY = ("hybrid/contact_gated_fraction",)
HAS_MUJOCO = importlib.util.find_spec("mujoco") is not None
SMALL = dict(n_steps=32, batch_size=32, n_epochs=2, lambda_warmup=0, seed=0, device="cpu")


def _declared(key: str):
    for entry in LOGGED_KEYS:
        if entry.key == key or (entry.key.endswith("<param>") and key.startswith(entry.key[: -len("<param>")])):
            return entry
    return None


def _train(model: HybridPG, steps: int):
    """(key, shown on the console) of every record HybridPG makes while learning ``steps``."""
    logger = Logger(folder=None, output_formats=[])
    written = []
    original = logger.record

    def record(key, value, exclude=None):
        excluded = (exclude,) if isinstance(exclude, str) else tuple(exclude or ())
        written.append((key, "stdout" not in excluded))
        original(key, value, exclude)

    logger.record = record
    model.set_logger(logger)
    model.learn(steps)
    return [(k, shown) for k, shown in written if not k.startswith(SB3_PREFIXES)]


@pytest.fixture(scope="module")
def runs():
    per_group = HybridPG(
        "MlpPolicy", "Pendulum-v1", lambda_groups="per_group", oracle_freq=1, oracle_samples=64, pathwise_source="critic", **SMALL
    )
    drifting = make_vec_env(lambda: gym.make("hybrid_pg/DriftingCoupledBandit-v0"), n_envs=2, seed=0)
    exact = HybridPG(
        "MlpPolicy",
        drifting,
        pathwise_source="model",
        gamma=0.0,
        lambda_mode="adaptive",
        lambda_window=4,
        oracle_freq=1,
        oracle_samples=64,
        oracle_frozen_clock=0,
        **SMALL,
    )
    replay = HybridPG("MlpPolicy", "Pendulum-v1", pathwise_source="replay_critic", **SMALL)
    out = {
        "per_group": _train(per_group, 32 * 4),
        "exact": _train(exact, 64 * 4),
        "replay": _train(replay, 32 * 4),
    }
    if HAS_MUJOCO:
        gated = HybridPG("MlpPolicy", "Hopper-v5", pathwise_source="mujoco", contact_gate=True, **SMALL)
        out["contact_gate"] = _train(gated, 32 * 4)
    return out


def test_every_key_written_is_declared_and_none_removed_is_written(runs):
    for name, written in runs.items():
        for key, _ in written:
            assert key not in REMOVED_KEYS, f"{name}: {key} was removed ({REMOVED_KEYS[key]}) but is still written"
            assert _declared(key) is not None, f"{name}: {key} is written but not declared in hybrid_pg.update_log.LOGGED_KEYS"


def test_every_declared_key_is_written_by_some_run(runs):
    written = {key for run in runs.values() for key, _ in run}
    for entry in LOGGED_KEYS:
        if entry.key in MUJOCO_ONLY and not HAS_MUJOCO:
            continue  # written by MuJoCo runs only (the mujoco extra's test run checks it)
        if entry.key.endswith("<param>"):
            assert any(k.startswith(entry.key[: -len("<param>")]) for k in written), entry.key
        else:
            assert entry.key in written, f"{entry.key} is declared but no run wrote it"


def test_the_console_column_says_what_the_console_shows(runs):
    for name, written in runs.items():
        for key, shown in written:
            console = _declared(key).console
            if console == "per_group":
                assert shown == (name == "per_group"), (name, key)
            else:
                assert shown == (console == "yes"), (name, key, console)


def test_declarations_are_unique_and_well_formed():
    keys = [entry.key for entry in LOGGED_KEYS]
    assert len(keys) == len(set(keys))
    for entry in LOGGED_KEYS:
        assert entry.console in ("yes", "no", "per_group"), entry
        assert entry.meaning and "|" not in entry.meaning + entry.when, entry
    assert not set(keys) & set(REMOVED_KEYS)


def test_verbose_says_which_source_auto_chose_and_when_the_weight_starts(capsys):
    model = HybridPG("MlpPolicy", "Pendulum-v1", n_steps=32, batch_size=32, n_epochs=1, lambda_warmup=2, seed=0, device="cpu", verbose=1)
    lams = []
    original = model._weights_for_this_update

    def weights():
        lam = original()
        lams.append(lam["global"])
        return lam

    model._weights_for_this_update = weights
    model.set_logger(Logger(folder=None, output_formats=[]))
    model.learn(32 * 5)
    out = capsys.readouterr().out
    assert "pathwise source: 'critic' (chosen by pathwise_source='auto'), learned" in out
    assert "lam = 0 for updates 1-3 (lambda_warmup=2" in out and "from update 4 lam comes from the window" in out
    assert "update 4: lam now comes from the window of previous rollouts" in out
    # what the message says is what happens
    assert lams[:3] == [0.0, 0.0, 0.0] and lams[3] > 0.0


def test_verbose_names_an_exact_model_and_a_fixed_weight(capsys):
    HybridPG("MlpPolicy", "hybrid_pg/CoupledBandit-v0", gamma=0.0, n_steps=32, batch_size=32, lambda_warmup=0, verbose=1, device="cpu")
    HybridPG("MlpPolicy", "Pendulum-v1", estimator="reinforce", verbose=1, device="cpu")
    HybridPG("MlpPolicy", "Pendulum-v1", fixed_lambda=0.25, verbose=1, device="cpu")
    out = capsys.readouterr().out
    assert "pathwise source: 'model' (chosen by pathwise_source='auto'), exact" in out
    assert "lam = 0 for update 1 (its rollout starts the window); from update 2" in out
    assert "none used (estimator='reinforce'" in out
    assert "lam = 0.25 at every update (fixed_lambda)" in out
