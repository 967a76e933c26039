"""``evalstream replay``: a time range of a source through the pipeline again, as a job."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import tomllib
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from pydantic import ValidationError

from evalstream import wiring
from evalstream.cli.options import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    ConfigOption,
    DataDirOption,
    checked_app_ids,
    console,
    fail,
    first_problem,
    load,
    moment,
    output_file,
    run,
    with_logging,
)
from evalstream.cli.replay_display import ReplayDisplay, events_text, plural
from evalstream.settings import Settings
from evalstream.wiring import replay as replay_wiring
from schemas import AppDirectory
from stream.exceptions import ReplayError, ReplayMisconfigured
from stream.replay import flow
from stream.replay.job import JobFile, outcomes, running
from stream.replay.ports import TimeBasis, Window
from stream.replay.report import table
from stream.replay.spec import JOB_ID, Mode, ReplaySpec, SourceKind, new_job_id

SOURCES = ", ".join(kind.value for kind in SourceKind)


def _detectors(path: Path | None, settings: Settings) -> dict[str, Any]:
    """The apps table to detect with: the file's (its ``[apps]`` table, or the whole file),
    else the live settings'."""
    if path is None:
        return settings.apps.model_dump(mode="json")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise fail(f"--detectors: {path}: {exc}") from None
    try:
        apps = AppDirectory.model_validate(data.get("apps", data))
    except ValidationError as exc:
        raise fail(f"--detectors: {path}: {first_problem(exc)}") from None
    return apps.model_dump(mode="json")


