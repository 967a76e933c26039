"""What ``evalstream replay`` shows while a job runs: a rich progress bar on stderr."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from schemas import Breach
from stream.replay.job import BREACHES, STORED, outcomes


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def events_text(counts: Mapping[str, int], accepted: str, rejected: str) -> str:
    """The events a job accepted and rejected, said as what it did with them: "3 stored, 1
    quarantined", or for a shadow job, which stores nothing, "3 valid, 1 invalid (none
    stored)"."""
    text = f"{counts.get(accepted, 0):,} {accepted}, {counts.get(rejected, 0):,} {rejected}"
    return text if accepted == STORED else f"{text} (none stored)"


class DoneColumn(ProgressColumn):
    """How much of the plan is done: events, or the bytes of NDJSON files read so far."""

    def __init__(self) -> None:
        super().__init__()
        self.events = MofNCompleteColumn()
        self.bytes = DownloadColumn()

    def render(self, task: Task) -> Text:
        column = self.bytes if task.fields.get("unit") == "bytes" else self.events
        return column.render(task)


class ReplayDisplay:
    """A rich progress bar on stderr: events (or bytes of files) read of the plan, events/s,
    ETA and counts."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=16),
            DoneColumn(),
            TextColumn("{task.fields[speed]}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[counts]}"),
            console=console,
            transient=False,
        )
        self.task: TaskID | None = None
        self.read = 0
        self.breaches = 0
        self._counts: Callable[[], Counter[str]] = Counter
        self._outcomes = outcomes(stores=True)
        self._started = 0.0

    def __enter__(self) -> ReplayDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def reading(
        self,
        total: float,
        done: float,
        unit: str,
        counts: Callable[[], Counter[str]],
        processes: int = 1,
        stores: bool = True,
    ) -> None:
        self._counts = counts
        self._outcomes = outcomes(stores)
        self._started = asyncio.get_running_loop().time()
        if processes > 1:
            parts = "files" if unit == "bytes" else "partitions"
            self.progress.console.print(f"{processes} worker processes share the {parts}")
        self.task = self.progress.add_task(
            "reading",
            total=total,
            completed=round(done),
            unit=unit,
            speed="",
            counts=self._describe(),
        )

    def _describe(self) -> str:
        counts = self._counts()
        return (
            events_text(counts, *self._outcomes)
            + f", {plural(self.breaches + counts.get(BREACHES, 0), 'breach message')}"
        )

    def events(self, count: int, advanced: float) -> None:
        self.read += count
        elapsed = asyncio.get_running_loop().time() - self._started
        if self.task is not None:
            self.progress.update(
                self.task,
                advance=advanced,
                speed=f"{self.read / elapsed:,.0f} ev/s" if elapsed > 0 else "",
                counts=self._describe(),
            )

    def detecting(self, apps: int) -> None:
        self.task = self.progress.add_task(
            "detecting", total=apps, speed="", counts=self._describe()
        )

    def app_detected(self, app: str, breaches: list[Breach]) -> None:
        self.breaches += len(breaches)
        if self.task is not None:
            self.progress.update(self.task, advance=1, counts=self._describe())
