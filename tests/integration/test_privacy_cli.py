"""No raw user_id leaves the door: events with user ids sent over HTTP and with ``send``,
valid and invalid, processed — no file in the data dir holds a user id, ``evalstream
quarantine`` prints none, and the documents have the ids HTTP answered and the users' hashes."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest

from evalstream import wiring
from evalstream.cli.options import load
from stream.producers.ingest import IngestApp
from stream.producers.ingest_server import bound_port, serving

pytestmark = pytest.mark.integration

USERS = ["alice@example.com", "bob@example.com", "carol@example.com", "dave@example.com"]
# Users named in metadata (over HTTP, with send): stored and logged as their keyed hashes.
TAGGED = ["erin@example.com", "frank@example.com"]


def event(user: str, **fields: object) -> dict[str, object]:
    when = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    trace = "t-" + user.split("@")[0]
    return {"app_id": "app-1", "timestamp": when, "trace_id": trace, "user_id": user, **fields}


def evalstream(data_dir: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("EVALSTREAM_")}
    return subprocess.run(
        [sys.executable, "-m", "evalstream", *args, "--data-dir", str(data_dir)],
        env={**env, "COLUMNS": "300"},
        capture_output=True,
        timeout=120,
        check=False,
    )


async def test_no_raw_user_id_is_kept_or_printed(tmp_path: Path) -> None:
    settings = load(None, tmp_path)
    enricher = wiring.enricher(settings, "ingest")
    async with (
        wiring.store(settings) as store,
        wiring.sink(settings) as sink,
        serving(
            IngestApp(wiring.decoder(settings), enricher, sink, store).app, "127.0.0.1", 0
        ) as server,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{bound_port(server)}") as client,
    ):
        answer = await client.post(
            "/api/telemetry",
            json=[
                event(USERS[0], metadata={"user_id": TAGGED[0]}),
                event(USERS[1], latency_ms=-1),
            ],
        )
    assert answer.status_code == 207, answer.text
    [http_id] = answer.json()["ids"]
    lines = [
        event(USERS[2], metadata={"user_id": TAGGED[1], "k": "v"}),
        [event(USERS[3], status="maybe"), event(USERS[2], latency_ms=5)],
    ]
    (tmp_path / "in.ndjson").write_bytes(b"\n".join(orjson.dumps(line) for line in lines))

    assert evalstream(tmp_path, "send", str(tmp_path / "in.ndjson")).returncode == 0
    processed = evalstream(tmp_path, "process", "--no-ingest", "--until-idle", "1")
    assert processed.returncode == 0, processed.stderr.decode()
    printed = [evalstream(tmp_path, "quarantine", *flags) for flags in ([], ["--json"])]

    assert [p.returncode for p in printed] == [0, 0]
    records = [orjson.loads(line) for line in printed[1].stdout.splitlines()]
    fields = sorted(r["issues"][0]["location"].rsplit(".")[-1] for r in records)
    assert fields == ["latency_ms", "status"]
    for shown in [p.stdout + p.stderr for p in printed] + [processed.stdout + processed.stderr]:
        assert not [user for user in USERS + TAGGED if user.encode() in shown], shown.decode()
    kept = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    assert {"log.db", "store.db"} <= set(kept)
    assert [(n, u) for n, data in kept.items() for u in USERS + TAGGED if u.encode() in data] == [
        ("in.ndjson", u) for u in [*USERS[2:], TAGGED[1]]
    ]  # only the user's own input file
    async with wiring.store(settings) as store:
        assert await store.count("telemetry") == 3
        [stored] = [
            doc
            async for page in store.telemetry_window(["app-1"], datetime(2026, 1, 1, tzinfo=UTC),
                                                     datetime.now(UTC))
            for doc in page
            if doc.trace_id == "t-alice"
        ]  # fmt: skip
        tagged = [
            doc.metadata["user_id"]
            async for page in store.telemetry_window(["app-1"], datetime(2026, 1, 1, tzinfo=UTC),
                                                     datetime.now(UTC))
            for doc in page
            if "user_id" in doc.metadata
        ]  # fmt: skip
    assert stored.id == http_id
    assert stored.user_hash == enricher.user_hash(USERS[0])
    assert sorted(tagged) == sorted(enricher.user_hash(user) for user in TAGGED)
