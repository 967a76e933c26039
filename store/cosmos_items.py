"""What the Cosmos store writes: containers' indexing, the queries, and records as items.

Containers (partition key ``/pk``): ``telemetry`` (pk ``<app_id>:<YYYY-MM-DD>``),
``quarantine`` (pk ``quarantine:<YYYY-MM-DD>``), ``state`` (pk = consumer group, id = partition)
and ``evaluations`` (created by the store, written by the cold path). Items are the documents'
own JSON plus one number added for ordering: ISO timestamps do not sort as strings
(``…:00Z`` sorts after ``…:00.5Z``), so telemetry carries ``event_time_us`` and quarantine
``received_us``, microseconds since the epoch (exact in a JSON double until the year 2255).
Pure functions: no SDK, no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from schemas import QuarantineRecord, TelemetryDocument, TelemetryEvent
from store.ports import StateSnapshot

PARTITION_KEY_PATH = "/pk"
EVENT_TIME_FIELD = "event_time_us"
RECEIVED_FIELD = "received_us"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# Long texts and raw bytes are read back, never filtered on: not indexing them saves request
# units on every write. The window query orders by (event time, id): a composite index.
TELEMETRY_INDEXING = {
    "indexingMode": "consistent",
    "includedPaths": [{"path": "/*"}],
    "excludedPaths": [
        {"path": "/input_text/?"},
        {"path": "/output_text/?"},
        {"path": '/"_etag"/?'},
    ],
    "compositeIndexes": [
        [
            {"path": f"/{EVENT_TIME_FIELD}", "order": "ascending"},
            {"path": "/id", "order": "ascending"},
        ]
    ],
}
QUARANTINE_INDEXING = {
    "indexingMode": "consistent",
    "includedPaths": [{"path": "/*"}],
    "excludedPaths": [{"path": "/raw/?"}, {"path": '/"_etag"/?'}],
}
STATE_INDEXING = {
    "indexingMode": "consistent",
    "includedPaths": [{"path": "/*"}],
    "excludedPaths": [{"path": "/blob/?"}, {"path": '/"_etag"/?'}],
}

# Field names spelled out (EVENT_TIME_FIELD, RECEIVED_FIELD); values only as parameters.
WINDOW_QUERY = (
    "SELECT * FROM c WHERE c.pk = @pk AND c.event_time_us >= @start "
    "AND c.event_time_us < @end ORDER BY c.event_time_us, c.id"
)
QUARANTINE_QUERY = "SELECT TOP @limit * FROM c ORDER BY c.received_us DESC"
COUNT_QUERY = "SELECT VALUE COUNT(1) FROM c"
# Cross-partition: a source partition's events are spread over the apps' and days' keys.
MARKS_QUERY = (
    "SELECT TOP @limit c.ingest.sequence, c.event_time_us, c.ingest.enqueued_time FROM c "
    "WHERE c.ingest.source = @source AND c.ingest.partition = @partition "
    "AND c.ingest.sequence <= @sequence ORDER BY c.ingest.sequence DESC"
)
SEQUENCE_MARKS_QUERY = (
    "SELECT c.ingest.sequence, c.event_time_us, c.ingest.enqueued_time FROM c "
    "WHERE c.ingest.source = @source AND c.ingest.partition = @partition "
    "AND c.ingest.sequence = @sequence"
)


# What azure-cosmos refuses in an id (a ValueError before any request), '%' (point reads put the
# id in the URL path, where the service would decode it) and '~', the escape character itself.
_ID_UNSAFE = re.compile(r"[/\\#?\t\r\n%~]| \Z")
_ID_ESCAPE = re.compile(r"~([0-9A-F]{2})")


# Cosmos DB takes ids of at most 1,023 bytes of UTF-8; the contract allows event_ids of 256
# characters (1,024 bytes of four-byte characters, 768 of escapes). A longer id is stored as
# ``~H`` and its SHA-256: no escape starts so ('H' is no hex digit, '~' itself is escaped),
# and such an item's record id is its event_id (content-hash ids are short).
MAX_ID_BYTES = 1023
_LONG_ID_PREFIX = "~H"


def cosmos_id(value: str) -> str:
    """The Cosmos item id of a record id: the same string unless it holds characters Cosmos
    refuses, which become ``~XX`` (hex), or is too long, which becomes a hash; the identity for
    the usual ids."""
    item_id = value
    if _ID_UNSAFE.search(value) is not None:
        item_id = _ID_UNSAFE.sub(lambda m: f"~{ord(m.group()):02X}", value)
    if len(item_id) * 4 > MAX_ID_BYTES and len(item_id.encode()) > MAX_ID_BYTES:
        return _LONG_ID_PREFIX + hashlib.sha256(value.encode()).hexdigest()
    return item_id


def record_id(item_id: str) -> str:
    """The record id of a Cosmos item id (inverse of ``cosmos_id``, except for a hashed long
    id: see ``document_from_item``)."""
    if "~" not in item_id:
        return item_id
    return _ID_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), item_id)


def epoch_us(when: datetime) -> int:
    """Microseconds since the epoch (a naive datetime is taken as local time, like
    ``datetime.timestamp``)."""
    return (when.astimezone(UTC) - _EPOCH) // _MICROSECOND


def from_epoch_us(value: float) -> datetime:
    """The UTC time ``epoch_us`` gave ``value`` for (a JSON number may come back a double)."""
    return _EPOCH + timedelta(microseconds=int(value))


# Cosmos DB's numbers are doubles: integers beyond 2**53 lose their last digits (the service's
# queries and JavaScript readers round them; cosmosdb-server stores them rounded), and a token
# count of 2**64 - 1 read back as 2**64 no longer validates. The contract takes integers to 64
# bits (and a token total, a sum, beyond): such an integer is written as its decimal string.
# Token counts, which are never strings otherwise, are read back from their digits here (the
# model takes JSON integers only); metadata, whose values may be strings, lists the keys it
# wrote so in BIG_INTEGERS_FIELD.
EXACT_INTEGER_LIMIT = 2**53
BIG_INTEGERS_FIELD = "metadata_big_integers"


def _beyond_doubles(value: object) -> bool:
    return type(value) is int and not -EXACT_INTEGER_LIMIT <= value <= EXACT_INTEGER_LIMIT


def telemetry_item(document: TelemetryDocument) -> dict[str, Any]:
    item: dict[str, Any] = orjson.loads(document.json_bytes())
    item["id"] = cosmos_id(document.id)
    item[EVENT_TIME_FIELD] = epoch_us(document.timestamp)
    tokens = document.tokens
    if tokens is not None:
        for name, count in (("input", tokens.input), ("output", tokens.output)):
            if _beyond_doubles(count):
                item["tokens"][name] = str(count)
    # From the model, not the JSON: orjson reads an integer beyond 64 bits as a float.
    total = document.derived.tokens_total
    if _beyond_doubles(total):
        item["derived"]["tokens_total"] = str(total)
    big = [key for key, value in document.metadata.items() if _beyond_doubles(value)]
    if big:
        metadata = item["metadata"]
        for key in big:
            metadata[key] = str(metadata[key])
        item[BIG_INTEGERS_FIELD] = big
    return item


# The fields of a telemetry item that the producer's event decides (the raw user_id only as
# its hash); the rest is what the processor adds and may differ between two reads of one event.
_EVENT_KEYS = (*(name for name in TelemetryEvent.model_fields if name != "user_id"), "user_hash")


def event_fields(item: dict[str, Any]) -> dict[str, Any]:
    """The part of a telemetry item that identifies its event: equal for a re-read or a
    replay of the same event, different for another event under a reused ``event_id``.

    The user pseudonyms (``user_hash``, ``metadata.user_id``) count only as being there or not:
    their values are made with a key, not sent, so another key, or an older version that kept
    metadata.user_id raw, gives the same event other values (as store.sqlite decides).

    Compared with ``==``: objects (dicts) are equal whatever the order of their keys, as JSON
    objects are; numbers equal whether integer or not (Cosmos DB's numbers are doubles: 1.0
    reads back as 1); a boolean never equals a number (``_booleans_apart``). A metadata integer
    kept as its decimal string (``BIG_INTEGERS_FIELD``) is compared as the integer: its digits
    sent as a string are another event, as in store.sqlite, where JSON types stay apart."""
    fields = {key: item.get(key) for key in _EVENT_KEYS}
    fields["user_hash"] = fields["user_hash"] is not None
    metadata = fields["metadata"]
    if isinstance(metadata, dict):
        metadata = {**metadata}
        for key in item.get(BIG_INTEGERS_FIELD) or ():
            if type(metadata.get(key)) is str:
                metadata[key] = int(metadata[key])
        if "user_id" in metadata:
            metadata["user_id"] = True
        fields["metadata"] = metadata
    return {key: _booleans_apart(value) for key, value in fields.items()}


def _booleans_apart(value: Any) -> Any:
    """``value`` with each boolean in it as a pair, which no JSON value equals: Python has
    ``True == 1``, JSON has ``true`` and ``1``, two values of a tag."""
    if isinstance(value, bool):
        return (bool, value)
    if isinstance(value, dict):
        return {key: _booleans_apart(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_booleans_apart(item) for item in value]
    return value


def quarantine_item(record: QuarantineRecord) -> dict[str, Any]:
    item = record.model_dump(mode="json")
    item["id"] = cosmos_id(record.id)
    item[RECEIVED_FIELD] = epoch_us(record.received_at)
    return item


def state_item(snapshot: StateSnapshot) -> dict[str, Any]:
    return {
        "id": cosmos_id(snapshot.partition),
        "pk": snapshot.consumer_group,
        "consumer_group": snapshot.consumer_group,
        "partition": snapshot.partition,
        # A string: sequence numbers are 64-bit, Cosmos numbers are doubles (exact to 2**53).
        "covered_sequence": str(snapshot.covered_sequence),
        "blob": base64.b64encode(snapshot.blob).decode("ascii"),
    }


def document_from_item(item: dict[str, Any]) -> TelemetryDocument:
    item_id = item["id"]
    item["id"] = item["event_id"] if item_id.startswith(_LONG_ID_PREFIX) else record_id(item_id)
    big = item.pop(BIG_INTEGERS_FIELD, None)
    if big:
        metadata = item["metadata"]
        for key in big:
            metadata[key] = int(metadata[key])
    tokens = item.get("tokens")
    if tokens:
        for name, count in tokens.items():
            if type(count) is str:
                tokens[name] = int(count)
    return TelemetryDocument.model_validate(item)


def quarantine_from_item(item: dict[str, Any]) -> QuarantineRecord:
    item["id"] = record_id(item["id"])
    return QuarantineRecord.model_validate(item)


def snapshot_from_item(item: dict[str, Any]) -> StateSnapshot:
    return StateSnapshot(
        consumer_group=item["consumer_group"],
        partition=item["partition"],
        covered_sequence=int(item["covered_sequence"]),
        blob=base64.b64decode(item["blob"]),
    )
