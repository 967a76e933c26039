"""Commands that run or feed the processor: ``process``, ``send``, ``simulate``, ``schema``."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import orjson
import typer

from common.errors import EvalstreamError, Misconfigured, leaves
from evalstream import wiring
from evalstream.cli.options import (
    EXIT_FAILED,
    ConfigOption,
    DataDirOption,
    console,
    error,
    fail,
    load,
    moment,
    output_file,
    say,
    with_logging,
)
from evalstream.settings import Settings, SettingsError
from schemas import Breach, TelemetryEvent
from stream.decode import ndjson_lines
from stream.exceptions import NotUtf8, StreamError
from stream.sources.eventhubs_config import check_settings

if TYPE_CHECKING:
    from stream.producers.simulator import Incident, Simulator

# The simulator's options, shared by `simulate` and `process --simulate`.
AppsOption = Annotated[int, typer.Option(min=1, help="Simulated apps.")]
RateOption = Annotated[
    float, typer.Option(min=0.001, help="Simulated events per second (event time).")
]
SeedOption = Annotated[int, typer.Option(help="Simulator seed: the same seed, the same events.")]
IncidentOption = Annotated[
    list[str] | None,
    typer.Option(
        help="Scripted incident KIND:APP@START+DURATIONxMAGNITUDE (seconds after the start), "
        "e.g. latency_regression:app-001@60+120x4; kinds latency_regression, score_drift, "
        "error_burst. Repeatable \\[default: none; with process --simulate, "
        "latency_regression:app-001@60+120x4 and error_burst:app-002@150+60x0.3].",
        show_default=False,
    ),
]


def _incidents(values: list[str], apps: int, seed: int) -> list[Incident]:
    """The incidents, each checked against the simulated apps (its app and score exist)."""
    from stream.producers.simulator import Incident, Simulator

    try:
        incidents = [Incident.parse(value) for value in values]
        Simulator(apps=apps, seed=seed, start=datetime.now(UTC), incidents=incidents)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--incident") from exc
    return incidents


@with_logging("INFO")
def process(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    simulate: Annotated[
        bool, typer.Option("--simulate", help="Also run the traffic simulator in-process (demo).")
    ] = False,
    apps: AppsOption = 5,
    rate: RateOption = 200.0,
    seed: SeedOption = 7,
    incident: IncidentOption = None,
    ingest: Annotated[
        bool, typer.Option("--ingest/--no-ingest", help="Serve POST /api/telemetry.")
    ] = True,
    ingest_port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535, help="Ingest port (0 = any free port) \\[default: ingest.port]."
        ),
    ] = None,
    ingest_workers: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Processes serving ingest beside the processor (0 = in the processor's own "
            "process) \\[default: ingest.workers, else half the cores, at least 1].",
            show_default=False,
        ),
    ] = None,
    until_idle: Annotated[
        float | None,
        typer.Option(
            min=0, help="Stop after every partition is caught up and idle this many seconds."
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Processing worker processes on the embedded backend, each owning a share of "
            "the partitions \\[default: embedded.workers, else one per core].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the processor: consume, validate, store, detect, alert, checkpoint.

    Stops gracefully on SIGTERM or Ctrl-C (finishes the batch in flight and checkpoints);
    a second Ctrl-C exits at once. /healthz (liveness) answers 503 when the processor has
    not answered within processor.health_timeout_s (3 s); /readyz lists what is wrong.
    """
    from evalstream.runtime import SimulatorRun, run_processor

    settings = load(config, data_dir)
    if simulate and not incident:
        incident = ["latency_regression:app-001@60+120x4", "error_burst:app-002@150+60x0.3"]
    options = (
        SimulatorRun(
            apps=apps, rate=rate, seed=seed, incidents=_incidents(incident or [], apps, seed)
        )
        if simulate
        else None
    )
    say = _Lines()
    try:
        count = wiring.worker_count(settings, workers)
        where = _where(settings)
    except (SettingsError, Misconfigured) as refused:
        say.error(str(refused))
        raise typer.Exit(2) from None
    say.status(
        f"evalstream processor: backend {settings.backend}, {where}"
        + (f", {count} worker processes" if count > 1 else "")
        + "; Ctrl-C to stop"
    )
    try:
        asyncio.run(
            run_processor(
                settings,
                ingest=ingest,
                ingest_port=ingest_port,
                simulate=options,
                until_idle_s=until_idle,
                on_status=say.status,
                on_breach=say.breach,
                workers=count,
                ingest_workers=ingest_workers,
            )
        )
    except* (Misconfigured, StreamError) as group:
        for exc in leaves(group):
            say.error(str(exc))
        raise typer.Exit(2) from None


