"""No raw user_id in what evalstream keeps: the embedded log holds a user's keyed hash (and the
document id made from the raw value), quarantine a hash in place of the value — and the stored
documents are byte for byte what the raw events give."""

from __future__ import annotations

import base64
import gzip
import zlib
from pathlib import Path

import orjson

from common.amqp import body_bytes
from schemas import AppDirectory, TelemetryDocument
from stream.decode import Decoder
from stream.enrich import Enricher, sent_form
from stream.ports import ReceivedEvent
from stream.privacy import Pseudonymizer
from stream.pseudonyms import scrub_user_ids, scrub_user_ids_in_text
from stream.sources.local_log import LocalLog, LocalLogSink
from tests.unit.stream.test_logged_events import _processed
from tests.unit.stream.test_output_golden import APPS, NOW, _bodies

KEY = b"test-key"


def _documents(enricher: Enricher, log: LocalLog) -> tuple[list[TelemetryDocument], list[bytes]]:
    """What processing every logged body gives, and the rejected raws (as quarantine keeps)."""
    decoder = Decoder()
    documents, rejected = [], []
    for partition in range(log.partitions):
        for event in log.read(partition, -1, 100_000):
            decoded = decoder.decode(event.body, NOW)
            for accepted in decoded.accepted:
                doc = enricher.document(accepted.event, event, 0, NOW, False)
                documents.append(doc)
            for bad in decoded.rejected:
                rejected.append(enricher.quarantine(bad, event, NOW).raw.encode())
    return documents, rejected


def _quarantined(enricher: Enricher, log: LocalLog) -> list[bytes]:
    """The raw bytes quarantine keeps of the logged bodies, each decoded at its enqueued time."""
    decoder, kept = Decoder(), []
    for partition in range(log.partitions):
        for event in log.read(partition, -1, 100_000):
            for bad in decoder.decode(event.body, event.enqueued_time).rejected:
                kept.append(enricher.quarantine(bad, event, NOW).raw.encode())
    return sorted(kept)


def _without_ingest(doc: TelemetryDocument) -> bytes:
    stored = orjson.loads(doc.json_bytes())
    del stored["ingest"]
    return orjson.dumps(stored)


async def test_logged_bodies_hold_no_user_id_and_give_the_same_documents(tmp_path: Path) -> None:
    bodies = [(None, body) for body in _bodies()]
    users = {user for _, body in bodies for user in _user_ids(body)}
    assert len(users) > 50  # the simulator's users, and the edge bodies' ones
    enricher = Enricher(APPS, KEY, "local")

    async with LocalLogSink(tmp_path / "raw.db", 4) as raw_sink:
        await raw_sink.append(bodies)
    pseudonymizer = Pseudonymizer(Decoder(), enricher)
    async with LocalLogSink(tmp_path / "kept.db", 4, pseudonymizer) as sink:
        await sink.append(bodies)

    kept_file = (tmp_path / "kept.db").read_bytes() + _wal(tmp_path / "kept.db")
    leaked = [user for user in users if isinstance(user, str) and user.encode() in kept_file]
    assert leaked == []

    raw_log, kept_log = LocalLog(tmp_path / "raw.db", 4), LocalLog(tmp_path / "kept.db", 4)
    try:
        from_raw, _ = _documents(enricher, raw_log)
        from_kept, rejected = _documents(enricher, kept_log)
    finally:
        raw_log.close()
        kept_log.close()
    assert len(from_raw) > 1000
    # The same documents (ids, user hashes, every byte but the log position), in any order.
    assert sorted(map(_without_ingest, from_kept)) == sorted(map(_without_ingest, from_raw))
    assert not any(user.encode() in raw for user in users for raw in rejected)
    # Processed as the processor does (each body at its enqueued time), quarantine keeps the
    # same bytes either way: a user id hashed once, with the same key, so a quarantined
    # input's user matches the user_hash of that user's documents.
    raw_log, kept_log = LocalLog(tmp_path / "raw.db", 4), LocalLog(tmp_path / "kept.db", 4)
    try:
        kept_records, raw_records = (
            _quarantined(enricher, kept_log),
            _quarantined(enricher, raw_log),
        )
    finally:
        raw_log.close()
        kept_log.close()
    assert len([raw for raw in kept_records if b"user_id" in raw]) >= 3
    assert kept_records == raw_records
    hashes = {enricher.user_hash(user) for user in users}
    kept_users = [user for raw in kept_records for user in _user_ids(raw)]
    assert len(kept_users) >= 3 and set(kept_users) <= hashes


