"""Enrichment: a validated event becomes the document the store keeps.

Adds the deterministic id, the synthetic partition key, the ingest position and lag, the
owner's app metadata, derived sizes, and replaces user_id with a keyed hash.

A user id is kept nowhere raw: ``user_id`` becomes the document's ``user_hash``, and a
``metadata.user_id`` entry is stored with the same keyed hash as its value (a string: a
string's hash, ``user_hash("u-1")``, or another scalar's of its JSON text, ``user_hash("42")``;
quarantine hashes a rejected input's user ids alike: stream.pseudonyms). The entry is the one
a JSON reader names ``user_id``, so ``"user\\u005fid"`` is it too, as quarantine's scrub reads
keys; ``"User_Id"`` is another tag, stored as sent, there as here. The content id of an event
without an ``event_id`` is made from the event as sent, raw ``metadata.user_id`` included, like
the raw ``user_id`` it also covers: the same bytes give the same id wherever they are read from
and under any key, ingest answers it before the log without the key (``sent_form``), and a log
record carries it beside its hashed body (stream.privacy). A document stored raw by an older
version keeps its id, so a replay of its event replaces it with the hashed one: the store takes
two documents that differ only in their pseudonyms' values for the same event (store.ports), as
after a change of key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime

import orjson

from schemas import (
    AppDirectory,
    Breach,
    DerivedSizes,
    IngestInfo,
    QuarantineRecord,
    TelemetryDocument,
    TelemetryEvent,
    ValidationIssue,
)
from schemas.quarantine import MAX_QUARANTINE_RAW_BYTES
from schemas.trusted import construct_trusted
from stream.ports import SCRUBBED, ReceivedEvent, Rejected, scrubbed_already
from stream.pseudonyms import scrub_user_ids, user_id_text


def content_id(*parts: bytes | str) -> str:
    """128-bit hash of the parts, each followed by a unit separator (one hashing call)."""
    data = b"\x1f".join(part.encode() if isinstance(part, str) else part for part in parts)
    return hashlib.blake2b(data + b"\x1f", digest_size=16).hexdigest()


# The source of a quarantine record the processor made of an input HTTP ingest refused and
# logged (stream.privacy): counted by ingest, not by the processor (stream.metrics).
INGEST_SOURCE = "ingest"


def request_record_id(origin: bytes, index: int) -> str:
    """The id of the quarantine record of the input at ``index`` of a request body ``origin``:
    two equal bad inputs of one request are two records, the same request sent again lands on
    the same ones."""
    return content_id("direct", origin, str(index))


def _event_content_id(canonical: bytes, user_id: str | None) -> str:
    """``content_id(canonical, user_id or "")`` without copying the canonical bytes."""
    digest = _blake2b(canonical, digest_size=16)
    digest.update(b"\x1f" + user_id.encode() + b"\x1f" if user_id else b"\x1f\x1f")
    return digest.hexdigest()


_blake2b = hashlib.blake2b
_dumps = orjson.dumps
_UTC_Z = orjson.OPT_UTC_Z
_WITHOUT_USER_ID = {"user_id"}
# A validated event's __dict__ holds its fields in this (declared) order; the canonical JSON
# lists them in the same order, so orjson can serialise a copy of that dict directly.
_EVENT_FIELDS = tuple(TelemetryEvent.model_fields)
USER_HASH_CACHE_SIZE = 4096
APP_FIELDS_CACHE_SIZE = 4096


def canonical_json(event: TelemetryEvent) -> bytes:
    """The validated, normalised event as JSON, without user_id (which is never stored).

    Byte for byte what ``event.model_dump_json(exclude={"user_id"})`` gives (pinned by
    tests/unit/stream/test_output_golden.py and test_enrich.py), through orjson: 3-4× cheaper
    per event. pydantic serialises what orjson refuses (integers beyond 64 bits, lone
    surrogates) and any event whose fields are not in declared order (model_construct).
    """
    values = event.__dict__.copy()
    if tuple(values) == _EVENT_FIELDS:
        del values["user_id"]
        tokens = values["tokens"]
        if tokens is not None:
            values["tokens"] = {"input": tokens.input, "output": tokens.output}
        try:
            return _dumps(values, option=_UTC_Z)
        except orjson.JSONEncodeError:
            pass
    return event.model_dump_json(exclude=_WITHOUT_USER_ID).encode()


def document_id(event: TelemetryEvent, canonical: bytes | None = None) -> str:
    """The producer's event_id, else a hash of the canonical event (user_id included)."""
    if event.event_id:
        return event.event_id
    return _event_content_id(canonical or canonical_json(event), event.user_id)


def sent_form(event: TelemetryEvent) -> tuple[bytes, str]:
    """What ingest passes on for a validated event (its body for the log or the hub) and its
    document id, serialising the event once.

    Without a user_id the body is the canonical JSON, which also gives the id: it reads back
    as an equal event (tests/unit/stream/test_enrich.py), so the processor stores the same
    document. With one, the body is the event with its user_id, for the log's pseudonymiser
    (stream.privacy) to replace by its hash; so is a ``metadata.user_id`` (the body keeps it
    as sent, like the id: see the module docstring).
    """
    canonical = canonical_json(event)
    user_id = event.user_id
    body = canonical if user_id is None else event.model_dump_json(exclude_defaults=True).encode()
    return body, document_id(event, canonical)


