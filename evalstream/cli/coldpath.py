"""The ``evalstream coldpath`` commands and ``evalstream evaluations``: plan, run and show
evaluations of stored windows.

Exit codes: 0 done, 1 some shards failed (after their retries) or a followed Batch job was not
done by its follow deadline (left as it is), 2 invalid settings or options (one line naming the
setting).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from coldpath.exceptions import ColdpathError, ManifestNotFound
from coldpath.ports import JobReport
from coldpath.result_files import result_file_name, result_lines, shard_results
from coldpath.trigger import WindowChoice, pending_units, plan, submit
from coldpath.windows import check_window, parse_moment, parse_window, windows_between
from evalstream import wiring
from evalstream.cli import options
from evalstream.cli.options import (
    EXIT_FAILED,
    ConfigOption,
    DataDirOption,
    console,
    fail,
    run,
    with_logging,
)
from evalstream.cli.pool import pool_app
from evalstream.settings import Settings, SettingsError
from schemas import EvaluationPolicy, JobManifest

coldpath_app = typer.Typer(
    help=(
        "The cold path: evaluate policies over stored time windows.\n\n"
        "A policy (settings \\[\\[coldpath.policies]]) names metrics, thresholds and a window "
        "length; each due window becomes a job manifest whose shards run on an executor "
        "(local: a process per shard over every core). Re-running a window changes nothing."
    ),
    short_help="Cold path: evaluate policies over stored windows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


PolicyOption = Annotated[
    list[str] | None,
    typer.Option(
        "--policy",
        "-p",
        help="Policy name (repeatable) \\[default: every policy].",
        show_default=False,
    ),
]
# What following a Batch job promises, said by every command that follows one.
BATCH_FOLLOW_HELP = (
    "A Batch job is followed for at most azure.batch.follow_timeout (default: derived from "
    "the task limits, (max_task_retry_count + 1) × max_wall_clock_time for each wave of tasks "
    "the pool runs at once, plus the time nodes take to arrive). When that passes, the job is "
    "left as it is (not deleted or stopped; its tasks may still run) and the command exits "
    "with code 1 and one line saying what the job, its tasks and its pool were doing; look at "
    "the job later with `evalstream coldpath status JOB` (JOB: the manifest id)."
)
ExecutorOption = Annotated[
    str,
    typer.Option(
        "--executor",
        help="Where shards run: local (a process per shard here) or batch (a task per shard "
        "in an Azure Batch job named after the manifest; settings azure.batch).",
    ),
]


def load(config: Path | None, data_dir: Path | None) -> Settings:
    """Settings with the policies checked against the metric catalogue; exit 2 naming the
    setting when anything is wrong."""
    settings = options.load(config, data_dir)
    try:
        wiring.metric_catalogue(settings)
    except SettingsError as exc:
        raise fail(options.one_line(exc)) from exc
    except ColdpathError as exc:
        raise fail(str(exc)) from exc
    return settings


def named_policies(settings: Settings, names: list[str] | None) -> list[EvaluationPolicy]:
    try:
        if not names:
            return list(settings.coldpath.policies)
        return [settings.coldpath.policy(name) for name in names]
    except ColdpathError as exc:
        raise fail(str(exc)) from exc


def _moment(text: str, option: str) -> datetime:
    try:
        return parse_moment(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from exc


def _range(start: str, end: str) -> tuple[datetime, datetime]:
    """``--from`` and ``--to``, the first before the second (an inverted range would select
    nothing, silently)."""
    first, stop = _moment(start, "--from"), _moment(end, "--to")
    if stop <= first:
        raise fail(f"--from ({first.isoformat()}) must be before --to ({stop.isoformat()})")
    return first, stop


@coldpath_app.command()
def windows(
    policy: Annotated[str, typer.Option("--policy", "-p", help="Policy name.")],
    start: Annotated[str, typer.Option("--from", help="ISO-8601 start (UTC if no zone).")],
    end: Annotated[str, typer.Option("--to", help="ISO-8601 end, exclusive.")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """List a policy's UTC-aligned windows overlapping [--from, --to), and which are due."""
    settings = load(config, data_dir)
    (chosen,) = named_policies(settings, [policy])
    from coldpath.windows import is_due

    now = datetime.now(UTC)
    for window in windows_between(chosen, *_range(start, end)):
        state = "due" if is_due(chosen, window, now) else "not due"
        typer.echo(f"{window.key}  {state}")


