"""The package as a user gets it: the public names of ``hybrid_pg``, and (slow) the built wheel
installed into a fresh virtualenv, imported and run from there."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

import hybrid_pg

REPO = Path(__file__).resolve().parents[1]
LAZY = ("HybridPG", "HybridPGSettings", "HybridActorCriticPolicy", "HybridActorCriticCnnPolicy", "HybridMultiInputActorCriticPolicy")


def test_dir_lists_every_public_name_before_first_access():
    listed = dir(hybrid_pg)
    for name in (*LAZY, "NonStationaryWrapper", "WindowedLambda", "__version__"):
        assert name in listed, name
    assert set(hybrid_pg.__all__) <= set(listed)


def test_every_exported_name_resolves_and_the_core_imports_without_sb3():
    code = (
        "import sys, hybrid_pg\n"
        "assert 'stable_baselines3' not in sys.modules, 'import hybrid_pg loaded SB3'\n"
        "missing = [n for n in hybrid_pg.__all__ if not hasattr(hybrid_pg, n)]\n"
        "assert not missing, missing\n"
        "from hybrid_pg import HybridActorCriticPolicy, NonStationaryWrapper\n"
        "from hybrid_pg.policies import HybridActorCriticPolicy as P\n"
        "from hybrid_pg_envs import NonStationaryWrapper as W\n"
        "assert HybridActorCriticPolicy is P and NonStationaryWrapper is W\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr


def test_the_package_is_marked_typed():
    # PEP 561: without py.typed a type checker ignores the package's annotations
    assert (Path(hybrid_pg.__file__).parent / "py.typed").is_file()


# ------------------------------------------------------------------------------------------------
# the built wheel in a fresh virtualenv
# ------------------------------------------------------------------------------------------------


def _site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True)
    return Path(out.stdout.strip())


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_trains(tmp_path):
    """Build the wheel (no network: this venv's setuptools, no build isolation), install it with
    ``--no-deps`` into a virtualenv that sees this venv's packages only for the dependencies, and
    use it from outside the repository: the imports resolve into the new venv, the CLI's help, and
    a few hundred steps of ``hybrid-pg train`` from the packaged default config."""
    pytest.importorskip("setuptools", minversion="77")  # the SPDX license string (pyproject's build requirement)
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(REPO)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("hybrid_pg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for packaged in (
        "hybrid_pg/py.typed",
        "hybrid_pg/experiments/configs/default.yaml",
        "hybrid_pg/experiments/configs/zoo/hybrid_pg.yml",
        "hybrid_pg_envs/__init__.py",
    ):
        assert packaged in names, packaged
    assert not any(n.startswith(("tests/", "envs/", "configs/", "examples/")) for n in names)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / ("python.exe" if os.name == "nt" else "python")
    # the dependencies come from this venv: its site-packages, appended after the new venv's own
    # (a path in a .pth file does not run that folder's .pth files, so this venv's editable
    # hybrid_pg stays invisible)
    (_site_packages(python) / "deps_from_the_test_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True,
        cwd=tmp_path,
    )

    def run(*argv: str) -> str:
        out = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": ""})
        assert out.returncode == 0, f"{argv}\n{out.stdout}\n{out.stderr}"
        return out.stdout

    where = run(str(python), "-c", "import hybrid_pg, hybrid_pg_envs; print(hybrid_pg.__file__); print(hybrid_pg_envs.__file__)")
    for path in where.split():
        assert Path(path).resolve().is_relative_to(env_dir.resolve()), where
    # the metadata's version is the one the package carries (pyproject reads hybrid_pg.__version__)
    versions = run(str(python), "-c", "import importlib.metadata as m, hybrid_pg; print(m.version('hybrid-pg'), hybrid_pg.__version__)")
    assert versions.split() == [hybrid_pg.__version__] * 2, versions
    assert "train" in run(str(bin_dir / "hybrid-pg"), "--help")
    run_dir = tmp_path / "run"
    printed = run(
        str(bin_dir / "hybrid-pg"),
        "train",
        *[f"--set={kv}" for kv in ("train.total_timesteps=256", "algo.n_steps=32", "algo.batch_size=32", "algo.n_epochs=2")],
        *[f"--set={kv}" for kv in ("train.eval_freq=0", "train.eval_episodes=1")],
        "--out",
        str(run_dir),
        "--quiet",
    )
    assert printed.strip().splitlines()[-1] == str(run_dir)
    for written in ("result.json", "config.yaml", "diagnostics.csv", "evaluations.csv", "returns.png", "lambda.png"):
        assert (run_dir / written).is_file(), written