def partition_key(app_id: str, when: datetime) -> str:
    """``<app_id>:<YYYY-MM-DD>`` of the (UTC) event time.

    ``date().isoformat()`` pads the year to four digits like ``%04d`` and costs a third of the
    equivalent f-string (strftime is slower still).
    """
    return app_id + ":" + when.date().isoformat()


class Enricher:
    def __init__(self, apps: AppDirectory, user_hash_key: bytes, source: str) -> None:
        self.apps = apps
        self.user_hash_key = user_hash_key
        self.source = source
        self._app_fields: dict[str, dict[str, str]] = {}
        # HMAC state after the key, copied per user (hmac.new re-derives the key pads per call).
        self._user_hmac = hmac.new(user_hash_key, digestmod=hashlib.blake2b)
        # Users repeat across events; their hashes are kept (bounded) rather than recomputed.
        self._user_hashes: dict[str, str] = {}

    def user_hash(self, user_id: str) -> str:
        cached = self._user_hashes.get(user_id)
        if cached is None:
            mac = self._user_hmac.copy()
            mac.update(user_id.encode())
            cached = mac.hexdigest()[:32]
            if len(self._user_hashes) >= USER_HASH_CACHE_SIZE:
                self._user_hashes.clear()
            self._user_hashes[user_id] = cached
        return cached

    def pseudonymised(self, event: TelemetryEvent) -> TelemetryEvent:
        """``event`` as stored: its ``metadata.user_id`` value replaced by the keyed hash (the
        module docstring says of what), in place among the entries; ``event`` itself when its
        metadata has no user_id."""
        metadata = event.metadata
        if "user_id" not in metadata:
            return event
        # A copy of a validated event with one metadata value changed (a string, as validation
        # keeps one): model_copy would cost as much again.
        values = event.__dict__.copy()
        hashed = self.user_hash(user_id_text(metadata["user_id"]))
        values["metadata"] = {**metadata, "user_id": hashed}
        return construct_trusted(TelemetryEvent, values)

    def _app(self, app_id: str) -> dict[str, str]:
        fields = self._app_fields.get(app_id)
        if fields is None:
            fields = self.apps.resolve(app_id).metadata.as_document_fields()
            # Bounded like the user hashes: app ids are the producers' to choose.
            if len(self._app_fields) >= APP_FIELDS_CACHE_SIZE:
                self._app_fields.clear()
            self._app_fields[app_id] = fields
        return fields

    def document(
        self,
        event: TelemetryEvent,
        position: ReceivedEvent,
        index: int,
        processed_at: datetime,
        late: bool,
        canonical: bytes | None = None,
    ) -> TelemetryDocument:
        """The stored document of ``event``; ``canonical``: its canonical JSON when the caller
        has it already (a record of the embedded log, stream.privacy)."""
        # The event's fields read from its __dict__: a model's attribute lookups take the
        # generic path (BaseModel defines __getattr__), ~4x a dict's, ~20 of them per event.
        values = event.__dict__
        tokens = values["tokens"]
        input_text = values["input_text"]
        output_text = values["output_text"]
        enqueued_time = position.enqueued_time
        ingest_values = {
            "source": self.source,
            "partition": position.partition,
            "sequence": position.sequence,
            "index": index,
            "offset": position.offset,
            "enqueued_time": enqueued_time,
            "processed_at": processed_at,
            "lag_ms": (processed_at - enqueued_time).total_seconds() * 1000.0,
            "late": late,
        }
        derived_values = {
            "input_chars": len(input_text) if input_text else 0,
            "output_chars": len(output_text) if output_text else 0,
            "tokens_total": (tokens.input + tokens.output) if tokens else 0,
        }
        # The event is serialised once: its canonical JSON gives the content id and, with the
        # enrichment appended, the stored JSON.
        if canonical is None:
            canonical = canonical_json(event)
        user_id = values["user_id"]
        pseudonym = position.user
        if pseudonym is None or user_id is not None or pseudonym == SCRUBBED:
            document_id_ = values["event_id"] or _event_content_id(canonical, user_id)
            user_hash = self.user_hash(user_id) if user_id else None
            if "user_id" in values["metadata"]:
                # The id is the event's as sent (above); what is stored holds the hash.
                event = self.pseudonymised(event)
                values = event.__dict__
                canonical = canonical_json(event)
        else:
            # Logged without its user_id, its metadata.user_id hashed already (stream.privacy):
            # the producer made both from the event as sent (no hash without a user_id).
            user_hash, document_id_ = pseudonym[0] or None, pseudonym[1]
            document_id_ = values["event_id"] or document_id_
        timestamp = values["timestamp"]
        app_id = values["app_id"]
        pk = app_id + ":" + timestamp.date().isoformat()  # partition_key, inlined
        app = self._app(app_id)
        # orjson formats the ingest datetimes itself (UTC as "Z", like pydantic would).
        try:
            enrichment = _dumps(
                {
                    "id": document_id_,
                    "pk": pk,
                    "type": "telemetry",
                    "user_hash": user_hash,
                    "app": app,
                    "derived": derived_values,
                    "ingest": ingest_values,
                },
                option=_UTC_Z,
            )
            stored: bytes | None = canonical[:-1] + b"," + enrichment[1:]
        except orjson.JSONEncodeError:
            # Token counts that are each valid but sum beyond 64 bits: the document serialises
            # itself through pydantic when stored (TelemetryDocument.json_bytes).
            stored = None
        # The event's fields were validated as a TelemetryEvent already; the document takes
        # them as they are (all but user_id), in the declared field order.
        fields = {
            "id": document_id_,
            "pk": pk,
            "type": "telemetry",
            "schema_version": values["schema_version"],
            "app_id": app_id,
            "timestamp": timestamp,
            "trace_id": values["trace_id"],
            "event_id": values["event_id"],
            "span_id": values["span_id"],
            "model_id": values["model_id"],
            "model_version": values["model_version"],
            "input_text": input_text,
            "output_text": output_text,
            "latency_ms": values["latency_ms"],
            "status": values["status"],
            "error_type": values["error_type"],
            "tokens": tokens,
            "scores": values["scores"],
            "user_hash": user_hash,
            "metadata": values["metadata"],
            "app": app,
            "derived": construct_trusted(DerivedSizes, derived_values),
            "ingest": construct_trusted(IngestInfo, ingest_values),
        }
        return construct_trusted(TelemetryDocument, fields, {"_json": stored})

    def quarantine(
        self,
        rejected: Rejected,
        position: ReceivedEvent | None,
        received_at: datetime,
        origin: bytes | None = None,
    ) -> QuarantineRecord:
        """The record of a rejected input. Its id is the one HTTP ingest gave it
        (``rejected.record_id``: of the request it came in, ``request_record_id``), whether
        ingest keeps the record or the processor makes it from the log (source
        INGEST_SOURCE); else its place: (source, partition, sequence, index) when it was read
        from a source, or the request body it came in (``origin``) and its index there."""
        if position is not None and scrubbed_already(position.user):
            kept = rejected.raw
        else:
            kept = scrub_user_ids(rejected.raw, self.user_hash)
        raw = kept[:MAX_QUARANTINE_RAW_BYTES]
        try:
            text, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        if position is not None:
            record_id = rejected.record_id or content_id(
                self.source, position.partition, str(position.sequence), str(rejected.index)
            )
            source = self.source if rejected.record_id is None else INGEST_SOURCE
            day = position.enqueued_time
        else:
            record_id = rejected.record_id or (
                content_id("direct", rejected.raw)
                if origin is None
                else request_record_id(origin, rejected.index)
            )
            source = "direct"
            day = received_at
        return QuarantineRecord(
            id=record_id,
            pk=f"quarantine:{day.strftime('%Y-%m-%d')}",
            raw=text,
            raw_encoding=encoding,
            raw_size=len(kept),
            truncated=len(kept) > MAX_QUARANTINE_RAW_BYTES,
            issues=list(rejected.issues),
            source=source,
            partition=position.partition if position else None,
            sequence=position.sequence if position else None,
            offset=position.offset if position else None,
            app_id=rejected.app_id,
            received_at=received_at,
        )

    def unpublishable(
        self, breach: Breach, exc: Exception, received_at: datetime
    ) -> QuarantineRecord:
        """The record of a breach the alert bus refused for good: its JSON, why, its app."""
        raw = breach.model_dump_json()
        return QuarantineRecord(
            id=content_id("breach", breach.message_id),
            pk=f"quarantine:{breach.opened_at:%Y-%m-%d}",
            raw=raw,
            raw_encoding="utf-8",
            raw_size=len(raw.encode()),
            truncated=False,
            issues=[
                ValidationIssue(
                    code="breach_unpublishable",
                    location="$",
                    message=f"the alert bus refused this breach: {type(exc).__name__}: {exc}"[
                        :2000
                    ],
                )
            ],
            source="hotpath",
            app_id=breach.app_id,
            received_at=received_at,
        )

    def conflict(self, document: TelemetryDocument, received_at: datetime) -> QuarantineRecord:
        """The record of a document the store refused because its ``event_id`` is held by a
        different event: the event as stored (without user_id; a metadata.user_id, hashed
        already, kept as it is), at its source position."""
        ingest = document.ingest
        stored = orjson.loads(document.json_bytes())
        event = {key: stored[key] for key in _EVENT_FIELDS if key in stored}
        issue = ValidationIssue(
            code="duplicate_event_id_conflict",
            location="$.event_id",
            message=f"event_id {document.event_id!r} is already stored for a different event "
            f"of {document.pk}; this one was not stored",
        )
        hashed = SCRUBBED if "user_id" in document.metadata else None
        position = ReceivedEvent(
            b"", ingest.partition, ingest.sequence, ingest.enqueued_time, ingest.offset, hashed
        )
        rejected = Rejected(ingest.index, _dumps(event), (issue,), document.app_id)
        return self.quarantine(rejected, position, received_at)
