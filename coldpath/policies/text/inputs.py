"""Where the text evaluators find their inputs in a stored document.

Conventions (documented in the README's cold-path section):

- **response**: ``output_text``; **query**: ``input_text``.
- **reference answer** (code-based evaluators): ``metadata["reference"]`` by default, another
  metadata key through the metric's ``reference_key`` parameter. Metadata values are bounded
  by the event contract (512 characters), so long references belong in a shorter form.
- **context** (groundedness): ``metadata["context"]`` by default (``context_key``).

A blank string counts as absent: evaluating "" against a reference says nothing.
"""

from __future__ import annotations

from schemas import TelemetryDocument

DEFAULT_REFERENCE_KEY = "reference"
DEFAULT_CONTEXT_KEY = "context"


def text(value: object) -> str | None:
    """``value`` when it is a non-blank string, else None."""
    if isinstance(value, str) and value.strip():
        return value
    return None


def response(document: TelemetryDocument) -> str | None:
    return text(document.output_text)


def query(document: TelemetryDocument) -> str | None:
    return text(document.input_text)


def from_metadata(document: TelemetryDocument, key: str) -> str | None:
    return text(document.metadata.get(key))
