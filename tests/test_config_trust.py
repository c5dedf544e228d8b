"""Configs name code to import: only gymnasium wrappers and env entry points are accepted, and the
YAML loader stays safe. Nothing here trains."""

from __future__ import annotations

import os

import gymnasium as gym
import pytest

from hybrid_pg.experiments.config import ConfigError, check_env, read_config_file, resolve_config, resolve_wrapper


@pytest.fixture
def no_system(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "system", lambda *a, **k: calls.append(a) or 0)
    return calls


def _config(**env):
    return {"env": {"id": "Pendulum-v1", **env}, "train": {"total_timesteps": 10}}


@pytest.mark.parametrize("name", ["os:system", "builtins:print", "collections:OrderedDict", "gymnasium:Env"])
def test_a_wrapper_must_be_a_gymnasium_wrapper(name, no_system):
    with pytest.raises(ValueError, match="not a gymnasium.Wrapper subclass"):
        resolve_wrapper(name)
    with pytest.raises(ConfigError, match="env.wrappers"):
        resolve_config(_config(wrappers=[{"name": name}]))
    assert no_system == []


def test_real_wrappers_still_resolve():
    assert resolve_wrapper("gymnasium.wrappers:TimeLimit") is gym.wrappers.TimeLimit
    assert issubclass(resolve_wrapper("nonstationary"), gym.Wrapper)


def test_an_env_entry_point_must_be_an_env():
    # the real os.system (a builtin; called without arguments it could only raise TypeError)
    gym.register("TrustTest-v0", entry_point="os:system")
    gym.register("TrustTestClass-v0", entry_point="collections:OrderedDict")
    try:
        for env_id in ("TrustTest-v0", "TrustTestClass-v0"):
            with pytest.raises(ConfigError, match="neither a gymnasium.Env subclass nor an env factory"):
                check_env(resolve_config(_config(id=env_id)))
    finally:
        gym.registry.pop("TrustTest-v0", None)
        gym.registry.pop("TrustTestClass-v0", None)
    check_env(resolve_config(_config(id="hybrid_pg/SwitchingPendulum-v0")))  # a factory function: fine


def test_yaml_python_tags_are_refused(tmp_path, no_system):
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: !!python/object/apply:os.system ['echo pwned']\ntrain: {total_timesteps: 10}\n")
    with pytest.raises(ConfigError):
        read_config_file(bad)
    assert no_system == []


def test_the_nsgym_alias_without_ns_gym_says_what_to_install(tmp_path, monkeypatch, capsys):
    """Without NS-Gym (simulated where it is installed) the alias still resolves (hybrid_pg_envs.nsgym
    imports it lazily) and building the env is a ConfigError saying what to install, not a traceback."""
    import sys

    from hybrid_pg.experiments import cli

    monkeypatch.setitem(sys.modules, "ns_gym", None)  # `import ns_gym` raises ImportError
    assert issubclass(resolve_wrapper("nsgym"), gym.Wrapper)
    path = tmp_path / "nsgym.yaml"
    path.write_text(
        "env: {id: Pendulum-v1, wrappers: [{name: nsgym, kwargs: {tunable_params: [m], scheduler: PeriodicScheduler, "
        "scheduler_kwargs: {period: 5000}, update_fn: IncrementUpdate, update_kwargs: {k: 0.1}}}]}\n"
        f"train: {{total_timesteps: 10}}\noutput: {{dir: {tmp_path / 'runs'}}}\n"
    )
    with pytest.raises(
        ConfigError, match=r'env.wrappers\[0\] \(nsgym\) cannot be built here: NS-Gym is not installed: pip install -e "\.\[nsgym\]"'
    ):
        check_env(resolve_config(read_config_file(path)))
    assert cli.main(["train", str(path)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert 'pip install -e ".[nsgym]"' in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
