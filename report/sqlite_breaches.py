"""Reads the breach messages kept in the embedded alert topic's SQLite file, without touching them.

This adapter reads the file that ``alerts.sqlite_bus`` writes, by that file's schema: the body
(a Breach as JSON) of every row of ``messages`` (pending or locked, one row per subscription)
and ``dead_letters``. It never writes: no lock is taken, no delivery counted. A message every
subscriber has completed is deleted from the file and so no longer seen here; the default
subscription ``all`` keeps every breach until someone listens on it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from pydantic import ValidationError

from common.sqlite import SqliteFile, sqlite3
from report.exceptions import ReportError
from schemas import Breach

logger = logging.getLogger(__name__)

_BODIES = """
    SELECT message_id, body FROM messages
    UNION ALL
    SELECT message_id, body FROM dead_letters
"""


def _read_bodies(connection: sqlite3.Connection) -> dict[str, bytes]:
    try:
        rows = connection.execute(_BODIES).fetchall()
    except sqlite3.OperationalError as exc:
        # A file no publisher or receiver has opened yet has no tables: nothing was published.
        if "no such table" in str(exc):
            return {}
        raise
    # One row per subscription that holds the message: the same message id, the same body.
    return {message_id: bytes(body) for message_id, body in rows}


class SqliteBreachLog:
    """The ``BreachLog`` of the embedded backend: the alert topic's file at ``path``.

    A missing file means nothing has been published yet (the log is empty); it is not created.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: SqliteFile | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        if self._closed:
            raise ReportError(f"breach log {self.path} was closed")
        if self.path.exists():
            # Reading only: the alert bus's file and its folder stay as they are.
            self._file = SqliteFile(self.path, error_type=ReportError, read_only=True)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        if self._file is not None:
            await self._file.aclose()

    async def breaches(self, app_ids: Sequence[str], before: datetime) -> list[Breach]:
        if self._closed:
            raise ReportError(f"breach log {self.path} is closed")
        if self._file is None:
            return []
        bodies = await self._file.run(_read_bodies, f"reading breaches from {self.path}")
        wanted = set(app_ids)
        found: list[Breach] = []
        unreadable = 0
        for body in bodies.values():
            try:
                breach = Breach.model_validate_json(body)
            except ValidationError:
                # Dead letters may hold bodies that never were breaches (InvalidBody).
                unreadable += 1
                continue
            if (not wanted or breach.app_id in wanted) and breach.opened_at < before:
                found.append(breach)
        if unreadable:
            logger.warning(
                "breach log holds unreadable messages",
                extra={"path": str(self.path), "unreadable": unreadable},
            )
        return found
