"""The embedded store's failures come out as store errors, never as ``sqlite3`` errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import store.sqlite
from common.sqlite import sqlite3
from store.exceptions import StoreError, StoreUnavailable
from store.ports import StateSnapshot
from store.sqlite import KeyUpgrade, SqliteStore, upgrade_key
from store.sqlite_evaluations import SqliteEvaluationStore
from tests.unit.store.event_id_conflicts import LATER, check_event_id_conflicts, document
from tests.unit.store.layouts import (
    EARLIER_INDEXES,
    TIME_LED_INDEXES,
    earlier_file,
    telemetry_indexes,
)


def test_a_file_that_cannot_be_opened_is_a_retryable_store_error(tmp_path: Path) -> None:
    # A folder where the file should be: SQLite cannot open it (for now).
    with pytest.raises(StoreUnavailable) as caught:
        SqliteStore(tmp_path)
    assert caught.value.retryable is True
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)


async def test_a_broken_table_is_a_store_error_that_is_not_retried(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SqliteStore(path) as store:
        other = sqlite3.connect(path)
        other.execute("DROP TABLE quarantine")
        other.close()
        with pytest.raises(StoreError) as caught:
            await store.count("quarantine")
        assert caught.value.retryable is False
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)


async def test_use_after_close_raises(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    async with store:
        assert await store.count("telemetry") == 0
    with pytest.raises(StoreError, match="closed"):
        await store.count("telemetry")
    with pytest.raises(StoreError, match="closed"):
        async with store:
            pass


async def test_an_event_id_held_by_another_event_is_refused_and_a_reread_replaces(
    tmp_path: Path,
) -> None:
    async with SqliteStore(tmp_path / "store.db") as store:
        await check_event_id_conflicts(store)


@pytest.mark.parametrize("layout", ["time-led", "earlier"])
async def test_a_number_of_another_type_is_another_event_whatever_the_key_order(
    tmp_path: Path, layout: str
) -> None:
    # JSON keeps 1 and 1.0 apart, and so does the embedded store (Cosmos DB's doubles do not).
    path = tmp_path / "store.db"
    if layout == "earlier":
        earlier_file(path)
    stored = document(1, event_id="e-1", metadata={"a": "x", "n": 1})
    async with SqliteStore(path) as store:
        assert await store.write([stored], []) == []
        for sequence, value in enumerate((1.0, True, "1"), start=2):
            other = document(sequence, event_id="e-1", metadata={"n": value, "a": "x"})
            assert await store.write([other], []) == [other]
        reread = document(5, event_id="e-1", metadata={"n": 1, "a": "x"})
        assert await store.write([reread], []) == []
        assert await store.get_telemetry("e-1", stored.pk) == reread


@pytest.mark.parametrize("layout", ["time-led", "earlier"])
async def test_documents_are_compared_only_on_a_key_conflict(
    tmp_path: Path, layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The comparison is a Python function: new ids must not pay for it, row by row."""
    compared: list[str] = []
    event_key = store.sqlite._event_key

    def counted(event: str) -> bytes:
        compared.append(event)
        return event_key(event)

    monkeypatch.setattr(store.sqlite, "_event_key", counted)
    path = tmp_path / "store.db"
    if layout == "earlier":
        earlier_file(path)
    async with SqliteStore(path) as opened:
        fresh = [document(n, event_id=f"e-{n}" if n % 2 else None, latency_ms=n) for n in range(20)]
        assert await opened.write(fresh, []) == []
        assert compared == []
        assert await opened.write([document(21, event_id="e-1", latency_ms=1)], []) == []
        assert compared


async def test_a_snapshot_never_replaces_one_covering_a_later_position(tmp_path: Path) -> None:
    # The late batch of an owner that lost the partition saves after the new owner did.
    newer = StateSnapshot("$Default", "1", 120, b"new owner")
    async with SqliteStore(tmp_path / "store.db") as store:
        await store.save_state(newer)
        await store.save_state(StateSnapshot("$Default", "1", 80, b"old owner"))
        assert await store.load_state("$Default", "1") == newer
        again = StateSnapshot("$Default", "1", 120, b"same position again")
        await store.save_state(again)
        assert await store.load_state("$Default", "1") == again
        # Unless replaced: the partition's numbers started again (its event hub created again).
        restarted = StateSnapshot("$Default", "1", -1, b"numbers start again")
        await store.save_state(restarted, replace=True)
        assert await store.load_state("$Default", "1") == restarted


async def test_a_new_file_keys_telemetry_by_time_and_producer_ids_by_id(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "store.db") as store:
        await check_event_id_conflicts(store)
    assert telemetry_indexes(tmp_path / "store.db") == TIME_LED_INDEXES
    connection = sqlite3.connect(tmp_path / "store.db")
    try:
        rows = connection.execute("SELECT named, doc ->> '$.event_id' FROM telemetry").fetchall()
    finally:
        connection.close()
    # Named rows are those of a producer's event_id, the others have a content id.
    assert {bool(named) for named, _ in rows} == {True, False}
    assert all(bool(named) == (event_id is not None) for named, event_id in rows)