def _user_ids(body: bytes) -> list[str]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    items = parsed if isinstance(parsed, list) else [parsed]
    users = [item.get("user_id") for item in items if isinstance(item, dict)]
    return [user for user in users if isinstance(user, str)]


def _wal(path: Path) -> bytes:
    wal = path.with_name(path.name + "-wal")
    return wal.read_bytes() if wal.exists() else b""


def test_quarantine_keeps_a_hash_in_place_of_every_user_id() -> None:
    enricher = Enricher(AppDirectory(), KEY, "local")
    hashed = enricher.user_hash
    raw = b'{"user_id": "alice@example.com", "x": [{"user_id":42}], "user_id" :"a\\"b"'
    assert scrub_user_ids(raw, hashed) == (
        b'{"user_id": "' + hashed("alice@example.com").encode() + b'", "x": [{"user_id":"'
        + hashed("42").encode() + b'"}], "user_id" :"' + hashed('a"b').encode() + b'"'
    )  # fmt: skip
    rejected = Decoder().decode(b'{"app_id":"a b","user_id":"alice@example.com"}', NOW)
    record = enricher.quarantine(rejected.rejected[0], None, NOW)
    assert "alice" not in record.raw and hashed("alice@example.com") in record.raw


async def test_ingest_handing_over_its_validated_events_logs_the_same_records(
    tmp_path: Path,
) -> None:
    """Ingest gives the log its validated events beside their bodies, so the pseudonymiser
    need not validate the bodies again; the records must be the ones the bodies alone give,
    except that an event without a user_id is marked as validated too: an empty user hash
    beside its document id (tests/unit/stream/test_logged_events.py: both give the same
    stored documents)."""
    enricher = Enricher(APPS, KEY, "local")
    decoder = Decoder()
    events = [
        accepted.event for body in _bodies() for accepted in decoder.decode(body, NOW).accepted
    ]
    assert sum(event.user_id is not None for event in events) > 50
    sent = [sent_form(event) for event in events]
    bodies = [(event.app_id, body) for event, (body, _) in zip(events, sent, strict=True)]
    validated = [(event, id_) for event, (_, id_) in zip(events, sent, strict=True)]
    rows = []
    for name, given in (("bodies.db", None), ("events.db", validated)):
        async with LocalLogSink(tmp_path / name, 4, Pseudonymizer(Decoder(), enricher)) as sink:
            await sink.append(bodies, given)
        log = LocalLog(tmp_path / name, 4)
        try:
            rows.append(
                [
                    (e.partition, e.sequence, e.body, e.user)
                    for p in range(4)
                    for e in log.read(p, -1, 100_000)
                ]
            )
        finally:
            log.close()
    assert len(rows[0]) == len(events)
    ids = {body: id_ for body, id_ in sent}
    marked = [
        (partition, sequence, body, ("", ids[body]) if user is None else user)
        for partition, sequence, body, user in rows[0]
    ]
    assert sum(user is None for *_, user in rows[0]) > 50
    assert rows[1] == marked


