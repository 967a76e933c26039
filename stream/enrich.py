"""Enrichment: a validated event becomes the document the store keeps.

Adds the deterministic id, the synthetic partition key, the ingest position and lag, the
owner's app metadata, derived sizes, and replaces user_id with a keyed hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime

import orjson

from schemas import (
    AppDirectory,
    DerivedSizes,
    IngestInfo,
    QuarantineRecord,
    TelemetryDocument,
    TelemetryEvent,
)
from schemas.quarantine import MAX_QUARANTINE_RAW_BYTES
from schemas.trusted import construct_trusted
from stream.decode import Rejected
from stream.ports import ReceivedEvent


def content_id(*parts: bytes | str) -> str:
    """128-bit hash of the parts, each followed by a unit separator (one hashing call)."""
    data = b"\x1f".join(part.encode() if isinstance(part, str) else part for part in parts)
    return hashlib.blake2b(data + b"\x1f", digest_size=16).hexdigest()


_WITHOUT_USER_ID = {"user_id"}
ISO_CACHE_SIZE = 4096


def canonical_json(event: TelemetryEvent) -> bytes:
    """The validated, normalised event as JSON, without user_id (which is never stored)."""
    return event.model_dump_json(exclude=_WITHOUT_USER_ID).encode()


def document_id(event: TelemetryEvent, canonical: bytes | None = None) -> str:
    """The producer's event_id, else a hash of the canonical event (user_id included)."""
    if event.event_id:
        return event.event_id
    return content_id(canonical or canonical_json(event), event.user_id or "")


def partition_key(app_id: str, when: datetime) -> str:
    """``<app_id>:<YYYY-MM-DD>`` of the (UTC) event time (f-string: 5× cheaper than strftime)."""
    return f"{app_id}:{when.year:04d}-{when.month:02d}-{when.day:02d}"


class Enricher:
    def __init__(self, apps: AppDirectory, user_hash_key: bytes, source: str) -> None:
        self.apps = apps
        self.user_hash_key = user_hash_key
        self.source = source
        self._app_fields: dict[str, dict[str, str]] = {}
        self._iso_cache: dict[datetime, str] = {}

    def _iso(self, when: datetime) -> str:
        # A batch shares its processing time and mostly its enqueued times: format each once.
        text = self._iso_cache.get(when)
        if text is None:
            if len(self._iso_cache) > ISO_CACHE_SIZE:
                self._iso_cache.clear()
            text = self._iso_cache[when] = orjson.dumps(when, option=orjson.OPT_UTC_Z)[
                1:-1
            ].decode()
        return text

    def user_hash(self, user_id: str) -> str:
        return hmac.new(self.user_hash_key, user_id.encode(), hashlib.blake2b).hexdigest()[:32]

    def _app(self, app_id: str) -> dict[str, str]:
        fields = self._app_fields.get(app_id)
        if fields is None:
            fields = self.apps.resolve(app_id).metadata.as_document_fields()
            self._app_fields[app_id] = fields
        return fields

    def document(
        self,
        event: TelemetryEvent,
        position: ReceivedEvent,
        index: int,
        processed_at: datetime,
        late: bool,
    ) -> TelemetryDocument:
        tokens = event.tokens
        lag_ms = (processed_at - position.enqueued_time).total_seconds() * 1000.0
        input_chars = len(event.input_text or "")
        output_chars = len(event.output_text or "")
        tokens_total = (tokens.input + tokens.output) if tokens else 0
        ingest = construct_trusted(
            IngestInfo,
            {
                "source": self.source,
                "partition": position.partition,
                "sequence": position.sequence,
                "index": index,
                "offset": position.offset,
                "enqueued_time": position.enqueued_time,
                "processed_at": processed_at,
                "lag_ms": lag_ms,
                "late": late,
            },
        )
        derived = construct_trusted(
            DerivedSizes,
            {
                "input_chars": input_chars,
                "output_chars": output_chars,
                "tokens_total": tokens_total,
            },
        )
        # The event is serialised once: its canonical JSON gives the content id and, with the
        # enrichment appended, the stored JSON.
        canonical = canonical_json(event)
        document_id_ = document_id(event, canonical)
        timestamp = event.timestamp
        pk = partition_key(event.app_id, timestamp)
        user_hash = self.user_hash(event.user_id) if event.user_id else None
        app = self._app(event.app_id)
        enrichment = orjson.dumps(
            {
                "id": document_id_,
                "pk": pk,
                "type": "telemetry",
                "user_hash": user_hash,
                "app": app,
                "derived": derived.__dict__,
                "ingest": {
                    **ingest.__dict__,
                    "enqueued_time": self._iso(position.enqueued_time),
                    "processed_at": self._iso(processed_at),
                },
            },
        )
        stored = canonical[:-1] + b"," + enrichment[1:]
        # The event's fields were validated as a TelemetryEvent already; the document takes
        # them as they are (all but user_id), in the declared field order.
        fields = {
            "id": document_id_,
            "pk": pk,
            "type": "telemetry",
            "schema_version": event.schema_version,
            "app_id": event.app_id,
            "timestamp": timestamp,
            "trace_id": event.trace_id,
            "event_id": event.event_id,
            "span_id": event.span_id,
            "model_id": event.model_id,
            "model_version": event.model_version,
            "input_text": event.input_text,
            "output_text": event.output_text,
            "latency_ms": event.latency_ms,
            "status": event.status,
            "error_type": event.error_type,
            "tokens": tokens,
            "scores": event.scores,
            "user_hash": user_hash,
            "metadata": event.metadata,
            "app": app,
            "derived": derived,
            "ingest": ingest,
        }
        return construct_trusted(TelemetryDocument, fields, {"_json": stored})

    def quarantine(
        self, rejected: Rejected, position: ReceivedEvent | None, received_at: datetime
    ) -> QuarantineRecord:
        raw = rejected.raw[:MAX_QUARANTINE_RAW_BYTES]
        try:
            text, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        if position is not None:
            record_id = content_id(
                self.source, position.partition, str(position.sequence), str(rejected.index)
            )
            day = position.enqueued_time
        else:
            record_id = content_id("direct", rejected.raw)
            day = received_at
        return QuarantineRecord(
            id=record_id,
            pk=f"quarantine:{day.strftime('%Y-%m-%d')}",
            raw=text,
            raw_encoding=encoding,
            raw_size=len(rejected.raw),
            truncated=len(rejected.raw) > MAX_QUARANTINE_RAW_BYTES,
            issues=list(rejected.issues),
            source=self.source if position is not None else "direct",
            partition=position.partition if position else None,
            sequence=position.sequence if position else None,
            offset=position.offset if position else None,
            app_id=rejected.app_id,
            received_at=received_at,
        )