# How long the start line waits for the event hub's partition count.
HUB_LOOKUP_S = 10.0


def _where(settings: Settings) -> str:
    """Where the processor reads and how many partitions: the embedded log's, or the event
    hub's as the service gives them (the setting is only what autoscaling is checked against).
    The hub is asked once: a hub that does not exist ends the command here (``Misconfigured``;
    the SDK would retry it for seconds at each step); without an answer the line names the hub
    only, and the processor says what is wrong."""
    if settings.backend == "embedded":
        embedded = settings.embedded
        return f"data in {embedded.data_dir}, {embedded.partitions} partitions"
    hub = settings.azure.eventhubs.eventhub_name
    try:
        check_settings(settings.azure.eventhubs, checkpoints=False)
    except Misconfigured:
        return f"event hub {hub}"  # the processor names what is not set, the store's first
    lookup = wiring.hub_positions(settings, checkpoints=False, retries=False)
    try:
        positions = asyncio.run(asyncio.wait_for(lookup, HUB_LOOKUP_S))
    except Misconfigured:
        raise
    except (EvalstreamError, TimeoutError):
        return f"event hub {hub}"
    return f"event hub {hub}, {len(positions)} partitions"


class _Lines:
    """What the processor says: log records of ``evalstream.process``, so a terminal shows one
    format (``--log-format text``) and a collector gets only JSON lines (``json``). Errors
    that end the command are the CLI's one ``error:`` line on a terminal."""

    def __init__(self) -> None:
        self.logger = logging.getLogger("evalstream.process")

    def status(self, line: str) -> None:
        self.logger.info(line)

    def breach(self, breach: Breach) -> None:
        self.logger.warning(
            f"{breach.severity.value} {breach.kind.value} breach {breach.state.value}: "
            f"{breach.app_id} {breach.signal} {breach.message}".rstrip(),
            extra={
                "breach_id": breach.breach_id,
                "app": breach.app_id,
                "signal": breach.signal,
                "severity": breach.severity.value,
                "detector": breach.detector,
            },
        )

    def error(self, message: str) -> None:
        error(message)


def send(
    path: Annotated[str, typer.Argument(help="NDJSON file, one event per line; - for stdin.")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    batch: Annotated[int, typer.Option(min=1, help="Events appended per transaction.")] = 1000,
) -> None:
    """Append NDJSON events to the configured source, as a producer would.

    Lines are sent as they are: the processor validates them and quarantines bad ones. Each
    batch is committed when appended: a send that fails says how many events were appended
    before it and where to resend from, so none is sent twice.
    """
    settings = load(config, data_dir)
    try:
        stream = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror}") from None
    sent = Sent()
    try:
        asyncio.run(_send(settings, ndjson_lines(stream), batch, sent))
    except NotUtf8 as exc:
        # Found in the stream's first bytes, before any line was sent.
        raise fail(f"{path}: {exc}") from None
    except EvalstreamError as exc:
        if sent.events == 0 and isinstance(exc, Misconfigured):
            raise fail(str(exc)) from None  # a setting or the data dir: nothing was sent
        raise fail(f"{exc}; {sent.said(path)}", EXIT_FAILED) from None
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    console.print(f"sent {sent.events} events")


@dataclass
class Sent:
    """How far a send got: the events appended (committed, so a retry must skip them) and the
    stream offset of the first line not appended."""

    events: int = 0
    resume_offset: int = 0

    def said(self, path: str) -> str:
        if self.events == 0:
            return "no event was appended: send it all again"
        source = "stdin" if path == "-" else path
        return (
            f"{self.events} events (the first {self.events} non-blank lines of {source}) were "
            f"appended before it: resend from the next line, at byte {self.resume_offset} "
            f"(tail -c +{self.resume_offset + 1}), not to send them twice"
        )