def test_quarantine_scrubs_the_user_ids_of_amqp_sequence_and_map_bodies() -> None:
    """An Event Hubs sequence body, or a value body of a map, is kept as its Python repr
    (common.amqp.body_bytes): single-quoted, which the JSON-only scrub let through raw."""
    enricher = Enricher(AppDirectory(), KEY, "local")
    event = {"app_id": "a", "user_id": "alice@example.com", "metadata": {"user_id": 987654321}}
    for raw in (
        body_bytes("sequence", iter([[event], [b'{"user_id": "alice@example.com"}']])),
        body_bytes("value", event),
        # pyamqp reads AMQP strings back as bytes (a bytes literal's text ended at a space).
        body_bytes(
            "value",
            {
                b"app_id": b"a",
                b"user_id": b"alice example",
                b"metadata": {b"user_id": 987654321},
            },
        ),
    ):
        decoded = Decoder().decode(raw, NOW)
        record = enricher.quarantine(decoded.rejected[0], None, NOW)
        assert "alice" not in record.raw and "example" not in record.raw, record.raw
        assert "987654321" not in record.raw, record.raw
        assert "user_id" in record.raw
    text = scrub_user_ids_in_text(
        "no event in: alice@example.com", body_bytes("value", event), enricher.user_hash
    )
    assert "alice" not in text


def test_a_user_id_that_is_not_utf8_is_scrubbed() -> None:
    """Its bytes were read as lone surrogates, which the hash could not encode: the request
    was a 500 (a traceback, nothing quarantined), and a processor would fail the batch."""
    enricher = Enricher(AppDirectory(), KEY, "local")
    raw = b'{"app_id": "a b", "user_id": "alice\xe9"}'
    kept = scrub_user_ids(raw, enricher.user_hash)
    # Not UTF-8, it is no user id a document holds: hashed as written, the byte as an escape.
    assert b"alice" not in kept and enricher.user_hash("alice\\xe9").encode() in kept
    text = scrub_user_ids_in_text("user alice\\xe9 refused", raw, enricher.user_hash)
    assert "alice" not in text
    record = enricher.quarantine(Decoder().decode(raw, NOW).rejected[0], None, NOW)
    assert "alice" not in record.raw


def test_a_user_id_key_spelt_with_escapes_is_scrubbed() -> None:
    """A body that is not JSON is kept as sent: a key written with \\u escapes, which any JSON
    reader takes for user_id, kept its value raw (valid bodies are kept re-serialised)."""
    enricher = Enricher(AppDirectory(), KEY, "local")
    raw = (
        b'{"app_id": "a", "user\\u005fid": "alice smith", "n": 1, '
        b'"metadata": {"k": "v", "\\u0075ser_id": 987654321, "user_id": "bob"}, "user_id": '
    )
    kept = scrub_user_ids(raw, enricher.user_hash)
    for value in (b"alice", b"987654321", b"bob"):
        assert value not in kept, kept
    assert kept.startswith(b'{"app_id": "a", "user\\u005fid": "')
    assert b'"n": 1, "metadata": {"k": "v", "\\u0075ser_id": "' in kept
    text = scrub_user_ids_in_text("alice smith and 987654321", raw, enricher.user_hash)
    assert "alice" not in text and "987654321" not in text
    record = enricher.quarantine(Decoder().decode(raw, NOW).rejected[0], None, NOW)
    assert "alice" not in record.raw and "987654321" not in record.raw
    # Keys with other escapes are left as they are.
    other = b'{"us\\u0065r": "carol", "note": "a\\u0020b"}'
    assert scrub_user_ids(other, enricher.user_hash) == other


def test_a_user_id_in_a_utf16_or_utf32_body_is_scrubbed() -> None:
    """Such a body is not UTF-8 (400 over HTTP, quarantined from a source) and was kept as
    its bytes, in base64: the user_id within, only spelt with zero bytes, was kept too."""
    enricher = Enricher(AppDirectory(), KEY, "local")
    body = '{"app_id": "a", "user_id": "alice smith", "metadata": {"user\\u005fid": 987654321}}'
    for encoding in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"):
        raw = body.encode(encoding)
        kept = scrub_user_ids(raw, enricher.user_hash)
        assert b'"user_id": "' + enricher.user_hash("alice smith").encode() in kept, encoding
        assert b"987654321" not in kept, encoding
        record = enricher.quarantine(Decoder().decode(raw, NOW).rejected[0], None, NOW)
        shown = base64.b64decode(record.raw) if record.raw_encoding == "base64" else record.raw
        for text in (str(shown), shown.decode(encoding, "replace") if shown != record.raw else ""):
            assert "alice" not in text and "987654321" not in text, (encoding, shown)
    # Bytes that are not JSON in any of them stay as they are.
    assert scrub_user_ids(b"\xff\xfe not UTF-8", enricher.user_hash) == b"\xff\xfe not UTF-8"


