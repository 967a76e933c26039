"""The cold-path benchmarks run end to end on tiny sizes and report their figures (no timing
is asserted: benchmarks are not timed tests)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import coldpath, coldpath_memory

pytestmark = pytest.mark.integration


def test_throughput_benchmark_reports_every_mode_and_the_executor(tmp_path: Path) -> None:
    out = tmp_path / "coldpath.md"
    coldpath.main(
        [
            "--documents", "600", "--reference", "200", "--pool", "100", "--repeats", "1",
            "--apps", "2", "--per-app", "90", "--group-size", "2", "--out", str(out),
        ]
    )  # fmt: skip
    text = out.read_text()
    for mode in ("(a) floor", "(b) evaluation", "(c) pandas"):
        assert re.search(rf"\| {re.escape(mode)}[^|]*\| [\d.]+ \| [\d.]+ \| [\d,]+ \|", text), mode
    assert re.search(r"Evaluation ÷ floor: \*\*[\d.]+×\*\*", text)
    assert re.search(r"pandas ÷ evaluation: \*\*[\d.]+×\*\*", text)
    assert "all equal between evaluation and pandas" in text
    assert re.search(r"Speed-up 2 workers vs 1: \*\*[\d.]+×\*\*", text)
    assert "4 units (2 apps × 2 policies" in text


def test_memory_benchmark_reports_growth_per_run(tmp_path: Path) -> None:
    out = tmp_path / "coldpath_memory.md"
    coldpath_memory.main(
        ["--documents", "500", "--reference", "100", "--pool", "100", "--repeats", "1",
         "--data-dir", str(tmp_path / "data"), "--out", str(out)]
    )  # fmt: skip
    text = out.read_text()
    assert re.search(r"\| 1 \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [+-][\d.]+ \|", text)
    assert re.search(r"Median peak RSS growth: [\d.]+ MiB", text)
    assert "(500 documents)" in text and "(100 documents)" in text
