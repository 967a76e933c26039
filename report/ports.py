"""The report's one port of its own: a read-only history of the breaches that were published.

The alert ports (``alerts.ports``) are about delivering breaches to subscribers, who take them
off the topic; a report needs to look at them without taking them. A ``BreachLog`` does that.
No I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import Protocol, Self

from schemas import Breach


class BreachLog(Protocol):
    """Reads published breach messages without settling, locking or removing anything.

    An async context manager. What it can see depends on the bus: ``report.sqlite_breaches``
    sees every message still held by a subscription of the embedded topic (pending or
    dead-lettered), not the ones every subscriber has already completed.
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def breaches(self, app_ids: Sequence[str], before: datetime) -> list[Breach]:
        """Every distinct breach message (one per ``Breach.message_id``: an opened and a
        resolved message of the same breach are two) of these apps (empty = every app) opened
        before ``before``, in no particular order. Raises ``ReportError`` when the log cannot
        be read."""
        ...