async def _trigger(
    settings: Settings,
    policies: list[EvaluationPolicy],
    choice: WindowChoice,
    executor_name: str,
    rerun: bool,
    wait: bool,
) -> list[JobReport]:
    try:
        executor = wiring.executor(settings, executor_name, console, follow=wait)
    except SettingsError as exc:
        raise fail(str(exc)) from exc
    async with wiring.evaluation_store(settings) as store:
        manifests = await plan(
            policies,
            choice,
            store,
            now=datetime.now(UTC),
            group_size=settings.coldpath.group_size,
            code_version=wiring.code_version(),
            rerun=rerun,
        )
        for manifest in manifests:
            pending = await pending_units(manifest, store)
            console.print(
                f"manifest {manifest.id} run {manifest.run}: {manifest.window.key}, "
                f"{len(manifest.units)} units ({pending} pending) in {manifest.shard_count} shards"
            )
        if not wait and executor_name == "local":
            return []
        # Batch without --wait: the jobs are submitted and left running.
        return await submit(manifests, store, executor)


def _report(reports: list[JobReport]) -> None:
    failed = False
    for report in reports:
        for index, error in sorted(report.failed.items()):
            failed = True
            console.print(f"[red]manifest {report.manifest_id} shard {index} failed:[/red] {error}")
    if failed:
        raise typer.Exit(EXIT_FAILED)


