"""Raw user ids never kept: what producers append to the embedded log, and what quarantine
keeps of a rejected input, carry the keyed hash of a ``user_id`` instead of the value.

An accepted event is logged as its canonical JSON without its ``user_id`` and with the value of
a ``metadata.user_id`` replaced by its keyed hash (as stored: ``Enricher.pseudonymised``),
beside the two things enrichment needs of it — the hash of the ``user_id`` and the document id
(a content hash over the event as sent, raw values included: stream.enrich) — so the stored
document is byte for byte what the raw event would have given, whichever way it came in.
Events ingest validated are logged that way even without a user id (no hash), and the
processor rebuilds them without validating them again. A rejected input keeps its bytes with
every ``user_id`` value replaced by its keyed hash, beside the decision made of it as sent,
which the processor quarantines as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from schemas import TelemetryEvent
from stream.decode import Decoder, refusal_text
from stream.enrich import Enricher, canonical_json, document_id
from stream.ports import REFUSED, Rejected
from stream.pseudonyms import may_hold_user_id, scrub_user_ids

LogItem = tuple[str | None, bytes, tuple[str, str] | None]


class Pseudonymizer:
    """Rewrites producers' bodies for the embedded log (see the module docstring)."""

    def __init__(self, decoder: Decoder, enricher: Enricher) -> None:
        self.decoder = decoder
        self.enricher = enricher

    def items(self, bodies: Sequence[tuple[str | None, bytes]]) -> list[LogItem]:
        now = datetime.now(UTC)
        items: list[LogItem] = []
        for key, body in bodies:
            if not may_hold_user_id(body):
                items.append((key, body, None))
            else:
                items.extend(self._rewrite(key, body, now))
        return items

    def validated_items(
        self,
        bodies: Sequence[tuple[str | None, bytes]],
        validated: Sequence[tuple[TelemetryEvent, str]],
    ) -> list[LogItem]:
        """``items`` of bodies made from validated events with their document ids (ingest's,
        each body the event's canonical JSON when it has no user_id, ``sent_form``): each
        becomes its record straight away, where ``items`` would validate its body again."""
        return [
            (key, body, ("", id_))
            if event.user_id is None and "user_id" not in event.metadata
            else self.event_item(event, id_)
            for (key, body), (event, id_) in zip(bodies, validated, strict=True)
        ]

    def _rewrite(self, key: str | None, body: bytes, now: datetime) -> list[LogItem]:
        decoded = self.decoder.decode(body, now)
        if not decoded.rejected and all(
            a.event.user_id is None and "user_id" not in a.event.metadata for a in decoded.accepted
        ):
            return [(key, body, None)]
        # One record per event: each accepted one with its own hash and id, each rejected one
        # (or the body, rejected as a whole) as its scrubbed bytes with the decision made of it
        # as sent, which the processor quarantines as it is: the scrubbed bytes are not the
        # input, and deciding them again could accept them or give other reasons.
        items: list[LogItem] = [self.event_item(accepted.event) for accepted in decoded.accepted]
        items.extend(self.refused_item(key, rejected) for rejected in decoded.rejected)
        return items

    def refused_item(self, key: str | None, rejected: Rejected) -> LogItem:
        """The log record of a rejected input: its bytes with each user_id value hashed, and
        its decision (issues, index, app) as the decoder gave it: an issue's message names
        what is wrong, never a value (quarantine keeps the same issues for an input ingest
        refused)."""
        return (
            rejected.app_id or key,
            scrub_user_ids(rejected.raw, self.enricher.user_hash),
            (REFUSED, refusal_text(rejected)),
        )

    def event_item(self, event: TelemetryEvent, id_: str | None = None) -> LogItem:
        """The log record of a validated event: its canonical JSON as stored (without user_id,
        a metadata.user_id hashed) with its user's hash ("" without one) and its document id
        (``id_`` when the caller has it already). The processor rebuilds such a record's event
        without validating it again (``Decoder.logged_event``)."""
        stored = self.enricher.pseudonymised(event)
        body = canonical_json(stored)
        # The id is the event's as sent: its canonical JSON is the body unless that was hashed.
        id_ = id_ or document_id(event, body if stored is event else None)
        user_hash = self.enricher.user_hash(event.user_id) if event.user_id else ""
        return (event.app_id, body, (user_hash, id_))
