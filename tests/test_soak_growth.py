"""examples/soak.py's memory-growth measure: a one-off lazy import is warm-up, a leak is growth."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[1] / "examples" / "soak.py"


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("soak_example", SOAK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _records(rss, modules, steps=100_000):
    return [
        dict(checkpoint=i, num_timesteps=steps * (i + 1) // 10, rss_mb=r, gc_objects=1000, modules=m)
        for i, (r, m) in enumerate(zip(rss, modules))
    ]


def test_a_one_off_import_after_20_percent_is_warm_up(soak):
    # checkpoints at 10%..100%; a lazy import (+40 modules, +30 MB) lands between 20% and 30%
    rss = [100, 100, 130, 130, 130, 130, 130, 130, 130, 130.5]
    modules = [500, 500, 540, 540, 540, 540, 540, 540, 540, 540]
    growth = soak.memory_growth(_records(rss, modules), 100_000)
    assert growth["from_20_percent"]["growth_mb"] == pytest.approx(30.5)  # what the old measure reported
    assert growth["growth_mb"] == pytest.approx(0.5) and growth["warmup_end_step"] == 30_000
    assert growth["baseline"] == "after warm-up"


def test_a_leak_still_shows(soak):
    rss = [100 + 10 * i for i in range(10)]
    growth = soak.memory_growth(_records(rss, [500] * 10), 100_000)
    assert growth["growth_mb"] == pytest.approx(80.0) and growth["warmup_end_step"] == 20_000
    assert growth["from_20_percent"]["growth_mb"] == pytest.approx(80.0)


def test_imports_up_to_the_end_fall_back_to_the_20_percent_baseline(soak):
    growth = soak.memory_growth(_records([100] * 9 + [120], list(range(500, 510))), 100_000)
    assert growth["baseline"] == "20%" and growth["warmup_end_step"] is None and growth["growth_mb"] == pytest.approx(20.0)
