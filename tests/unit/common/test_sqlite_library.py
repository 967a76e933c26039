"""The SQLite library: one with the WAL-reset fix, and the only one evalstream's code opens
files with (common/sqlite.py says why)."""

from __future__ import annotations

import ast
from pathlib import Path

from common.sqlite import sqlite3

ROOT = Path(__file__).resolve().parents[3]
# The first release of each line with the fix (https://sqlite.org/wal.html#walresetbug):
# 3.44.6 and 3.50.7 are backports, 3.51.3 and later have it.
FIXED = {(3, 44): (3, 44, 6), (3, 50): (3, 50, 7)}
FIXED_FROM = (3, 51, 3)


def has_wal_reset_fix(version: tuple[int, int, int]) -> bool:
    backport = FIXED.get(version[:2])
    return version >= backport if backport is not None else version >= FIXED_FROM


def test_the_rule_tells_fixed_releases_from_affected_ones() -> None:
    assert [has_wal_reset_fix(v) for v in [(3, 40, 1), (3, 46, 1), (3, 51, 2), (3, 50, 6)]] == [
        False
    ] * 4
    assert [has_wal_reset_fix(v) for v in [(3, 51, 3), (3, 53, 4), (3, 50, 7), (3, 44, 6)]] == [
        True
    ] * 4


def test_the_linked_sqlite_has_the_wal_reset_fix() -> None:
    assert has_wal_reset_fix(sqlite3.sqlite_version_info), sqlite3.sqlite_version


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
