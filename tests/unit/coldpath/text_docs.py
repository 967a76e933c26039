"""Documents for the text-evaluator tests: a response, a query and metadata per document."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas import TelemetryDocument
from schemas.document import DerivedSizes, IngestInfo
from schemas.telemetry import MetadataValue

WINDOW_START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def text_doc(
    number: int,
    output_text: str | None,
    *,
    input_text: str | None = "What does the service do?",
    metadata: dict[str, MetadataValue] | None = None,
    app_id: str = "app-1",
) -> TelemetryDocument:
    moment = WINDOW_START + timedelta(seconds=number)
    return TelemetryDocument(
        id=f"{app_id}-doc-{number}",
        pk=f"{app_id}:{moment.date().isoformat()}",
        schema_version=1,
        app_id=app_id,
        timestamp=moment,
        trace_id=f"trace-{number}",
        input_text=input_text,
        output_text=output_text,
        status="ok",
        scores={},
        metadata=metadata or {},
        app={},
        derived=DerivedSizes(),
        ingest=IngestInfo(
            source="test",
            partition="0",
            sequence=number,
            enqueued_time=moment,
            processed_at=moment,
            lag_ms=0.0,
        ),
    )
