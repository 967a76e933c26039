"""The replay's parts alone: the window filter, the job file's checkpoints, the NDJSON and
Capture readers' positions and times, the report's order."""

from __future__ import annotations

import io
import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import fastavro
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.sqlite import sqlite3
from schemas import AppDirectory, Breach, QuarantineRecord, TelemetryDocument
from store.ports import ProcessorStore, StateSnapshot
from stream.decode import Decoder
from stream.enrich import Enricher
from stream.exceptions import ReplayError, ReplayMisconfigured
from stream.pipeline import Pipeline
from stream.ports import ReceivedEvent
from stream.replay import flow, report
from stream.replay.job import JobFile
from stream.replay.ports import PartitionPlan, TimeBasis, Window
from stream.replay.readers.capture_blob import CAPTURE_SCHEMA, enqueued_time, file_time
from stream.replay.readers.ndjson import APP_BUCKETS, AppLines, NdjsonReader, app_bucket, expand
from stream.replay.run import RangeSelection
from stream.replay.spec import ReplaySpec, SourceKind
from stream.stats import ProcessorStats

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def replay_pipeline(store: ProcessorStore, window: Window, enqueued_times: bool) -> Pipeline:
    """The pipeline a replay of ``window`` runs (reprocess mode), over ``store``."""
    return Pipeline(
        store=store,
        decoder=Decoder(),
        enricher=Enricher(AppDirectory(), b"k", "log"),
        consumer_group="replay:test",
        lateness=timedelta(minutes=1),
        checkpoint_interval_s=0,
        stats=ProcessorStats(),
        selection=RangeSelection(window, enqueued_times=enqueued_times),
    )


def event(app: str, minutes: int) -> bytes:
    return orjson.dumps(
        {
            "app_id": app,
            "timestamp": (T0 + timedelta(minutes=minutes)).isoformat(),
            "trace_id": f"t-{app}-{minutes}",
            "model_id": "m",
            "latency_ms": 10.0,
            "status": "ok",
        }
    )


def transformed(
    window: Window, body: bytes, enqueued: datetime, *, enqueued_times: bool = True
) -> tuple[list[TelemetryDocument], list[QuarantineRecord]]:
    """What the live pipeline makes of one body (its pure step), kept to the window."""
    # The pure step touches no store.
    pipeline = replay_pipeline(cast(ProcessorStore, None), window, enqueued_times)
    documents, quarantined, _ = pipeline._transform(
        None, [ReceivedEvent(body, "0", 0, enqueued)], enqueued
    )
    return documents, quarantined


def test_the_window_keeps_its_apps_and_times_only() -> None:
    window = Window(T0, T0 + timedelta(minutes=10), TimeBasis.EVENT, frozenset({"a"}))
    body = b"[" + b",".join([event("a", -1), event("a", 0), event("a", 9), event("a", 10),
                             event("b", 5)]) + b"]"  # fmt: skip
    documents, _ = transformed(window, body, T0 + timedelta(minutes=20))
    assert [doc.timestamp for doc in documents] == [T0, T0 + timedelta(minutes=9)]
    # Every event passes a window by enqueued time (the reader cuts batches by it); the apps
    # filter still applies.
    by_enqueued = Window(T0, T0 + timedelta(minutes=10), TimeBasis.ENQUEUED, frozenset({"a"}))
    documents, _ = transformed(by_enqueued, body, T0 + timedelta(minutes=5))
    assert len(documents) == 4


def test_rejected_events_go_by_their_enqueued_time_unless_the_source_has_none() -> None:
    window = Window(T0, T0 + timedelta(minutes=10))
    inside, outside = T0 + timedelta(minutes=1), T0 + timedelta(hours=1)
    assert len(transformed(window, b"{not json", inside)[1]) == 1
    assert transformed(window, b"{not json", outside)[1] == []
    assert len(transformed(window, b"{not json", outside, enqueued_times=False)[1]) == 1
    of_b = orjson.dumps({"app_id": "b", "latency_ms": "slow"})
    only_a = Window(T0, T0 + timedelta(minutes=10), TimeBasis.EVENT, frozenset({"a"}))
    assert transformed(only_a, of_b, inside)[1] == []
    assert len(transformed(window, of_b, inside)[1]) == 1