@coldpath_app.command()
@with_logging("WARNING")
def trigger(
    policy: PolicyOption = None,
    window: Annotated[
        str,
        typer.Option(
            help="'last' (the latest due window per policy) or START/END in ISO-8601: one of "
            "each policy's windows, due (its lateness passed since its end)."
        ),
    ] = "last",
    executor: ExecutorOption = "local",
    rerun: Annotated[
        bool, typer.Option("--rerun", help="Evaluate again under a new run number.")
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="Run the shards and follow them to completion; --no-wait only stages the "
            "manifests (run them later with run-shard or another trigger), or with --executor "
            "batch submits the jobs without following them. " + BATCH_FOLLOW_HELP,
        ),
    ] = True,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Evaluate the due window of each policy: stage its manifest and run its shards.

    Triggering a window again finds the same manifest with every unit done and does nothing.
    """
    settings = load(config, data_dir)
    policies = named_policies(settings, policy)
    if window == "last":
        choice = WindowChoice()
    else:
        try:
            chosen = parse_window(window)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--window") from exc
        now = datetime.now(UTC)
        for each in policies:
            try:
                check_window(each, chosen, now)
            except ValueError as exc:
                raise fail(f"--window: {exc}") from None
        choice = WindowChoice(last=False, window=chosen)
    _report(run(_trigger(settings, policies, choice, executor, rerun, wait)))


@coldpath_app.command(
    help="Evaluate every due window of the policies that overlaps [--from, --to), following "
    "each window's shards to completion.\n\n" + BATCH_FOLLOW_HELP
)
@with_logging("WARNING")
def backfill(
    start: Annotated[str, typer.Option("--from", help="ISO-8601 start (UTC if no zone).")],
    end: Annotated[str, typer.Option("--to", help="ISO-8601 end, exclusive.")],
    policy: PolicyOption = None,
    executor: ExecutorOption = "local",
    rerun: Annotated[
        bool, typer.Option("--rerun", help="Evaluate again under a new run number.")
    ] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    settings = load(config, data_dir)
    policies = named_policies(settings, policy)
    first, stop = _range(start, end)
    _some_due(policies, first, stop, datetime.now(UTC))
    choice = WindowChoice(last=False, range_start=first, range_end=stop)
    _report(run(_trigger(settings, policies, choice, executor, rerun, True)))


def _some_due(
    policies: list[EvaluationPolicy], first: datetime, stop: datetime, now: datetime
) -> None:
    """Exit 2 unless some policy has a due window in [first, stop): a backfill of none did
    nothing and said nothing, as if it had evaluated the range."""
    from coldpath.windows import due_between, last_due

    if any(next(due_between(each, first, stop, now), None) for each in policies):
        return
    latest = ", ".join(f"{each.name} {last_due(each, now).key}" for each in policies)
    raise fail(
        f"no window between --from {first.isoformat()} and --to {stop.isoformat()} is due yet "
        f"(its events may still arrive); the latest due windows: {latest or 'no policies'}"
    )


async def _load_manifest(settings: Settings, reference: str) -> JobManifest:
    path = Path(reference)
    if path.suffix == ".json" and path.is_file():
        try:
            return JobManifest.model_validate_json(path.read_bytes())
        except OSError as exc:
            raise ManifestNotFound(f"--manifest: cannot read {path}: {exc.strerror}") from None
        except ValidationError as exc:
            raise ManifestNotFound(
                f"--manifest: {path} is not a valid manifest: {options.first_problem(exc)}"
            ) from None
    missing = ManifestNotFound(
        f"--manifest: no manifest {reference!r} staged and no such JSON file"
    )
    if settings.backend == "embedded" and not settings.embedded.store_path.exists():
        raise missing  # and opening the store would create an empty one
    async with wiring.evaluation_store(settings) as store:
        manifest = await store.load_manifest(reference)
    if manifest is None:
        raise missing
    return manifest


async def _find_manifest(
    settings: Settings, reference: str | None, url: str | None
) -> JobManifest | str:
    """The manifest to run, or why there is none to (an operator's error: exit 2)."""
    try:
        if url is None:
            assert reference is not None
            return await _load_manifest(settings, reference)
        from coldpath.executors.blob_staging import fetch_manifest

        manifest = await fetch_manifest(url)
        if reference is not None and reference != manifest.id:
            raise ManifestNotFound(
                f"the manifest at --manifest-url is {manifest.id}, not {reference}"
            )
        return manifest
    except ManifestNotFound as exc:
        return str(exc)


async def _run_shard(settings: Settings, manifest: JobManifest, group_index: int) -> int:
    async with wiring.shard_runner(settings) as runner:
        outcomes = await runner.run_shard(manifest, group_index)
        if settings.azure.batch.staging.result_files:
            results = await shard_results(runner.evaluations, manifest, group_index)
            await wiring.put_staged_text(
                settings, result_file_name(manifest.id, group_index), result_lines(results)
            )
    return sum(not outcome.skipped for outcome in outcomes)


@coldpath_app.command("run-shard")
@with_logging("WARNING")
def run_shard(
    group_index: Annotated[int, typer.Option("--group-index", min=0, help="Shard number, from 0.")],
    manifest: Annotated[
        str | None,
        typer.Option("--manifest", help="Staged manifest id, or a manifest JSON file."),
    ] = None,
    manifest_url: Annotated[
        str | None,
        typer.Option(
            "--manifest-url",
            help="Blob URL of the manifest (what Batch tasks get; a SAS URL, or read with the "
            "node's managed identity).",
        ),
    ] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Evaluate one shard of a manifest (the task executors run). Safe to repeat: units done
    for this manifest are skipped, results and breaches are idempotent."""
    if manifest is None and manifest_url is None:
        raise fail("give --manifest or --manifest-url")
    settings = load(config, data_dir)
    found = run(_find_manifest(settings, manifest, manifest_url))
    if isinstance(found, str):
        raise fail(found)
    try:
        evaluated = run(_run_shard(settings, found, group_index))
    except ValueError as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"shard {group_index}: {evaluated} units evaluated")


async def _status(
    settings: Settings, policies: list[EvaluationPolicy]
) -> list[tuple[JobManifest, int]]:
    async with wiring.evaluation_store(settings, read_only=True) as store:
        manifests = await plan(
            policies,
            WindowChoice(),
            store,
            now=datetime.now(UTC),
            group_size=settings.coldpath.group_size,
            code_version=wiring.code_version(),
        )
        return [(manifest, await pending_units(manifest, store)) for manifest in manifests]


def _batch_status(
    settings: Settings,
    job: str,
    metrics: bool,
    textfile: Path | None = None,
    push_gateway: str | None = None,
) -> None:
    from coldpath.executors import batch_metrics
    from coldpath.executors.batch import batch_client

    executor = wiring.batch_executor(settings)

    async def read() -> Any:
        async with batch_client(settings.azure.batch) as client:
            return await executor.status(client, job)

    figures = run(read())
    if textfile is not None:
        batch_metrics.write_textfile(figures, textfile)
    if push_gateway is not None:
        try:
            batch_metrics.push(figures, push_gateway)
        except OSError as exc:
            raise fail(f"pushing the job's metrics to {push_gateway}: {exc}") from exc
    if metrics:
        typer.echo(batch_metrics.exposition(figures), nl=False)
        return
    table = Table("job", "state", "active", "running", "succeeded", "failed", "retries", "requeues")
    table.add_row(
        job,
        figures.state,
        str(figures.by_state.get("active", 0)),
        str(figures.by_state.get("running", 0)),
        str(figures.succeeded),
        str(figures.failed),
        str(figures.retries),
        str(figures.requeues),
    )
    Console().print(table)

    def shown(values: dict[int, float]) -> str:
        return ", ".join(f"p{p} {v:.2f} s" for p, v in values.items()) or "—"

    typer.echo(f"queue latency (created → started): {shown(dict(figures.queue_latency_s))}")
    typer.echo(f"run time: {shown(dict(figures.run_time_s))}")
    typer.echo(f"failure rate: {figures.failure_rate:.1%}")
    for task in figures.failed_tasks:
        typer.echo(f"failed: {task.task_id} exit code {task.exit_code}: {task.failure}")


@coldpath_app.command()
def status(
    job: Annotated[
        str | None,
        typer.Argument(help="A Batch job (a manifest id): its tasks' figures.", show_default=False),
    ] = None,
    policy: PolicyOption = None,
    metrics: Annotated[
        bool,
        typer.Option("--metrics", help="With JOB: print the figures as Prometheus metrics."),
    ] = False,
    textfile: Annotated[
        Path | None,
        typer.Option(
            "--textfile",
            help="With JOB: also write the metrics to this file (node exporter's textfile "
            "collector; written atomically).",
        ),
    ] = None,
    push_gateway: Annotated[
        str | None,
        typer.Option(
            "--push-gateway",
            help="With JOB: also push the metrics to this Prometheus Pushgateway "
            "(job evalstream_coldpath, grouped by job_id).",
        ),
    ] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Show each policy's latest due window: its manifest and how many units are done; or,
    given a Batch JOB, its tasks by state, retries, queue latency and run time percentiles and
    failure rate."""
    if job is None:
        given = {"--metrics": metrics, "--textfile": textfile, "--push-gateway": push_gateway}
        if named := [name for name, value in given.items() if value]:
            raise fail(f"{', '.join(named)}: only with JOB (a Batch job's id): give one")
    elif policy:
        raise fail("--policy: not with JOB (a Batch job has the policies of its manifest)")
    settings = load(config, data_dir)
    if job is not None:
        if not settings.azure.batch.account_url:
            raise fail(
                f"JOB {job!r}: a Batch job's figures need an Azure Batch account "
                "(setting azure.batch.account_url); without JOB, status shows the policies' "
                "windows"
            )
        if textfile is not None:
            options.output_file(textfile, "--textfile", settings.embedded.data_dir)
        try:
            _batch_status(settings, job, metrics, textfile, push_gateway)
        except SettingsError as exc:
            raise fail(str(exc)) from exc
        return
    # Reading only: a mistyped --data-dir made an empty store and showed nothing due.
    options.existing_store(settings)
    table = Table("window", "policies", "manifest", "units", "done", "shards")
    for manifest, pending in run(_status(settings, named_policies(settings, policy))):
        table.add_row(
            manifest.window.key,
            ", ".join(p.name for p in manifest.policies),
            manifest.id[:12],
            str(len(manifest.units)),
            str(len(manifest.units) - pending),
            str(manifest.shard_count),
        )
    Console().print(table)


coldpath_app.add_typer(pool_app, name="pool")
