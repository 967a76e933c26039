"""Logging for the CLI: one line per record on stderr, human (default) or JSON (``--log-format
json``) for collectors.

Every line has the time, level, component (the logger's name without the package noise) and the
record's fields: those given with ``extra=`` and those of the surrounding ``log_context``
(partition, request_id, job id…). Raw user ids never reach a line: a field named like one is
replaced, whatever logged it.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Literal

import orjson

from common.log_context import ContextFilter
from common.printable import printable

LogFormat = Literal["text", "json"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
_PRIVATE = {"user_id", "userid", "user"}


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {
        key: "<redacted>" if key.lower() in _PRIVATE else value
        for key, value in vars(record).items()
        if key not in _STANDARD
    }


class KeyValueFormatter(logging.Formatter):
    """``2026-12-04 00:40:00,123 INFO stream.pipeline: partition initialised partition=2``.

    The message and the fields have their control characters escaped (``common.printable``):
    an event id or a score name is the producer's text, and a newline in one would start a
    line of its own (a traceback keeps its lines)."""

    def format(self, record: logging.LogRecord) -> str:
        shown = logging.makeLogRecord(vars(record))
        shown.msg, shown.args = printable(record.getMessage()), None
        line = super().format(shown)
        fields = " ".join(
            f"{key}={printable(str(value))}" for key, value in _fields(record).items()
        )
        return f"{line} {fields}" if fields else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``component``, ``message``, the fields,
    and ``error`` with the traceback when there is one (or its text, ``exc_text``)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "component": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        elif record.exc_text:  # a traceback given as text (a worker process's)
            line["error"] = record.exc_text
        try:
            return orjson.dumps(line, default=str).decode()
        except orjson.JSONEncodeError:
            # Else logging writes its own multi-line error instead of the record.
            return orjson.dumps(_encodable(line), default=lambda o: _encodable(str(o))).decode()


def _encodable(value: object) -> object:
    """``value`` with what orjson refuses made plain: lone surrogates (bytes of a path that is
    not UTF-8) as backslash escapes, integers beyond 64 bits as text, keys as text."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode()
    if isinstance(value, dict):
        return {_encodable(str(key)): _encodable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_encodable(item) for item in value]
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return str(value)
    return value


_chosen: LogFormat = "text"


def chosen_format() -> LogFormat:
    """The format ``configure`` last set (child processes log the same way)."""
    return _chosen


def configure(level: str = "INFO", log_format: LogFormat = "text") -> None:
    global _chosen
    _chosen = log_format
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(
        JsonFormatter()
        if log_format == "json"
        else KeyValueFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The Azure SDKs log every HTTP request at INFO; httpx too, with its whole URL (a webhook's
    # path is its credential), and an ingest worker's forwarded health checks would be noise.
    logging.getLogger("azure").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