def test_a_user_id_in_a_compressed_body_is_scrubbed() -> None:
    """A source's body is not decompressed (ingest's is): gzip or zlib data was quarantined
    as its bytes, in base64, with every user_id it holds."""
    enricher = Enricher(AppDirectory(), KEY, "local")
    body = b'{"app_id": "a", "user_id": "alice smith", "metadata": {"user_id": 987654321}}'
    padding = b'{"app_id": "a", "note": "' + b"x" * 100_000 + b'"}\n'
    for raw in (
        gzip.compress(body),
        zlib.compress(body),
        gzip.compress(body.decode().encode("utf-16")),
        # Its user beyond what is read of it: the start is kept, not the compressed whole.
        gzip.compress(padding + body),
    ):
        record = enricher.quarantine(Decoder().decode(raw, NOW).rejected[0], None, NOW)
        assert record.raw_encoding == "utf-8", record.raw[:100]
        assert "alice" not in record.raw and "987654321" not in record.raw
    assert scrub_user_ids(gzip.compress(body), enricher.user_hash).startswith(
        b'{"app_id": "a", "user_id": "' + enricher.user_hash("alice smith").encode()
    )


def _metadata_body(metadata: bytes, **fields: object) -> bytes:
    """An event whose metadata object is ``metadata`` as written (escapes kept)."""
    event = orjson.dumps({"app_id": "meta-app", "timestamp": TS, "trace_id": "t", **fields})
    return event[:-1] + b',"metadata":' + metadata + b"}"


TS = "2026-11-22T10:00:00Z"
# Bodies with a metadata.user_id, and the text the stored value is the keyed hash of.
METADATA_USERS: tuple[tuple[bytes, str], ...] = (
    (_metadata_body(b'{"a":1,"user_id":"alice smith","z":"w"}'), "alice smith"),
    (_metadata_body(b'{"user_id":987654321}', event_id="evt-9"), "987654321"),
    (_metadata_body(b'{"user_id":true,"k":"v"}', user_id="bob jones"), "true"),
    (_metadata_body(b'{"user_id":1.5}', input_text="x"), "1.5"),
    # A JSON reader's user_id, as quarantine's scrub reads keys.
    (_metadata_body(b'{"user\\u005fid":"carol white"}', span_id="s"), "carol white"),
)


