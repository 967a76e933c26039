"""``evalstream quarantine`` prints a producer's text with its control characters escaped."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from evalstream.cli import app
from schemas import AppDirectory
from store.sqlite import SqliteStore
from stream.decode import Decoder
from stream.enrich import Enricher

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


def test_a_metadata_key_with_an_escape_sequence_is_shown_escaped(tmp_path: Path) -> None:
    body = (
        b'{"app_id":"a","timestamp":"2026-12-01T11:00:00Z","trace_id":"t",'
        b'"metadata":{"\\u001b[2J\\u001b[31mk\\n":[1]}}'
    )
    (rejected,) = Decoder().decode(body, NOW).rejected
    record = Enricher(AppDirectory(), b"k", "direct").quarantine(rejected, None, NOW, origin=body)

    async def write() -> None:
        async with SqliteStore(tmp_path / "store.db") as store:
            await store.write([], [record])

    asyncio.run(write())
    answer = CliRunner().invoke(app, ["quarantine", "--data-dir", str(tmp_path)])
    assert answer.exit_code == 0, answer.output
    assert "\x1b" not in answer.output and answer.output.count("\n") == 1
    assert "\\x1b[2J\\x1b[31mk\\x0a" in answer.output
