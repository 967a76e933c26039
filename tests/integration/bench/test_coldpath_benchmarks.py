"""The cold-path benchmarks run end to end at a tiny size and write their figures (no timing
is asserted: benchmarks are not timed tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import coldpath, coldpath_data, coldpath_memory

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def small_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coldpath_data, "POOL_SIZE", 200)


def test_throughput_benchmark_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "coldpath.md"
    coldpath.main(
        [
            *("--apps", "2", "--documents", "300", "--reference", "100"),
            *("--measure-apps", "2", "--repeats", "1"),
            *("--data", str(tmp_path / "data"), "--out", str(out)),
        ]
    )
    text = out.read_text(encoding="utf-8")
    assert "| **median** |" in text
    assert "Evaluation ÷ floor" in text
    assert "Pandas ÷ evaluation" in text
    assert "(differ)" not in text  # the runner and the pandas script agree on every value
    assert "## Executor scaling: 2 units in 1 shards" in text


def test_memory_benchmark_reports_growth(tmp_path: Path) -> None:
    out = tmp_path / "coldpath_memory.md"
    coldpath_memory.main(
        [
            *("--documents", "300", "--reference", "100", "--repeats", "1"),
            *("--data", str(tmp_path / "store.db"), "--out", str(out)),
        ]
    )
    text = out.read_text(encoding="utf-8")
    assert "**Median peak growth:" in text
    assert "300 latencies" in text
