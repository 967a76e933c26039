"""bench/RESULTS.md holds only what the benchmarks recorded: it is bench.summary's output."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import summary


def test_the_committed_results_md_is_the_summary_of_the_recorded_files() -> None:
    # A figure typed into RESULTS.md by hand, or a results file re-recorded without the
    # summary written again, makes them differ.
    assert summary.SUMMARY.read_text() == summary.render()


def test_every_section_copies_its_recorded_file_and_nothing_else(tmp_path: Path) -> None:
    for section in summary.SECTIONS:
        (tmp_path / section.file).write_text(
            f"# {section.file}\n\nfigure 1.23 for {section.file}\n\n## Details\n\n[x](other.md)\n"
        )
    text = summary.render(tmp_path)
    for section in summary.SECTIONS:
        assert f"### {section.file}\n\nfigure 1.23 for {section.file}" in text
        assert f"`{section.command}` → [results/{section.file}](results/{section.file})" in text
    # Headings go two levels down, links into results/.
    assert "#### Details" in text
    assert "[x](results/other.md)" in text
    body = text[len(summary.INTRO) :]
    figures = [line for line in body.splitlines() if "1.23" in line]
    assert len(figures) == len(summary.SECTIONS)


def test_a_long_file_is_shown_by_its_summary_and_targets(tmp_path: Path) -> None:
    long = "\n".join(f"row {index}" for index in range(summary.WHOLE_FILE_LINES + 1))
    text = "# Detection\n\nsummary line\n\n## Targets\n\ntarget line\n\n## Drift\n\n" + long + "\n"
    assert summary.excerpt(text) == "# Detection\n\nsummary line\n\n## Targets\n\ntarget line"
    short = "# Short\n\n## Part\n\nkept\n"
    assert summary.excerpt(short) == short.strip()


def test_a_missing_results_file_stops_the_summary_with_its_command(tmp_path: Path) -> None:
    with pytest.raises(
        SystemExit, match=r"processor\.md is missing: run `python -m bench\.processor"
    ):
        summary.render(tmp_path)


def test_a_file_written_by_another_command_stops_the_summary(tmp_path: Path) -> None:
    for section in summary.SECTIONS:
        (tmp_path / section.file).write_text(f"# {section.file}\n\nCommand: `{section.command}`\n")
    summary.render(tmp_path)
    (tmp_path / "processor.md").write_text(
        "# Processor\n\nCommand: `python -m bench.processor --events 10 --repeats 1`\n"
    )
    with pytest.raises(
        SystemExit, match=r"processor\.md was written by `python -m bench\.processor --events 10"
    ):
        summary.render(tmp_path)