@with_logging("WARNING")
def replay(
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            help="NDJSON files or globs for --source ndjson; - reads stdin, copied as read "
            "(user ids too) to <data_dir>/replays/<id>.stdin.ndjson, readable by its owner "
            "only, so a stopped or failed job can resume; the copy is removed once the job "
            "completes.",
            show_default=False,
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help=f"Where to read: {SOURCES} \\[default: ndjson with PATHS, else the backend's "
            "source: log (embedded) or eventhubs (azure)].",
            show_default=False,
        ),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            "--from", help="Start of the range, ISO 8601 (no zone = UTC).", show_default=False
        ),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option("--to", help="End of the range (excluded), ISO 8601.", show_default=False),
    ] = None,
    by: Annotated[
        TimeBasis | None,
        typer.Option(
            "--by",
            help="event: the events' own timestamps (late arrivals included); enqueued: when "
            "the source received them \\[default: event].",
            show_default=False,
        ),
    ] = None,
    app: Annotated[
        list[str] | None,
        typer.Option(
            "--app", help="Only this app (repeatable) \\[default: every app].", show_default=False
        ),
    ] = None,
    mode: Annotated[
        Mode | None,
        typer.Option(
            "--mode",
            help="shadow: fresh detectors over the range, breaches to a report, nothing paged; "
            "reprocess: decode, validate, enrich and upsert as live (same ids); both "
            "\\[default: shadow].",
            show_default=False,
        ),
    ] = None,
    detectors: Annotated[
        Path | None,
        typer.Option(
            "--detectors",
            help="TOML with an \\[apps] table (defaults/overrides) to shadow-detect with "
            "\\[default: the live settings].",
            show_default=False,
            dir_okay=False,
        ),
    ] = None,
    publish: Annotated[
        bool,
        typer.Option(
            "--publish",
            help="Send the shadow breaches to the alert topic (their ids make ones the live "
            "processor sent already duplicates the bus drops).",
        ),
    ] = False,
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate",
            min=1.0,
            help="At most this many events/s (spares the store's throughput) \\[default: no "
            "limit].",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Worker processes sharing the job's partitions; a new reprocess job reads "
            "NDJSON files over 1 MiB in parts for them, by app (whole when one app is most of "
            "a file) \\[default: replay.workers, else one per core].",
            show_default=False,
        ),
    ] = None,
    consumer_group: Annotated[
        str | None,
        typer.Option(
            "--consumer-group",
            help="Event Hubs consumer group to read through \\[default: replay.consumer_group].",
            show_default=False,
        ),
    ] = None,
    job_id: Annotated[
        str | None,
        typer.Option(
            "--id", help="Name the new job (default: r<time>-<random>).", show_default=False
        ),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume", help="Continue the job with this id where it stopped.", show_default=False
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Also write the JSON report here \\[default: <data_dir>/replays/<id>.json].",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Re-run a time range of a source through the pipeline, as a resumable job.

    Reads the embedded log, Event Hubs (through its own consumer group: the live processor's
    checkpoints never move), Event Hubs Capture archives in Blob storage, or NDJSON files.
    Shadow mode runs fresh detectors over the range in event-time order and writes the breaches
    they would have raised to a report; reprocess mode upserts documents and quarantine
    records on the ids the live processor gives them. Ctrl-C or SIGTERM stop after the batches
    in flight and checkpoint; --resume ID continues. Exit 0 complete, 1 failed, 2 bad
    options, 130 stopped.
    """
    settings = load(config, data_dir)
    if report is not None:
        output_file(report, "--report", settings.embedded.data_dir)
    job: JobFile | None = None
    stdin = False
    if resume is not None:
        given = {
            "PATHS": paths, "--source": source, "--from": start, "--to": end, "--by": by,
            "--app": app, "--mode": mode, "--detectors": detectors,
            "--consumer-group": consumer_group, "--id": job_id,
        }  # fmt: skip
        if named := [name for name, value in given.items() if value]:
            raise fail(
                f"--resume continues job {resume} with the range and mode it was created with; "
                f"drop {', '.join(named)} (--rate, --publish and --report may change)"
            )
        job = _open_existing(settings, resume)
        try:
            spec = flow.load_spec(job)
        except ReplayError:
            job.close()
            raise
        if spec is None:
            job.close()
            raise fail(
                f"--resume: job {resume} was never planned (its planning stopped); start it "
                f"again with its options (--id {resume} may be given again)"
            )
    else:
        spec, stdin = _new_spec(
            settings,
            paths or [],
            source,
            start,
            end,
            by or TimeBasis.EVENT,
            app,
            mode or Mode.SHADOW,
            detectors,
            consumer_group,
            job_id,
        )
    try:
        outcome = run(_execute(settings, spec, job, rate, publish, report, stdin, workers=workers))
    finally:
        if job is not None:
            job.close()
    if outcome is None:
        console.print(
            f"replay {spec.id} stopped; continue it with: evalstream replay --resume {spec.id}"
        )
        raise typer.Exit(EXIT_INTERRUPTED)


def _stdin_copy(settings: Settings, job_id: str) -> Path:
    """Where a job keeps the stdin it reads, beside its file, until it completes."""
    return replay_wiring.job_path(settings, job_id).with_suffix(".stdin.ndjson")


def _keep_stdin(kept: Path) -> None:
    """Copy stdin to ``kept``, readable by its owner only: it holds the events as sent, raw
    user ids included."""
    kept.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # A copy left by a planning that stopped keeps its mode when opened again.
    os.fchmod(descriptor, 0o600)
    with open(descriptor, "wb") as handle:
        shutil.copyfileobj(sys.stdin.buffer, handle)


def _open_existing(settings: Settings, job_id: str) -> JobFile:
    # The id names <data_dir>/replays/<id>.db: a path in it ("../store") would open another
    # SQLite file as a job and create the job's tables in it.
    if not re.fullmatch(JOB_ID, job_id):
        raise fail(f"--resume: {job_id!r} is not a job id (letters, digits, '.', '_' or '-')")
    path = replay_wiring.job_path(settings, job_id)
    if not path.is_file():
        raise fail(f"--resume: no replay job {job_id!r} in {path.parent}")
    return JobFile(path)


def _new_spec(
    settings: Settings,
    paths: list[str],
    source: str | None,
    start: str | None,
    end: str | None,
    by: TimeBasis,
    apps: list[str] | None,
    mode: Mode,
    detectors: Path | None,
    consumer_group: str | None,
    job_id: str | None,
) -> tuple[ReplaySpec, bool]:
    if start is None or end is None:
        raise fail("--from and --to are required for a new replay (or --resume ID)")
    kind_name = source or (
        "ndjson" if paths else "log" if settings.backend == "embedded" else "eventhubs"
    )
    try:
        kind = SourceKind(kind_name)
    except ValueError:
        raise fail(f"--source: {kind_name!r} is not a source; use one of {SOURCES}") from None
    if paths and kind is not SourceKind.NDJSON:
        raise fail(f"PATHS are NDJSON files: use --source ndjson, not {kind.value}")
    if kind is SourceKind.NDJSON and not paths:
        raise fail("--source ndjson needs files (PATHS) or - for stdin")
    window_start, window_end = moment(start, "--from"), moment(end, "--to")
    try:
        Window(window_start, window_end, by)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if job_id is not None and not re.fullmatch(JOB_ID, job_id):
        raise fail(f"--id: {job_id!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    # A value no event can carry was planned and read through, to end in "nothing replayed".
    checked_app_ids(apps, "--app")
    now = datetime.now(UTC)
    spec = ReplaySpec(
        id=job_id or new_job_id(now),
        created=now,
        source=kind,
        paths=paths,
        start=window_start,
        end=window_end,
        by=by,
        apps=sorted(set(apps or [])),
        mode=mode,
        detectors_file=str(detectors) if detectors else None,
        detectors=_detectors(detectors, settings),
        consumer_group=consumer_group,
    )
    return spec, "-" in paths


async def _execute(
    settings: Settings,
    spec: ReplaySpec,
    job: JobFile | None,
    rate: float | None,
    publish: bool,
    report_path: Path | None,
    stdin: bool,
    *,
    workers: int | None,
) -> dict[str, Any] | None:
    from evalstream.runtime import install_signal_handlers

    stop = asyncio.Event()
    install_signal_handlers(stop)
    processes = replay_wiring.worker_count(settings, workers)
    async with AsyncExitStack() as stack:
        job_path = replay_wiring.job_path(settings, spec.id)
        lock_path = job_path.with_suffix(".lock")
        lock = await stack.enter_async_context(running(lock_path, spec.id))
        # Runs before the lock is released: no other run holds this file meanwhile.
        stack.callback(_drop_unplanned_lock, job_path, lock_path)
        publisher = (
            await stack.enter_async_context(wiring.alert_publisher(settings)) if publish else None
        )
        if job is None:
            # The job's own description from here on (files found, stdin kept), as a resume
            # reads it.
            job, spec = await _plan(settings, spec, stdin, processes)
            stack.callback(job.close)
        with ReplayDisplay(console) as display:
            pieces = replay_wiring.pieces(
                settings,
                spec,
                rate=rate,
                publisher=publisher,
                watcher=display,
                workers=processes,
                keep_fds=(lock,),
            )
            store = (
                await stack.enter_async_context(wiring.store(settings))
                if spec.mode.stores
                else None
            )
            async with pieces.reader:
                started = asyncio.get_running_loop().time()
                result = await flow.run(job, spec, pieces, stop, store)
                seconds = asyncio.get_running_loop().time() - started
        if result is None:
            return None
        # Complete: nothing is read again (a resume gives the report), so stdin's copy goes.
        _stdin_copy(settings, spec.id).unlink(missing_ok=True)
        _finish(settings, spec, result, report_path, display.read, seconds)
        return result


def _drop_unplanned_lock(job_path: Path, lock_path: Path) -> None:
    """Remove the lock of a job refused before it was planned ("nothing to replay"): it was
    left behind in replays/ with no job beside it."""
    if not job_path.exists():
        lock_path.unlink(missing_ok=True)


def _planned(path: Path) -> bool:
    job = JobFile(path)
    try:
        return flow.load_spec(job) is not None
    except ReplayError:
        return True  # planned, by another version
    finally:
        job.close()


async def _plan(
    settings: Settings, spec: ReplaySpec, stdin: bool, workers: int
) -> tuple[JobFile, ReplaySpec]:
    """Create the job, for ``workers`` processes: its plan is fixed now, whatever the source
    holds later. Returns it with the description it keeps: a file pattern's matches, stdin's
    copy (removed again when the job is not planned: nothing could resume it)."""
    path = replay_wiring.job_path(settings, spec.id)
    if path.exists():
        if _planned(path):
            raise ReplayMisconfigured(f"--id: a replay job {spec.id!r} exists already; --resume it")
        # Its planning stopped before the plan was written (a full disk, a kill): nothing of it
        # ran, and --resume cannot continue it, so it is planned afresh (its lock is held).
        for leftover in (path, *(path.with_name(path.name + end) for end in ("-wal", "-shm"))):
            leftover.unlink(missing_ok=True)
    if not stdin:
        return await _planned_job(settings, spec, path, workers)
    kept = _stdin_copy(settings, spec.id)
    try:
        _keep_stdin(kept)
        spec = spec.model_copy(update={"paths": [str(kept) if p == "-" else p for p in spec.paths]})
        return await _planned_job(settings, spec, path, workers)
    except BaseException:
        if not (path.is_file() and _planned(path)):
            kept.unlink(missing_ok=True)
        raise


async def _planned_job(
    settings: Settings, spec: ReplaySpec, path: Path, workers: int
) -> tuple[JobFile, ReplaySpec]:
    """The job of ``spec`` (its paths as read) planned in a new file at ``path``."""
    if spec.source is SourceKind.NDJSON:
        from stream.replay.readers.ndjson import expand

        spec = spec.model_copy(update={"paths": [str(p) for p in expand(spec.paths)]})
    reader = replay_wiring.reader(settings, spec, workers)
    skew = timedelta(seconds=settings.processor.max_future_skew_s)
    async with reader:
        plans = await reader.plan(spec.window(), skew)
    for name, error in reader.unreadable.items():
        console.print(f"warning: {name} is unreadable: {error}; the rest is replayed")
    if sum(plan.size for plan in plans) == 0:
        raise ReplayMisconfigured(
            f"nothing to replay: the {spec.source.value} source holds no events between "
            f"{spec.start.isoformat()} and {spec.end.isoformat()} (by {spec.by.value} time)"
        )
    job = JobFile(path)
    flow.create(job, spec, plans)
    job.note_unreadable(reader.unreadable)
    total = sum(p.size for p in plans)
    files = len({plan.events_partition for plan in plans})
    by_app = any(plan.app_buckets for plan in plans)
    amount = (
        f"{round(sum(p.share(p.size) for p in plans)):,} bytes in {plural(files, 'file')}"
        + (f" ({len(plans)} parts{' by app' if by_app else ''})" if len(plans) > files else "")
        if reader.unit == "bytes"
        else f"{total} events in {len(plans)} partitions"
    )
    console.print(
        f"replay {spec.id}: {amount} to read from {spec.source.value}, mode {spec.mode.value}"
    )
    return job, spec


def _finish(
    settings: Settings,
    spec: ReplaySpec,
    result: dict[str, Any],
    report_path: Path | None,
    read: int,
    seconds: float,
) -> None:
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2)
    default = replay_wiring.jobs_dir(settings) / f"{spec.id}.json"
    default.write_bytes(text)
    if report_path is not None:
        report_path.write_bytes(text)
    events = result["events"]
    accepted, rejected = outcomes(spec.mode.stores)
    if events[accepted] + events[rejected] == 0:
        raise fail(
            f"nothing replayed: none of the {read} events read from {spec.source.value} is in "
            f"the window {spec.start.isoformat()} – {spec.end.isoformat()} (by {spec.by.value} "
            f"time{', apps ' + ', '.join(spec.apps) if spec.apps else ''})",
            EXIT_FAILED,
        )
    if result["breaches"]:
        console.print(table(result))
    rate = f", {read / seconds:,.0f} events/s" if seconds > 0 and read else ""
    console.print(
        f"replay {spec.id} complete: {events_text(events, accepted, rejected)}, "
        f"{plural(len(result['breaches']), 'breach message')}{rate}; "
        f"report {default}"
    )
