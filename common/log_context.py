"""Fields every log line of a unit of work carries (partition, request id, job id…).

``with log_context(partition="2"):`` adds the field to each record logged inside the block, in
this task and in the tasks it starts (context variables follow asyncio tasks), so the code
that logs does not have to pass them along. ``ContextFilter`` on a handler copies them onto the
records; a field given with ``extra=`` wins.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType

_fields: ContextVar[Mapping[str, object]] = ContextVar(
    "evalstream_log_fields", default=MappingProxyType({})
)


@contextlib.contextmanager
def log_context(**fields: object) -> Iterator[None]:
    token = _fields.set({**_fields.get(), **fields})
    try:
        yield
    finally:
        _fields.reset(token)


def current() -> Mapping[str, object]:
    return _fields.get()


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _fields.get().items():
            if key not in record.__dict__:
                setattr(record, key, value)
        return True