async def test_a_metadata_user_id_is_stored_and_logged_as_its_hash(tmp_path: Path) -> None:
    """A metadata.user_id of an accepted event was stored as sent, and logged so. It is now the
    users' keyed hash — the same ``user_hash`` a user_id gives — in place among the entries,
    however the event came in (a producer's body, ``send`` into the log, ingest's validated
    events), on the document id made from the event as sent, which ingest answers."""
    enricher, decoder = Enricher(APPS, KEY, "local"), Decoder()
    bodies = [body for body, _ in METADATA_USERS]
    events = [a.event for body in bodies for a in decoder.decode(body, NOW).accepted]
    assert len(events) == len(bodies)
    sent = [sent_form(event) for event in events]
    async with LocalLogSink(tmp_path / "raw.db", 4) as raw_sink:
        await raw_sink.append([(None, body) for body in bodies])
    async with LocalLogSink(tmp_path / "sent.db", 4, Pseudonymizer(Decoder(), enricher)) as sink:
        await sink.append([(None, body) for body in bodies])
    async with LocalLogSink(tmp_path / "ingest.db", 4, Pseudonymizer(Decoder(), enricher)) as sink:
        await sink.append(
            [(event.app_id, body) for event, (body, _) in zip(events, sent, strict=True)],
            [(event, id_) for event, (_, id_) in zip(events, sent, strict=True)],
        )
    for name in ("sent.db", "ingest.db"):
        kept = (tmp_path / name).read_bytes() + _wal(tmp_path / name)
        users = [b"alice", b"987654321", b"bob", b"carol"]
        assert [user for user in users if user in kept] == [], name

    from_raw, _ = await _processed(tmp_path / "raw.db", tmp_path / "a.db")
    from_sent, _ = await _processed(tmp_path / "sent.db", tmp_path / "b.db")
    from_ingest, _ = await _processed(tmp_path / "ingest.db", tmp_path / "c.db")
    assert from_sent == from_raw and from_ingest == from_raw
    assert set(from_raw) == {id_ for _, id_ in sent}
    for (_, id_), (_, text) in zip(sent, METADATA_USERS, strict=True):
        stored = orjson.loads(from_raw[id_] + b"}")
        assert stored["metadata"]["user_id"] == enricher.user_hash(text), text
    first = orjson.loads(from_raw[sent[0][1]] + b"}")
    assert list(first["metadata"]) == ["a", "user_id", "z"]
    assert orjson.loads(from_raw[sent[2][1]] + b"}")["user_hash"] == enricher.user_hash("bob jones")


def test_a_metadata_key_of_another_case_is_another_tag_here_as_in_quarantine() -> None:
    """Keys are read as JSON reads them: ``User_Id`` is not ``user_id``, in a stored document
    as in quarantine's scrub (which hashes ``user\\u005fid``, tested above)."""
    enricher = Enricher(APPS, KEY, "local")
    body = _metadata_body(b'{"User_Id":"dave brown"}')
    [accepted] = Decoder().decode(body, NOW).accepted
    doc = enricher.document(accepted.event, ReceivedEvent(body, "0", 0, NOW), 0, NOW, False)
    assert doc.metadata == {"User_Id": "dave brown"}
    assert scrub_user_ids(body, enricher.user_hash) == body
    # The document of an event without metadata.user_id is the one it always was.
    assert doc.id == sent_form(accepted.event)[1]


def test_an_event_id_conflict_keeps_the_metadata_user_ids_hash() -> None:
    """The record of an event refused for its event_id is made from its document: its
    metadata.user_id, a hash already, is kept as it is (hashed again, it named no user)."""
    enricher = Enricher(APPS, KEY, "local")
    body, _ = METADATA_USERS[0]
    body = body.replace(b'"trace_id":"t"', b'"trace_id":"t","event_id":"e-1"')
    [accepted] = Decoder().decode(body, NOW).accepted
    doc = enricher.document(accepted.event, ReceivedEvent(body, "0", 3, NOW), 0, NOW, False)
    record = enricher.conflict(doc, NOW)
    assert record.issues[0].code == "duplicate_event_id_conflict"
    assert "alice" not in record.raw
    assert orjson.loads(record.raw)["metadata"]["user_id"] == enricher.user_hash("alice smith")


def test_the_log_keeps_no_user_id_of_a_body_in_utf16_or_utf32() -> None:
    """A body the log is handed in a wide encoding (a line of a file in another encoding than
    the rest) is rewritten before it is kept, as a UTF-8 one is: the scrubber reads it."""
    enricher = Enricher(APPS, KEY, "local")
    event = {"app_id": "app-1", "timestamp": "2026-11-22T10:00:00Z", "trace_id": "t"}
    text = orjson.dumps({**event, "user_id": "wideSecret"}).decode()
    for encoding in ("utf-16", "utf-16-le", "utf-32-be"):
        [(_, kept, pair)] = Pseudonymizer(Decoder(), enricher).items(
            [(None, text.encode(encoding))]
        )
        assert pair is not None, encoding
        for form in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
            assert "wideSecret".encode(form) not in kept, (encoding, form)
        assert enricher.user_hash("wideSecret").encode() in kept, encoding
