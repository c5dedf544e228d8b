"""The three layers: environments -> library -> experiment tooling, arrows pointing down only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"hybrid_pg": ROOT / "hybrid_pg", "hybrid_pg_envs": ROOT / "envs"}
EXPERIMENTS = "hybrid_pg.experiments"


def _modules() -> Dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _imports(name: str, path: Path) -> Set[str]:
    """Every module an import statement in ``path`` names (function-level ones included)."""
    is_package = path.name == "__init__.py"
    out: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([node.module] if node.module else []))
            out.add(base)
            out |= {f"{base}.{alias.name}" for alias in node.names}
    return out


def _own_graph() -> Dict[str, Set[str]]:
    modules = _modules()
    return {name: {m for m in _imports(name, path) if m in modules and m != name} for name, path in modules.items()}


def _in_subprocess(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_estimator_core_needs_no_stable_baselines3():
    out = _in_subprocess("import sys, hybrid_pg.estimator; print('stable_baselines3' in sys.modules)")
    assert out.strip() == "False"


def test_the_envs_need_neither_the_library_nor_stable_baselines3():
    code = "import sys, hybrid_pg_envs; print(sorted(m for m in ('hybrid_pg', 'stable_baselines3') if m in sys.modules))"
    assert _in_subprocess(code).strip() == "[]"


def test_the_library_never_imports_the_experiments():
    offenders = {
        name: sorted(m for m in deps if m == EXPERIMENTS or m.startswith(EXPERIMENTS + "."))
        for name, deps in _own_graph().items()
        if not (name == EXPERIMENTS or name.startswith(EXPERIMENTS + "."))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_envs_never_import_the_library():
    offenders = {
        name: sorted(m for m in deps if m.split(".")[0] == "hybrid_pg")
        for name, deps in _own_graph().items()
        if name.startswith("hybrid_pg_envs")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def _cycle(graph: Dict[str, Set[str]]):
    """One import cycle (a list of modules), or None. A package's own submodules importing the
    package (``from hybrid_pg.x import y`` names ``hybrid_pg``) are not edges back to it."""
    state: Dict[str, int] = {}
    stack: list = []

    def visit(node: str):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if node.startswith(dep + "."):
                continue  # a submodule naming its parent package
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


@pytest.mark.parametrize(
    "scope",
    ["hybrid_pg.experiments", "hybrid_pg", "hybrid_pg_envs"],
)
def test_no_import_cycles(scope):
    graph = {k: {d for d in v if d.startswith(scope)} for k, v in _own_graph().items() if k.startswith(scope)}
    assert _cycle(graph) is None
