"""The documentation agrees with the code and with the committed results.

* The reference pages under docs/reference/ are what tools/gen_docs.py writes from the code today.
* Every number on a hand-written page (and in the README) comes from a committed file that the page
  cites: a link into docs/results/ (the cited folder's reports, CSV and JSON files) or a file path
  written as code (a config, ``hybrid_pg/settings.py``), as written there or rounded (2314 for
  2313.9). Integers below 100 are not checked (counts
  of seeds and runs, section numbers), nor numbers in code, in link targets or followed by a unit
  letter (``300k``). A number that is in none of the cited files fails, naming the page and the
  number: cite the file it comes from, or correct it.
* The links and images the site needs exist (mkdocs build --strict checks the rest in CI).
"""

from __future__ import annotations

import importlib.util
import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Iterator, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RESULTS = DOCS / "results"
#: hand-written pages: everything under docs/ but the committed results, figures and generated reference
HANDWRITTEN = sorted(p for p in DOCS.rglob("*.md") if p.relative_to(DOCS).parts[0] not in ("results", "figures", "reference"))
SOURCE_SUFFIXES = (".md", ".csv", ".json", ".yaml", ".yml", ".py", ".toml")


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "tools" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_reference_pages_are_current():
    gen = _gen_docs()
    stale = [name for name, text in gen.render_all().items() if (gen.REFERENCE / name).read_text(encoding="utf-8") != text]
    assert not stale, f"docs/reference/{stale} differ from the code: run python tools/gen_docs.py and commit the pages"


# ------------------------------------------------------------------------------------------------
# numbers on the pages
# ------------------------------------------------------------------------------------------------

FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]+`")
LINK_TARGET = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
COMMENT = re.compile(r"<!--.*?-->", re.S)
SNIPPET = re.compile(r"^--8<--.*$", re.M)
ARXIV_ID = re.compile(r"arXiv[: ]\d{4}\.\d{4,5}")
NUMBER = re.compile(r"(?<![\w.])[-+\u2212]?(\d+(?:\.\d+)?)(?![\w.]*[A-Za-wyzA-Z_])")
ANY_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _prose(text: str) -> str:
    for pattern in (FENCE, COMMENT, SNIPPET, INLINE_CODE, ARXIV_ID):
        text = pattern.sub(" ", text)
    return LINK_TARGET.sub("]", text)


def page_numbers(text: str) -> Iterator[str]:
    """The numbers a reader sees on a page that must come from a cited file."""
    for match in NUMBER.finditer(_prose(text)):
        digits = match.group(1)
        if "." in digits or int(digits) >= 100:
            yield digits


def cited_files(page: Path, text: str) -> Set[Path]:
    """The committed files a page cites: its links into docs/results/ (a linked report brings its
    folder's reports, CSV and JSON files) and the repository files it names as code."""
    files: Set[Path] = set()
    for target in LINK_TARGET.findall(COMMENT.sub(" ", text)):
        path = (page.parent / target.split("#")[0]).resolve()
        if path.is_file() and RESULTS in path.parents:
            files.add(path)
            files.update(p for p in path.parent.iterdir() if p.is_file() and p.suffix in SOURCE_SUFFIXES)
    for code in INLINE_CODE.findall(text):
        candidate = ROOT / code.strip("`").split()[0]
        if candidate.suffix in SOURCE_SUFFIXES and candidate.is_file():
            files.add(candidate.resolve())
    return files


def source_numbers(files: Set[Path]) -> Set[str]:
    """Every number in ``files``, also rounded to each shorter precision (a page may write 2314 for
    a report's 2313.9, never 2315)."""
    found: Set[str] = set()
    for path in files:
        for text in set(ANY_NUMBER.findall(path.read_text(encoding="utf-8", errors="replace"))):
            decimals = len(text.partition(".")[2])
            for d in range(decimals + 1):
                found.add(str(Decimal(text).quantize(Decimal(1).scaleb(-d), rounding=ROUND_HALF_UP)))
    return found


def _checked_pages() -> Iterator[Tuple[str, Path]]:
    for page in HANDWRITTEN:
        yield str(page.relative_to(ROOT)), page
    yield "README.md", ROOT / "README.md"


@pytest.mark.parametrize("name,page", list(_checked_pages()), ids=[n for n, _ in _checked_pages()])
def test_every_number_on_a_page_comes_from_a_file_it_cites(name, page):
    text = page.read_text(encoding="utf-8")
    known = source_numbers(cited_files(page, text))
    missing = sorted({n for n in page_numbers(text) if n not in known}, key=lambda n: float(n))
    assert not missing, (
        f"{name}: {missing} are in none of the files it cites ({sorted(str(p.relative_to(ROOT)) for p in cited_files(page, text))})"
    )


def test_the_number_check_can_fail(tmp_path):
    report = tmp_path / "docs" / "results" / "x" / "table.md"
    report.parent.mkdir(parents=True)
    report.write_text("| cell | final |\n|---|---|\n| hybrid | 2313.9 [1663.6, 3314.2] |\n")
    text = "The hybrid reaches 2314 [1664, 3315] in 300k steps (`hybrid-pg ablate 12345`), 1.29x PPO."
    numbers = list(page_numbers(text))
    assert numbers == ["2314", "1664", "3315", "1.29"]
    known = source_numbers({report})
    assert [n for n in numbers if n not in known] == ["3315", "1.29"]


# ------------------------------------------------------------------------------------------------
# links the site and the README need
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,page", list(_checked_pages()), ids=[n for n, _ in _checked_pages()])
def test_relative_links_and_images_resolve(name, page):
    text = FENCE.sub(" ", page.read_text(encoding="utf-8"))
    broken = []
    for target in LINK_TARGET.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = page.parent / target.split("#")[0]
        if not path.exists() or (name != "README.md" and left_out_of_the_site(path)):
            broken.append(target)
    assert not broken, f"{name}: broken links {broken} (missing, or left out of the site by mkdocs.yml's exclude_docs)"


def left_out_of_the_site(path: Path) -> bool:
    """Whether mkdocs.yml's ``exclude_docs`` leaves ``path`` out of the built site (results' run
    folders, CSV and JSON files; Python files): a page's link to it would be broken on the site."""
    path = path.resolve()
    if path.suffix == ".py":
        return True
    return RESULTS in path.parents and (path.suffix in (".csv", ".json") or "runs" in path.relative_to(RESULTS).parts)


def test_the_site_exclusions_are_the_ones_mkdocs_yml_lists():
    block = (ROOT / "mkdocs.yml").read_text(encoding="utf-8").split("exclude_docs: |")[1].split("\n\n")[0]
    assert [line.strip() for line in block.strip().splitlines()] == ["results/**/runs/", "results/**/*.csv", "results/**/*.json", "*.py"]
    assert left_out_of_the_site(RESULTS / "mujoco10" / "runs_Hopper-v5.csv")
    assert left_out_of_the_site(RESULTS / "mujoco10" / "runs" / "x" / "config.yaml")
    assert not left_out_of_the_site(RESULTS / "mujoco10" / "goals_ppo.md")


def test_the_readme_keeps_the_two_quick_start_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    venv = "python3 -m venv .venv && . .venv/bin/activate && "
    setup = venv + "pip install torch==2.13.0 && pip install -e . && hybrid-pg train"
    tests = venv + 'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest'
    assert f"```bash\n{setup}\n```" in readme and f"```bash\n{tests}\n```" in readme
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert tests.removeprefix(venv) in ci.splitlines(), ".ci/run no longer runs the README's test command verbatim"
