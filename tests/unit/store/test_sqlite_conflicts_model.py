"""The embedded store's upsert against the model of its rule (upsert_model.py), on both layouts:
the time-led key (a producer's event_id reused at another time of the day is refused through the
named rows' index) and the (pk, id) key of files made before."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings

from store.sqlite import SqliteStore
from tests.unit.store.layouts import earlier_file
from tests.unit.store.upsert_model import BATCHES, Read, check_upsert_model


async def check(path: Path, batches: list[list[Read]]) -> None:
    async with SqliteStore(path) as store:
        await check_upsert_model(store, batches)


@pytest.mark.parametrize("layout", ["time-led", "earlier"])
@settings(max_examples=60, deadline=None)
@given(batches=BATCHES)
def test_the_upsert_decides_as_its_rule_on_generated_batches(
    layout: str, batches: list[list[Read]]
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "store.db"
        if layout == "earlier":
            earlier_file(path)
        asyncio.run(check(path, batches))