async def test_a_file_made_before_the_time_led_key_keeps_its_key_and_its_rules(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    earlier_file(path)
    async with SqliteStore(path) as store:
        await check_event_id_conflicts(store)
    assert telemetry_indexes(path) == EARLIER_INDEXES


async def test_a_file_made_before_is_given_the_time_led_key_with_its_documents(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    earlier_file(path)
    named = document(1, event_id="e-1", latency_ms=100.0)
    plain = document(2, latency_ms=5.0)
    async with SqliteStore(path) as store:
        assert await store.write([named, plain], []) == []

    assert upgrade_key(path) == KeyUpgrade(documents=2, named=1)
    assert telemetry_indexes(path) == TIME_LED_INDEXES
    assert upgrade_key(path) is None
    async with SqliteStore(path) as store:
        assert await store.get_telemetry("e-1", named.pk) == named
        assert await store.get_telemetry(plain.id, plain.pk) == plain
        # The stored producer id keeps its key: another event under it, at another time, is
        # refused; the same events written again replace their documents.
        later = document(3, event_id="e-1", latency_ms=100.0, timestamp=LATER)
        assert await store.write([later], []) == [later]
        again = [document(4, event_id="e-1", latency_ms=100.0), document(5, latency_ms=5.0)]
        assert await store.write(again, []) == []
        assert await store.count("telemetry") == 2
        assert await store.get_telemetry(plain.id, plain.pk) == again[1]


async def test_upgrading_a_new_file_or_one_without_telemetry_changes_nothing(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    assert upgrade_key(empty) is None
    async with SqliteStore(tmp_path / "store.db"):
        pass
    assert upgrade_key(tmp_path / "store.db") is None


# (app, timestamp, latency) of documents around a window of two days and six hours.
_AROUND_WINDOW = [
    ("a", "2026-11-20T23:59:59.500000Z", 1.0),
    ("a", "2026-11-21T00:00:00Z", 2.0),
    ("a", "2026-11-21T23:59:59Z", 3.0),
    ("a", "2026-11-22T00:00:00Z", 4.0),
    ("a", "2026-11-22T00:00:00Z", 5.0),
    ("team:b", "2026-11-21T12:00:00Z", 6.0),
    ("c", "2026-11-22T11:00:00Z", 7.0),
]
_WINDOW = (datetime(2026, 11, 21, tzinfo=UTC), datetime(2026, 11, 22, 6, tzinfo=UTC))


@pytest.mark.parametrize("page_size", [1, 3])
@pytest.mark.parametrize("made", ["new", "earlier"])
async def test_a_window_reads_each_app_in_time_order_across_days(
    tmp_path: Path, made: str, page_size: int
) -> None:
    path = tmp_path / "store.db"
    if made == "earlier":
        earlier_file(path)
    documents = [
        document(number, app_id=app, timestamp=when, latency_ms=latency)
        for number, (app, when, latency) in enumerate(_AROUND_WINDOW)
    ]
    async with SqliteStore(path) as store:
        assert await store.write(documents, []) == []
        # The keyset goes on from one day to the next, and a page fills across them.
        apps = ["a", "team:b", "c"]
        pages = [page async for page in store.telemetry_window(apps, *_WINDOW, page_size)]
    read = [doc for page in pages for doc in page]
    in_window = [doc for doc in documents if _WINDOW[0] <= doc.timestamp < _WINDOW[1]]
    expected = sorted(in_window, key=lambda doc: (doc.app_id != "a", doc.timestamp, doc.id))
    assert [doc.id for doc in read] == [doc.id for doc in expected]
    # Four documents of "a" over two days, one of "team:b": full pages but each app's last.
    assert [len(page) for page in pages] == ([1] * 5 if page_size == 1 else [3, 1, 1])
    async with SqliteEvaluationStore(path) as evaluations:
        assert await evaluations.app_ids(*_WINDOW) == ["a", "team:b"]
        assert await evaluations.app_ids(_WINDOW[1], _WINDOW[1] + timedelta(hours=6)) == ["c"]
        assert await evaluations.app_ids(_WINDOW[1], _WINDOW[1]) == []


async def test_the_last_position_written_is_kept_per_source_partition(tmp_path: Path) -> None:
    """What an embedded log that lost its end numbers new events after (evalstream.wiring):
    a write's last document, its quarantine records, never moving back."""
    from schemas import AppDirectory, ValidationIssue
    from stream.enrich import Enricher
    from stream.ports import ReceivedEvent, Rejected

    enricher = Enricher(AppDirectory(), b"k", "local")
    issue = ValidationIssue(code="c", location="$", message="m")
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)

    def record(sequence: int) -> object:
        position = ReceivedEvent(b"{}", "0", sequence, now, str(sequence))
        return enricher.quarantine(Rejected(0, b"{}", (issue,)), position, now)

    async with SqliteStore(tmp_path / "store.db") as store:
        assert await store.written_sequences("local") == {}
        await store.write([document(3, trace_id="a"), document(7, trace_id="b")], [])
        assert await store.written_sequences("local") == {"0": 7}
        await store.write([document(8, trace_id="c")], [record(12)])  # type: ignore[list-item]
        assert await store.written_sequences("local") == {"0": 12}
        await store.write([document(5, trace_id="d")], [])  # a re-read: never backwards
        assert await store.written_sequences("local") == {"0": 12}
        assert await store.written_sequences("eventhubs") == {}