def test_a_window_must_run_forwards_and_carry_zones() -> None:
    with pytest.raises(ValueError, match="must be before --to"):
        Window(T0, T0)
    with pytest.raises(ValueError, match="time zone"):
        Window(T0.replace(tzinfo=None), T0 + timedelta(hours=1))
    window = Window(T0, T0 + timedelta(hours=1), TimeBasis.EVENT)
    # An event of the window may have been enqueued up to the future skew before it.
    assert window.enqueued_from(timedelta(minutes=15)) == T0 - timedelta(minutes=15)
    assert window.enqueued_before() is None
    assert Window(T0, T0 + timedelta(hours=1), TimeBasis.ENQUEUED).enqueued_before() is not None


def test_a_window_at_the_ends_of_the_calendar_is_refused_or_read_whole() -> None:
    # Year 1 at +14:00 is in the year 0 in UTC, the end of the year 9999 at -12:00 in 10000:
    # the replay compared in UTC and ended in an OverflowError traceback.
    far = datetime(9999, 12, 31, 23, 59, tzinfo=UTC)
    early = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))
    with pytest.raises(ValueError, match=r"--from \(0001-01-01T00:00:00\+14:00\) is outside"):
        Window(early, far)
    late = datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-12)))
    with pytest.raises(ValueError, match=r"--to \(9999-12-31T23:59:00-12:00\) is outside"):
        Window(T0, late)
    # The first moment there is: no event can have been enqueued before it.
    first = datetime.min.replace(tzinfo=UTC)
    window = Window(first + timedelta(minutes=5), far)
    assert window.enqueued_from(timedelta(minutes=15)) == first
    selection = RangeSelection(window, enqueued_times=True)
    assert (selection.start, selection.end) == (window.start, far)


async def test_a_checkpoint_moves_position_snapshot_and_counts_together(tmp_path: Path) -> None:
    job = JobFile(tmp_path / "job.db")
    job.create(b"{}", [PartitionPlan("0", -1, 99), PartitionPlan("1", 4, 9)])
    await job.checkpoint("0", 49, StateSnapshot("g", "0", 49, b"state"), Counter(stored=40))
    await job.checkpoint("0", 30, None, Counter(stored=2, quarantined=1))
    await job.checkpoint("1", 9, None, Counter(stored=5), finished=True)
    plans = job.plans()
    # Positions never move back; counts add up; the snapshot stays with its position.
    assert plans == [(PartitionPlan("0", -1, 99), 49, False), (PartitionPlan("1", 4, 9), 9, True)]
    assert job.counts() == Counter(stored=47, quarantined=1)
    snapshot = await job.load_snapshot("0")
    assert snapshot is not None and (snapshot.covered_sequence, snapshot.blob) == (49, b"state")
    assert await job.load_snapshot("1") is None
    job.close()


