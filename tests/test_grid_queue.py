"""tools/grid_queue.sh: a queue of grids runs from a frozen worktree (the package imported from it,
not from the checkout being edited), into the checkout's output folders, and says when a line fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs git and a checkout")


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_queue_runs_from_a_frozen_worktree(tmp_path):
    clone = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", "--shared", str(ROOT), str(clone)], check=True)
    # the grid's config as committed, then an edit that a frozen grid must not see
    (clone / "configs" / "queue_probe.yaml").write_text((ROOT / "configs" / "ablate_smoke.yaml").read_text())
    _git(clone, "add", "configs/queue_probe.yaml")
    _git(clone, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "probe")
    commit = _git(clone, "rev-parse", "--short", "HEAD")
    (clone / "hybrid_pg" / "__init__.py").write_text("raise ImportError('the edited checkout was imported')\n")
    queue = tmp_path / "queue.txt"
    queue.write_text("# comment\n\nconfigs/queue_probe.yaml --dry-run\nconfigs/missing.yaml\n")
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "tools" / "grid_queue.sh"), str(queue)], cwd=clone, env=env, capture_output=True, text=True)
    frozen = tmp_path / f"frozen-{commit}"
    assert (frozen / "hybrid_pg" / "__init__.py").read_text() != (clone / "hybrid_pg" / "__init__.py").read_text()
    assert f"{commit} configs/queue_probe.yaml --dry-run" in proc.stdout
    assert "exit 0" in proc.stdout  # the dry run, importing the frozen package
    assert proc.returncode != 0  # the missing config is reported in the exit status
    _git(clone, "worktree", "remove", "--force", str(frozen))
