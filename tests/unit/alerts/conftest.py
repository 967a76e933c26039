"""Fixtures of the alerts tests: a controllable clock and a bus file in a tmp dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.alerts.factories import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def bus_path(tmp_path: Path) -> Path:
    return tmp_path / "alerts.db"