def _partition_key(line: bytes) -> str | None:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    app_id = value.get("app_id") if isinstance(value, dict) else None
    return app_id if isinstance(app_id, str) else None


async def _send(
    settings: Settings, lines: Iterable[tuple[int, bytes]], batch: int, sent: Sent
) -> None:
    """Append ``lines`` ((offset, line) pairs) ``batch`` at a time, counting in ``sent`` what
    was committed: when an append fails, ``sent`` tells what was not."""
    async with wiring.sink(settings) as sink:
        chunk: list[tuple[str | None, bytes]] = []
        for offset, line in lines:
            if not chunk:
                sent.resume_offset = offset
            chunk.append((_partition_key(line), line))
            if len(chunk) >= batch:
                await sink.append(chunk)
                sent.events += len(chunk)
                chunk = []
        if chunk:
            await sink.append(chunk)
            sent.events += len(chunk)


def _write_events(simulator: Simulator, count: int | None, output: str) -> None:
    """``simulate --output``: NDJSON to stdout (``-``) or to a file, which needs a count (it
    would grow until the disk is full); a file that cannot be written is one line, exit 2."""
    if output == "-":
        for event in simulator.events(count):
            sys.stdout.buffer.write(event.body.replace(b"\n", b" ") + b"\n")
        return
    if count is None:
        raise typer.BadParameter("writing to a file needs --count", param_hint="--output")
    output_file(output, "--output")
    try:
        with open(output, "wb") as target:
            for event in simulator.events(count):
                target.write(event.body.replace(b"\n", b" ") + b"\n")
    except OSError as exc:
        raise fail(f"cannot write {output}: {exc.strerror or exc}") from exc


@with_logging("INFO")
def simulate(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    count: Annotated[
        int | None, typer.Option(min=0, help="Events to produce \\[default: until stopped].")
    ] = None,
    apps: AppsOption = 5,
    rate: RateOption = 200.0,
    seed: SeedOption = 7,
    incident: IncidentOption = None,
    invalid_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of deliberately broken events.")
    ] = 0.0,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Write NDJSON here (- = stdout) instead of sending; a file needs --count "
            "\\[default: send to the configured source].",
            show_default=False,
        ),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            help="Event time of the first event, ISO 8601 (no zone = UTC) \\[default: now].",
            show_default=False,
        ),
    ] = None,
    no_pace: Annotated[bool, typer.Option("--no-pace", help="Send as fast as possible.")] = False,
) -> None:
    """Produce realistic, deterministic telemetry (to the source, or NDJSON with --output)."""
    from evalstream.runtime import install_signal_handlers, pace_simulator
    from stream.producers.simulator import Simulator

    # Read as replay and coldpath read a time: a naive one is UTC (the simulator refused it).
    first = moment(start, "--start").astimezone(UTC) if start is not None else datetime.now(UTC)
    simulator = Simulator(
        apps=apps,
        rate=rate,
        seed=seed,
        start=first,
        incidents=_incidents(incident or [], apps, seed),
        invalid_fraction=invalid_fraction,
    )
    if output is not None:
        _write_events(simulator, count, output)
        return
    if count is None and no_pace:
        raise typer.BadParameter("--no-pace needs --count", param_hint="--no-pace")
    settings = load(config, data_dir)

    async def run() -> int:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        async with wiring.sink(settings) as sink:
            if no_pace:
                sent = Sent()
                bodies = enumerate(event.body for event in simulator.events(count))
                await _send(settings, bodies, 1000, sent)
                return sent.events
            return await pace_simulator(simulator, sink, rate, stop, count)

    say(f"sent {asyncio.run(run())} events")


def schema() -> None:
    """Print the JSON Schema of TelemetryEvent (what producers send)."""
    sys.stdout.write(
        orjson.dumps(TelemetryEvent.model_json_schema(), option=orjson.OPT_INDENT_2).decode() + "\n"
    )
