"""The SQLite library: one with the WAL-reset fix, and the only one evalstream's code opens
files with (common/sqlite.py says why)."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

import common.sqlite
from common.sqlite import connect, has_wal_reset_fix, sqlite3

ROOT = Path(__file__).resolve().parents[3]


def test_the_rule_tells_fixed_releases_from_affected_ones() -> None:
    assert [has_wal_reset_fix(v) for v in [(3, 40, 1), (3, 46, 1), (3, 51, 2), (3, 50, 6)]] == [
        False
    ] * 4
    assert [has_wal_reset_fix(v) for v in [(3, 51, 3), (3, 53, 4), (3, 50, 7), (3, 44, 6)]] == [
        True
    ] * 4


def test_the_linked_sqlite_has_the_wal_reset_fix() -> None:
    assert has_wal_reset_fix(sqlite3.sqlite_version_info), sqlite3.sqlite_version


def test_a_sqlite_without_the_fix_is_named_in_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(common.sqlite, "_warned_of_wal_reset_bug", False)
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 40, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.40.1")
    with caplog.at_level(logging.WARNING, logger="common.sqlite"):
        for name in ("a.db", "b.db"):
            connect(tmp_path / name).close()
    warnings = [r.getMessage() for r in caplog.records if "WAL-reset" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("SQLite 3.40.1 has the WAL-reset bug")


def test_a_sqlite_with_the_fix_opens_files_without_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(common.sqlite, "_warned_of_wal_reset_bug", False)
    with caplog.at_level(logging.WARNING, logger="common.sqlite"):
        connect(tmp_path / "a.db").close()
    assert "WAL-reset" not in caplog.text


def test_no_module_opens_files_with_the_standard_librarys_sqlite3() -> None:
    """Two SQLite libraries in one process do not see each other's locks on a file."""
    offenders = []
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        if parts[0] in {".venv", "build"} or "node_modules" in parts:
            continue
        if parts == ("common", "sqlite.py"):
            continue  # the one import, for the type checker only
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            if any(name == "sqlite3" or name.startswith("sqlite3.") for name in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