async def test_ndjson_lines_are_split_as_send_splits_them_and_placed_by_offset(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.ndjson"
    lines = [event("a", 0), event("a", 1), event("a", 2)]
    content = b"\xef\xbb\xbf" + lines[0] + b"\r" + lines[1] + b"\r\n\n  " + lines[2]
    path.write_bytes(content)
    reader = NdjsonReader(expand([str(tmp_path / "*.ndjson")]), T0)
    [plan] = await reader.plan(Window(T0, T0 + timedelta(hours=1)), timedelta(minutes=15))
    # The plan is the file as it is now, in bytes: what is appended later is not replayed.
    assert plan == PartitionPlan(str(path.resolve()), -1, len(content) - 1)
    with open(path, "ab") as handle:
        handle.write(b"\n" + event("a", 3) + b"\n")

    everything = [e async for batch in reader.read(plan, plan.after, 2) for e in batch]
    assert [e.body for e in everything] == lines
    # A line's sequence is the offset of its first byte (the mark's, for the first line).
    offsets = [0, content.index(lines[1]), content.index(b"  " + lines[2])]
    assert [e.sequence for e in everything] == offsets
    assert {e.enqueued_time for e in everything} == {T0}

    # Resumed after a checkpoint: straight to the lines after it.
    resumed = [e async for batch in reader.read(plan, offsets[1], 10) for e in batch]
    assert [(e.sequence, e.body) for e in resumed] == [(offsets[2], lines[2])]
    with pytest.raises(ReplayMisconfigured, match="no enqueued times"):
        await reader.plan(Window(T0, T0 + timedelta(hours=1), TimeBasis.ENQUEUED), timedelta())
    with pytest.raises(ReplayMisconfigured, match="no file matches"):
        expand([str(tmp_path / "missing-*.ndjson")])


def test_capture_records_give_the_hubs_enqueued_time() -> None:
    millis = int((T0 + timedelta(milliseconds=250)).timestamp() * 1000)
    record = {"EnqueuedTimeUtc": "12/1/2026 12:00:00 PM", "SystemProperties": {}}
    assert enqueued_time(record) == T0
    assert enqueued_time({**record, "EnqueuedTimeUtc": "2026-12-01T12:00:00Z"}) == T0
    precise = {**record, "SystemProperties": {"x-opt-enqueued-time": millis}}
    assert enqueued_time(precise) == T0 + timedelta(milliseconds=250)
    assert file_time("ns/hub/3/2026/12/01/12/00/30.avro") == T0 + timedelta(seconds=30)
    assert file_time("ns/hub/3/notes.txt") is None


def test_the_capture_schema_round_trips_a_record() -> None:
    buffer = io.BytesIO()
    record = {
        "SequenceNumber": 7, "Offset": "700", "EnqueuedTimeUtc": "12/1/2026 12:00:00 PM",
        "SystemProperties": {}, "Properties": {"k": "v"}, "Body": event("a", 0),
    }  # fmt: skip
    fastavro.writer(buffer, CAPTURE_SCHEMA, [record])
    buffer.seek(0)
    assert list(fastavro.reader(buffer)) == [record]


def _breach(app: str, minutes: int, breach_id: str, state: str) -> Breach:
    when = T0 + timedelta(minutes=minutes)
    return Breach.model_validate(
        {
            "breach_id": breach_id, "state": state, "severity": "warning", "kind": "drift",
            "source": "hot", "app_id": app, "signal": "latency_ms", "detector": "adwin",
            "observed": 1.0, "window_start": when, "window_end": when, "opened_at": when,
        }
    )  # fmt: skip


def test_the_report_orders_breaches_whatever_order_they_came_in() -> None:
    spec: dict[str, Any] = {
        "id": "j",
        "source": {},
        "window": {},
        "mode": "both",
        "detectors_file": None,
    }
    breaches = [_breach("b", 1, "x", "opened"), _breach("a", 5, "y", "resolved"),
                _breach("a", 5, "y", "opened"), _breach("a", 2, "z", "opened"),
                _breach("a", 5, "y", "escalated")]  # fmt: skip
    one = report.build(spec, Counter(stored=3, **{"quarantined:bad": 1}), breaches, {})
    other = report.build(spec, Counter(stored=3, **{"quarantined:bad": 1}), breaches[::-1], {})
    assert one == other
    assert [(b["app_id"], b["breach_id"], b["state"]) for b in one["breaches"]] == [
        ("a", "z", "opened"), ("a", "y", "opened"), ("a", "y", "escalated"),
        ("a", "y", "resolved"), ("b", "x", "opened"),
    ]  # fmt: skip
    assert one["events"] == {"stored": 3, "quarantined": 0, "quarantined_by_code": {"bad": 1}}


def test_a_shadow_report_counts_valid_and_invalid_events_not_stored_ones() -> None:
    spec: dict[str, Any] = {
        "id": "j",
        "source": {},
        "window": {},
        "mode": "shadow",
        "detectors_file": None,
    }
    counts = Counter(valid=3, invalid=1, **{"invalid:bad": 1})
    assert report.build(spec, counts, [], {})["events"] == {
        "valid": 3,
        "invalid": 1,
        "invalid_by_code": {"bad": 1},
    }


def test_a_job_of_an_older_format_is_refused_on_resume_in_one_line(tmp_path: Path) -> None:
    def made(
        source: SourceKind, name: str, *, older: bool, whole_documents: bool = False
    ) -> JobFile:
        spec = ReplaySpec(
            id=name, created=T0, source=source, paths=["a.ndjson"], start=T0, end=T0 + HOUR
        )
        job = JobFile(tmp_path / f"{name}.db")
        flow.create(job, spec, [PartitionPlan("a.ndjson", -1, 10)])
        if older:  # as a job made before the plan recorded its format
            with sqlite3.connect(job.path) as connection:
                connection.execute("DELETE FROM meta WHERE key = 'format'")
                if whole_documents:  # the first format kept whole documents for shadow
                    connection.execute("CREATE TABLE shadow (pk TEXT, doc BLOB)")
            connection.close()
        return job

    oldest = made(SourceKind.LOG, "r-old", older=True, whole_documents=True)
    with pytest.raises(ReplayError, match="r-old was made by an older evalstream"):
        flow.load_spec(oldest)
    oldest.close()

    current = made(SourceKind.NDJSON, "r-new", older=False)
    assert flow.load_spec(current) is not None
    older_log = made(SourceKind.LOG, "r-log", older=True)
    with pytest.raises(ReplayError, match="r-log was made by an older evalstream"):
        flow.load_spec(older_log)
    older = made(SourceKind.NDJSON, "r-lines", older=True)
    with pytest.raises(ReplayError, match="r-lines was made by an older evalstream"):
        flow.load_spec(older)
    for job in (current, older_log, older):
        job.close()


async def _whole(path: Path, window: Window) -> tuple[PartitionPlan, list[tuple[str, int, bytes]]]:
    """The file's plan as one part, and (partition, sequence, body) of what it reads."""
    reader = NdjsonReader([path], T0)
    [whole] = await reader.plan(window, timedelta())
    return whole, [(e.partition, e.sequence, e.body)
                   async for b in reader.read(whole, -1, 7) for e in b]  # fmt: skip


async def test_parts_of_byte_ranges_planned_before_read_as_the_whole(tmp_path: Path) -> None:
    # Jobs planned by earlier versions may hold a file cut in byte ranges at line starts.
    path = tmp_path / "events.ndjson"
    endings = [b"\n", b"\r\n", b"\r", b"\n\n", b"\r\n\r\n"]
    content = b"".join(event("a", m) + endings[m % 5] for m in range(200))
    path.write_bytes(content)
    window = Window(T0, T0 + 5 * HOUR)
    _, expected = await _whole(path, window)
    assert len(expected) == 200
    starts = list(itertools.accumulate(map(len, content.splitlines(keepends=True)), initial=0))
    reader = NdjsonReader([path], T0, 2)
    for parts in (2, 3, 7):
        bounds = sorted(
            {0, len(content), *(starts[len(starts) * k // parts] for k in range(1, parts))}
        )
        plans = [
            PartitionPlan(f"{path}@{first}", first - 1, end - 1, source=str(path))
            for first, end in itertools.pairwise(bounds)
        ]
        read = [
            (e.partition, e.sequence, e.body)
            for plan in plans
            async for batch in reader.read(plan, plan.after, 7)
            for e in batch
        ]
        assert read == expected, parts
        # A part resumed after a checkpoint (a line of it) reads on from there.
        middle = plans[1]
        mine = [item for item in expected if middle.after < item[1] <= middle.last]
        again = [e.sequence async for b in reader.read(middle, mine[2][1], 5) for e in b]
        assert again == [item[1] for item in mine[3:]]


async def test_small_files_stay_whole(tmp_path: Path) -> None:
    paths = [tmp_path / "a.ndjson", tmp_path / "b.ndjson"]
    for path in paths:
        path.write_bytes(b"\n".join(event("a", m) for m in range(50)))
    window = Window(T0, T0 + 5 * HOUR)
    # Below a MiB a part would cost more to start than to read: the files stay whole.
    plans = await NdjsonReader(paths, T0, 8).plan(window, timedelta())
    assert [(plan.partition, plan.source) for plan in plans] == [(str(p), None) for p in paths]


def _app_of(body: bytes) -> object:
    if b'"meta"' in body:
        return None
    try:
        return orjson.loads(body).get("app_id")
    except orjson.JSONDecodeError:
        return None


async def test_a_file_of_many_apps_is_read_in_parts_by_app_that_give_the_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stream.replay.readers import ndjson

    monkeypatch.setattr(ndjson, "MIN_PART_BYTES", 1)
    path = tmp_path / "events.ndjson"
    # Twelve apps of unequal volume, interleaved, beside lines the reader cannot place by
    # their app: no app id, not JSON, an "app_id" nested before the event's own, an escaped
    # quote in an id.
    apps = [f"app-{n:02d}" for n in range(12)]
    lines = [event(apps[m % 17 % 12], m) for m in range(600)]
    lines[5] = b'{"timestamp": "2026-12-01T12:00:00+00:00"}'
    lines[17] = b'{"app_id": "app-01", "status": truncated'
    lines[33] = b'{"meta": {"app_id": "elsewhere"}, "app_id": "app-03"}'
    lines[41] = b'{"app_id": "app-\\"q\\"", "x": 1}'
    path.write_bytes(b"".join(line + (b"\r\n" if i % 7 == 0 else b"\n") for i, line in
                              enumerate(lines)))  # fmt: skip
    window = Window(T0, T0 + 20 * HOUR)
    whole, expected = await _whole(path, window)
    assert len(expected) == 600
    for parts in (2, 3):
        reader = NdjsonReader([path], T0, parts)
        plans = await reader.plan(window, timedelta())
        assert len(plans) == parts
        # Each part reads the whole file for its buckets; the buckets cover all, once each.
        assert all((p.after, p.last, p.source) == (-1, whole.last, str(path)) for p in plans)
        buckets = [b for plan in plans for b in plan.app_buckets]
        assert sorted(buckets) == list(range(ndjson.APP_BUCKETS))
        assert all(plan.app_parts == parts for plan in plans)
        per_part = [
            [(e.partition, e.sequence, e.body) async for b in reader.read(plan, -1, 7) for e in b]
            for plan in plans
        ]
        assert sorted(item for part in per_part for item in part) == expected, parts
        # Every app's lines in one part only (but for the line whose first "app_id" is not its
        # own), and each part has some.
        for app in apps:
            holding = [k for k, part in enumerate(per_part)
                       if any(_app_of(body) == app for _, _, body in part)]  # fmt: skip
            assert len(holding) == 1, (app, holding)
        assert all(per_part)
        # A part resumed after a checkpoint (a line of its own) reads on from there.
        mine = per_part[1]
        again = [e.sequence async for b in reader.read(plans[1], mine[2][1], 5) for e in b]
        assert again == [item[1] for item in mine[3:]]
        # The job keeps the parts as planned (a resume reads what the first run planned).
        job = JobFile(tmp_path / f"job-{parts}.db")
        job.create(b"{}", plans)
        assert [plan for plan, _, _ in job.plans()] == plans
        job.close()


# Pieces of a block where finding a line's app can go wrong: every kind of ending (a CR alone
# too), blank lines, no app id, an app id with spaces or an escaped quote, one nested first.
_APP_PIECES = st.sampled_from(
    [b'{"app_id":"a"}', b'{"app_id" : "b", "x": 2}', b'{"app_id": "c\\"d"}', b"{}", b"x",
     b'{"m": {"app_id": "e"}, "app_id": "a"}', b'"app_id":"f"', b" ", b"\n", b"\r", b"\r\n",
     b"\xef\xbb\xbf"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_APP_PIECES, max_size=30), st.frozensets(st.integers(0, APP_BUCKETS - 1)))
def test_a_part_by_app_keeps_the_lines_splitting_would_keep(
    pieces: list[bytes], buckets: frozenset[int]
) -> None:
    # Our buckets among the ones these app ids fall in, so that both kinds of line come up.
    block = b"".join(pieces)
    found = {app_bucket(piece) for piece in block.splitlines(keepends=True)}
    ours = frozenset(b for b in found if b in buckets or b % 2)
    offset = 100
    expected = []
    for piece in block.splitlines(keepends=True):
        if app_bucket(piece) in ours:
            expected.append((offset, piece))
        offset += len(piece)
    assert list(AppLines(ours).of(block, 100)) == expected


async def test_a_file_mostly_of_one_app_is_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stream.replay.readers import ndjson

    monkeypatch.setattr(ndjson, "MIN_PART_BYTES", 1)
    path = tmp_path / "events.ndjson"
    # Parts by app could not share it out: one app is 90% of the lines, and byte ranges would
    # leave the order of its two lines with one id to chance.
    path.write_bytes(b"\n".join(event("big" if m % 10 else f"small-{m}", m) for m in range(300)))
    plans = await NdjsonReader([path], T0, 2).plan(Window(T0, T0 + 9 * HOUR), timedelta())
    assert plans == [PartitionPlan(str(path), -1, path.stat().st_size - 1)]
    # 75 % of one app still shares out by app.
    path.write_bytes(b"\n".join(event("big" if m % 4 else f"small-{m}", m) for m in range(300)))
    plans = await NdjsonReader([path], T0, 2).plan(Window(T0, T0 + 9 * HOUR), timedelta())
    assert [plan.app_parts for plan in plans] == [2, 2]


async def test_an_ndjson_file_that_is_not_utf8_is_refused_when_planned(tmp_path: Path) -> None:
    path = tmp_path / "wide.ndjson"
    path.write_bytes((event("a", 0) + b"\n").decode().encode("utf-16"))
    reader = NdjsonReader(expand([str(path)]), T0)
    with pytest.raises(ReplayMisconfigured, match="UTF-16, not UTF-8"):
        await reader.plan(Window(T0, T0 + timedelta(hours=1)), timedelta(minutes=15))
