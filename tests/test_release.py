"""Release habits the repository keeps: one version, and a changelog a user can read by version.

The version lives in one place, ``hybrid_pg.__version__``; the package metadata reads it from there
(pyproject's dynamic version). CHANGELOG.md follows Keep a Changelog: ``[Unreleased]`` first, then one
``## [X.Y.Z] - YYYY-MM-DD`` heading per release, newest first, and the newest release is the version
the package carries (docs/contributing.md, "Releasing").
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import pytest

import hybrid_pg

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}
RELEASE = re.compile(r"^## \[(\d+)\.(\d+)\.(\d+)\] - (\d{4}-\d{2}-\d{2})$")


def _changelog_headings(text: str) -> list:
    """(heading, [its ### sections]) for every ``## `` heading of the changelog, in order."""
    out: list = []
    for line in text.splitlines():
        if line.startswith("## "):
            out.append((line, []))
        elif line.startswith("### "):
            assert out, f"a section before any version heading: {line!r}"
            out[-1][1].append(line[4:].strip())
    return out


def test_the_version_is_semantic_and_read_by_the_package_metadata_from_one_place():
    assert re.fullmatch(r"\d+\.\d+\.\d+", hybrid_pg.__version__), hybrid_pg.__version__
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"], "set the version in hybrid_pg/__init__.py only"
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "hybrid_pg.__version__"}


def _check_changelog(text: str, version: str) -> None:
    """Assert that ``text`` is a changelog as the module docstring describes, newest release ``version``."""
    headings = _changelog_headings(text)
    assert headings and headings[0][0] == "## [Unreleased]", "the first version heading must be [Unreleased]"
    releases = []
    for heading, sections in headings[1:]:
        match = RELEASE.match(heading)
        assert match, f"a release heading reads '## [X.Y.Z] - YYYY-MM-DD', not {heading!r}"
        release = tuple(int(g) for g in match.groups()[:3])
        date = datetime.date.fromisoformat(match.group(4))
        assert sections, f"{heading} lists no changes"
        releases.append((release, date))
    for heading, sections in headings:
        unknown = set(sections) - SECTIONS
        assert not unknown, f"{heading}: sections {sorted(unknown)} are not Keep a Changelog's {sorted(SECTIONS)}"
        assert len(sections) == len(set(sections)), f"{heading} repeats a section"
    assert releases, "no release yet"
    assert [v for v, _ in releases] == sorted({v for v, _ in releases}, reverse=True), "releases must be newest first, each once"
    assert [d for _, d in releases] == sorted((d for _, d in releases), reverse=True), "release dates must not go back in time"
    newest = ".".join(str(p) for p in releases[0][0])
    assert newest == version, f"the newest release in CHANGELOG.md is {newest}, the package says {version}"


def test_the_changelog_lists_releases_newest_first_and_the_newest_is_the_package_version():
    _check_changelog((REPO / "CHANGELOG.md").read_text(), hybrid_pg.__version__)


@pytest.mark.parametrize(
    "text, message",
    [
        ("## [0.2.0] - 2026-01-01\n### Added\n- x\n", "must be \\[Unreleased\\]"),
        ("## [Unreleased]\n## [0.2.0] - 2026-01-01\n### Added\n- x\n## [0.3.0] - 2026-02-01\n### Added\n- y\n", "newest first"),
        ("## [Unreleased]\n## [0.2.0] - 2026-01-01\n### Improved\n- x\n", "not Keep a Changelog"),
        ("## [Unreleased]\n## 0.2.0 (January)\n### Added\n- x\n", "a release heading reads"),
    ],
)
def test_the_changelog_check_refuses_what_it_should(text, message):
    """The check fails on each broken shape (so the test above can fail)."""
    with pytest.raises(AssertionError, match=message):
        _check_changelog(text, "0.2.0")
