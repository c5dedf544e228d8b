#!/usr/bin/env python3
"""Run Stable-Baselines3's own test suite with HybridPG in A2C's place.

Downloads the source distribution of the *installed* stable-baselines3 version
(``pip download --no-binary :all: --no-deps stable-baselines3==<version>``), unpacks its
``tests/`` (and the ``pyproject.toml`` that holds their pytest settings) into a cache folder, and
runs pytest on them with the ``sb3_peer.plugin`` plugin, which puts HybridPG in A2C's place and
deselects what HybridPG does not support (see README.md beside this file). By default it runs the
suite twice, once per update shape of HybridPG (``a2c``, then ``ppo``: see ``--shape``).

    python tools/sb3_peer/run_peer_suite.py [--cache DIR] [--keep] [--list-deselected] [--shape S]
                                            [-k EXPR] [any other pytest argument]

Exit status: the first nonzero pytest status of the shapes run (0 only when every selected test
passed in every shape), or 1 when a test module with A2C
tests could not be imported because an optional package is missing (``--allow-missing-deps``
makes that a warning), or 2 when the download or unpacking failed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.dirname(HERE)  # on PYTHONPATH so that `-p sb3_peer.plugin` imports
DIST = "stable-baselines3"
DEFAULT_CACHE = os.path.join(tempfile.gettempdir(), "hybrid_pg-sb3-peer")
MARKER = ".sb3-peer-complete"
#: packages SB3's test modules import at module level beyond what hybrid_pg itself needs
OPTIONAL_TEST_DEPS = ("pandas", "ale-py")
#: the update shapes of the plugin's --peer-shape, run in this order
SHAPES = ("a2c", "ppo")


def parse_args(argv: Optional[List[str]]) -> Tuple[argparse.Namespace, List[str]]:
    parser = argparse.ArgumentParser(
        description="Run SB3's own tests with HybridPG in A2C's place (the SB3 peer suite).",
        epilog="Any other argument goes to pytest unchanged (e.g. -x, -v, --lf, --durations=10).",
    )
    parser.add_argument("--cache", metavar="DIR", default=DEFAULT_CACHE, help=f"download/unpack folder (default: {DEFAULT_CACHE})")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the unpacked tests for later runs (which then skip the download); without it, "
        "what this run downloaded is removed at the end",
    )
    parser.add_argument("--list-deselected", action="store_true", help="also list every item not about A2C")
    parser.add_argument("-k", dest="keyword", metavar="EXPR", help="pytest -k expression")
    parser.add_argument("--hybrid-kwargs", metavar="JSON", help='extra HybridPG defaults, e.g. \'{"estimator": "pathwise"}\'')
    parser.add_argument(
        "--shape",
        choices=(*SHAPES, "both"),
        default="both",
        help="HybridPG's update shape in A2C's place: a2c (one full-batch step per rollout), ppo (HybridPG's "
        "default path: minibatch epochs, ratio clipping, pathwise KL limit) or both, one pytest run each (default)",
    )
    parser.add_argument("--no-rules", action="store_true", help="audit the rules: run every A2C item, deselecting none by rule")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OMP/MKL threads per process unless OMP_NUM_THREADS is set (default 1: SB3's test networks "
        "are tiny and extra threads only contend, which on a loaded 2-core machine is 5-20x slower)",
    )
    parser.add_argument(
        "--allow-missing-deps",
        action="store_true",
        help=f"only warn when a test module with A2C tests cannot be imported (needs e.g. {', '.join(OPTIONAL_TEST_DEPS)})",
    )
    return parser.parse_known_args(argv)


def log(msg: str) -> None:
    print(f"sb3-peer: {msg}", flush=True)


def fetch_tests(version: str, cache: str) -> Tuple[str, bool]:
    """The unpacked sdist folder (tests/ and pyproject.toml), and whether this call created it."""
    root = os.path.join(cache, f"stable_baselines3-{version}")
    if os.path.isfile(os.path.join(root, MARKER)):
        log(f"using the unpacked tests in {root}")
        return root, False
    os.makedirs(cache, exist_ok=True)
    shutil.rmtree(root, ignore_errors=True)  # an interrupted earlier run
    with tempfile.TemporaryDirectory(dir=cache, prefix="download-") as download:
        log(f"downloading the {DIST}=={version} source distribution")
        cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-q", f"{DIST}=={version}", "-d", download]
        subprocess.run(cmd, check=True)
        sdists = [f for f in os.listdir(download) if f.endswith((".tar.gz", ".zip"))]
        if len(sdists) != 1:
            raise RuntimeError(f"expected one source distribution in {download}, found {sdists}")
        staging = os.path.join(download, "unpacked")
        _extract(os.path.join(download, sdists[0]), staging)
        if not os.path.isdir(os.path.join(staging, "tests")):
            raise RuntimeError(f"{sdists[0]} has no tests/ folder")
        with open(os.path.join(staging, MARKER), "w", encoding="utf-8") as fh:
            fh.write(f"{sdists[0]}\n")
        os.replace(staging, root)
    log(f"unpacked {sdists[0]}: tests/ and pyproject.toml in {root}")
    return root, True


def _extract(archive: str, dest: str) -> None:
    """Only ``<top>/tests/**`` and ``<top>/pyproject.toml``, never SB3's package source: the tests
    must import the installed stable_baselines3 (the one HybridPG runs on)."""
    with tarfile.open(archive) as tar:
        members = []
        for m in tar.getmembers():
            parts = m.name.split("/")
            if len(parts) < 2 or not (parts[1] == "tests" or m.name.count("/") == 1 and parts[1] == "pyproject.toml"):
                continue
            if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
                continue
            m = m.replace(name="/".join(parts[1:])) if hasattr(m, "replace") else _renamed(m, "/".join(parts[1:]))
            members.append(m)
        os.makedirs(dest)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:  # Python < 3.11.4: members are already restricted to plain files and folders
            tar.extractall(dest, members=members)


def _renamed(member: tarfile.TarInfo, name: str) -> tarfile.TarInfo:
    member.name = name
    return member


def run_shape(
    shape: str, root: str, env: Dict[str, str], args: argparse.Namespace, pytest_args: List[str]
) -> Tuple[int, Optional[dict], float]:
    """One pytest run of the suite in one update shape: (exit status, the plugin's report, seconds)."""
    fd, report_path = tempfile.mkstemp(prefix="sb3-peer-", suffix=".json")
    os.close(fd)
    cmd = [
        sys.executable, "-m", "pytest", os.path.join(root, "tests"),
        "-c", os.path.join(root, "pyproject.toml"), "--rootdir", root,
        "-p", "sb3_peer.plugin", "-p", "no:cacheprovider",
        "--peer-report", report_path, "--peer-shape", shape, "-q", "-rfE",
    ]  # fmt: skip
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd += ["--timeout", "600"]  # a hung test (e.g. a SubprocVecEnv deadlock) fails instead of stalling CI
    if args.list_deselected:
        cmd.append("--peer-list-deselected")
    if args.no_rules:
        cmd.append("--peer-no-rules")
    if args.hybrid_kwargs:
        cmd += ["--hybrid-kwargs", args.hybrid_kwargs]
    if args.keyword:
        cmd += ["-k", args.keyword]
    cmd += pytest_args
    log(f"[{shape} shape] running the tests with HybridPG in A2C's place (OMP_NUM_THREADS={env['OMP_NUM_THREADS']})")
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, cwd=root, env=env).returncode  # cwd: tests that write relative paths stay in the cache
    seconds = time.perf_counter() - t0
    try:
        with open(report_path, encoding="utf-8") as fh:
            report = json.load(fh)
    except (OSError, ValueError):
        report = None
    finally:
        os.unlink(report_path)
    return rc, report, seconds


def summarize(shape: str, version: str, report: dict, seconds: float) -> Dict[str, int]:
    deselected = report["deselected"]
    by_rule = [d for d in deselected if d["by_rule"]]
    bugs = [d for d in by_rule if d["reason"].startswith("BUG:")]
    out = report["outcomes"]
    other = report.get("other_deselected", 0)
    log(
        f"[{shape} shape] stable-baselines3 {version}: {len(report['selected']) + len(deselected) + other} collected, "
        f"{len(report['selected'])} selected ({len(report.get('adapted', []))} of them adapted), {len(deselected)} deselected "
        f"({len(by_rule)} by rule, {len(bugs)} of them marked BUG; {len(deselected) - len(by_rule)} not about A2C)"
        + (f", {other} more by -k/-m" if other else "")
    )
    for d in bugs:
        log(f"[{shape} shape] deselected as BUG: {d['nodeid']}")
    counts = dict(
        passed=out.get("passed", 0),
        failed=out.get("failed", 0) + out.get("error", 0),
        skipped=out.get("skipped", 0),
        xfailed=out.get("xfailed", 0),
        deselected_by_rule=len(by_rule),
    )
    log(f"[{shape} shape] {seconds:.0f} s: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()))
    return counts


def main(argv: Optional[List[str]] = None) -> int:
    args, pytest_args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        version = importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        log(f"{DIST} is not installed")
        return 2
    cache = os.path.abspath(args.cache)
    try:
        root, created = fetch_tests(version, cache)
    except (subprocess.CalledProcessError, RuntimeError, OSError, tarfile.TarError) as exc:
        log(f"could not get the {DIST}=={version} tests: {exc}")
        return 2
    t_fetch = time.perf_counter() - t0

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([TOOLS] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("MPLBACKEND", "Agg")
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = env.setdefault("MKL_NUM_THREADS", str(args.threads))
    shapes = SHAPES if args.shape == "both" else (args.shape,)
    runs = [(shape, *run_shape(shape, root, env, args, pytest_args)) for shape in shapes]

    if created and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
        if cache == DEFAULT_CACHE and not os.listdir(cache):
            os.rmdir(cache)
    rc = 0
    total: Dict[str, int] = {}
    missing = False
    for shape, shape_rc, report, seconds in runs:
        rc = rc or shape_rc
        if report is None:
            log(f"[{shape} shape] pytest ended without a report (exit status {shape_rc})")
            rc = rc or 1
            continue
        for key, value in summarize(shape, version, report, seconds).items():
            total[key] = total.get(key, 0) + value
        missing = missing or any(m["mentions_a2c"] for m in report["not_collected"])
        for m in report["not_collected"] if shape == runs[0][0] else ():
            log(f"NOT COLLECTED {m['file']}: {m['reason']}" + ("; it has A2C tests" if m["mentions_a2c"] else ""))
    log(f"time: {t_fetch:.0f} s download/unpack, " + ", ".join(f"{s:.0f} s tests ({shape} shape)" for shape, _, _, s in runs))
    if missing and rc == 0 and not args.allow_missing_deps:
        log(f"test modules with A2C tests were not collected: pip install {' '.join(OPTIONAL_TEST_DEPS)} (or --allow-missing-deps)")
        rc = 1
    # the plain closing line (pytest's own summary lines are above, before the plugin's reports)
    print(
        f"sb3-peer ({' + '.join(shapes)} shape{'s' if len(shapes) > 1 else ''}): {total.get('passed', 0)} passed, "
        f"{total.get('failed', 0)} failed, {total.get('skipped', 0)} skipped, {total.get('xfailed', 0)} xfailed",
        flush=True,
    )
    return rc


if __name__ == "__main__":
    sys.exit(main())
