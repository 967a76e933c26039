"""Several processing worker processes on the embedded backend (``process --workers N``).

One process's event loop runs on one core; the pipeline is CPU-bound. The supervisor here starts
N worker processes (``evalstream.worker``), each running the whole pipeline over a share of the
log's partitions, and gives every partition an owner, balancing the partitions' events over the
live workers (``shares``): a dead worker's partitions move to the others, and move back when it
is restarted (after a pause) and says it has started (until then the others process them). A
worker whose event loop sends no heartbeat for ``embedded.worker_stall_s`` is stuck (stopped,
deadlocked, blocked on a hung file system; counted while the supervisor listens: a supervisor
held up itself blames nobody): readiness names it and its partitions, and it is killed, so its
partitions move and it is restarted like any dead worker. The promise "never two workers on one
partition" does not rest on this bookkeeping: a worker processes a partition only while it holds
the partition's lock file (``stream.sources.local_log_share``), and a partition's detector
snapshot and checkpoint are written by its owner before it lets go, so the next owner resumes
from them exactly.

Workers report each batch's outcome over their pipe; the supervisor adds them up into one
ProcessorStats, so the status line, ``--until-idle``, readiness and the metrics cover all of
them. A batch counts once its partition's checkpoint covers it: a killed worker's batches past
its checkpoint are processed again by the partition's next holder, and counted then (what the
next holder resumes after, its checkpoint or snapshot, decides which ones). They also report
each partition they take and let go: readiness is not ready while no worker holds a partition
(every worker dead, or restarting after dying at start), and names a partition no live worker
has taken (since the start, or for longer than a restart takes).
The supervisor holds the log's processor lock (one processing command per data dir) and sweeps
retention. Stopping (Ctrl-C, SIGTERM, ``--until-idle``): every worker finishes its batches in
flight and checkpoints, then exits; the supervisor returns after the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psutil

from common.retry import Backoff, sleep_or_stop, until_first
from evalstream.settings import Settings
from evalstream.worker_pipe import start_worker
from stream.exceptions import SourceError, StreamError
from stream.ports import ReceivedEvent
from stream.processor import report_status
from stream.sources.local_log import (
    PROCESSOR_LOCK,
    LocalLog,
    ProcessorLock,
    sweep_until_stopped,
)
from stream.sources.subprocess_channel import Channel, ErrorValue, decode_error, end_child
from stream.stats import ProcessorStats

logger = logging.getLogger(__name__)

# Pauses before restarting a worker that died: 0.5 s doubling up to 10 s.
RESTART_BACKOFF = Backoff(initial_s=0.5, max_s=10.0)
# Starts in a row of one worker slot that die before processing any batch, before giving up
# (unless the worker said why and the cause is passing: a full data dir is waited out).
MAX_FAILED_STARTS = 5
# How often the supervisor looks at its workers' heartbeats (evalstream.worker.HEARTBEAT_S).
HEARTBEAT_CHECK_S = 0.5
# A check of the heartbeats this much later than planned: the supervisor itself was held up.
HELD_UP_S = 1.0
# The stuck bound before a worker's first message: its interpreter imports the pipeline first
# (1-3.5 s measured on the project's 2-core machine, more when it is loaded).
START_S = 60.0
# A crash loop's repeats of one error are summed up in at most one line this often.
REPEAT_LOG_S = 60.0
# At the command's start the partitions are shared once every worker has started, or after
# this long among those that have: shared as each one started, the first would take them all
# and hand half over a moment later, a partition move per partition at every start (2 workers
# over 100,000 events: 40,500-47,000 events/s against 47,300-48,000 with shares given once).
FIRST_SHARES_WAIT_S = 10.0


def shares(live: Sequence[int], weights: Sequence[int]) -> dict[int, list[int]]:
    """Which partitions each live worker slot owns. ``weights[p]``: partition p's events so far
    (its rate, in the long run). Heaviest first, each partition goes to the slot with the least
    weight so far (then the fewest partitions, then the lowest slot): one busy app's partition
    does not leave a worker idle beside another with two busy ones. Equal weights (a new log)
    give partitions round-robin."""
    slots = sorted(live)
    owned: dict[int, list[int]] = {slot: [] for slot in slots}
    if not slots:
        return owned
    load = dict.fromkeys(slots, 0)
    for partition in sorted(range(len(weights)), key=lambda p: (-weights[p], p)):
        slot = min(slots, key=lambda s: (load[s], len(owned[s]), s))
        owned[slot].append(partition)
        load[slot] += weights[partition]
    return {slot: sorted(partitions) for slot, partitions in owned.items()}


class _Watched:
    """The supervisor's view of a partition for lag: the log's head, and where the worker that
    took it last resumed (unknown, so all of it counts as lag, until a worker reports it:
    ``--until-idle`` must not stop before the workers have even started)."""

    rewindable = False

    def __init__(self, log: LocalLog, partition: int, resumed: int | None = None) -> None:
        self._log = log
        self._partition = partition
        self._resumed = resumed

    @property
    def partition_id(self) -> str:
        return str(self._partition)

    async def last_enqueued_sequence(self) -> int | None:
        return await self._log.last_sequence_async(self._partition)

    async def checkpointed_sequence(self) -> int | None:
        return self._resumed

    async def checkpoint(self, event: ReceivedEvent) -> None:
        raise SourceError("the supervisor does not checkpoint: the partition's worker does")

    async def owned(self) -> bool:
        return False  # it writes nothing for the partition (see checkpoint)

    async def resume_after(self, sequence: int) -> bool:
        return False


class _Worker:
    """One running worker process and the pipe to it."""

    def __init__(self, slot: int, process: asyncio.subprocess.Process, channel: Channel) -> None:
        self.slot = slot
        self.process = process
        self.channel = channel
        self.batches = 0
        # Said it has started (its store open): only then does it get partitions.
        self.started = False
        self.stuck = False  # killed for it
        self.finished = False
        self.error: ErrorValue | None = None
        self.trace: str | None = None
        self.spawned_at = self.heard_at = time.monotonic()


class _Failures:
    """How the failed runs of the workers are logged. In a crash loop (the data dir full at
    every restart) a worker fails every 0.5-10 s with the same error: the first failure is
    logged with its traceback, then one line per distinct error at most every REPEAT_LOG_S
    with its count and the next restart, and one line when a worker starts again."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        # Per error: failures since it was last logged, and when that was.
        self._unlogged: dict[str, int] = {}
        self._logged_at: dict[str, float] = {}
        self._failing: dict[int, int] = {}  # slot: failed runs since it last started
        self._looping = False  # a failure was logged with its traceback, none started since

    def failed(self, slot: int, worker: _Worker, pause: float) -> None:
        if worker.error is not None:
            cause = worker.error[1]
        else:
            cause = f"exited with code {worker.process.returncode} before it started"
        self._failing[slot] = self._failing.get(slot, 0) + 1
        now = self.clock()
        restart = (datetime.now(UTC) + timedelta(seconds=pause)).strftime("%H:%M:%S")
        if not self._looping:
            self._looping = True
            self._logged_at[cause] = now
            record = logger.makeRecord(
                logger.name,
                logging.ERROR,
                __file__,
                0,
                "processing worker %d failed: %s; restarting it in %.1f s",
                (slot, cause, pause),
                None,
            )
            # The worker's traceback, as text: its exception stayed in its process.
            record.exc_text = worker.trace
            logger.handle(record)
            return
        self._unlogged[cause] = self._unlogged.get(cause, 0) + 1
        if now - self._logged_at.get(cause, float("-inf")) < REPEAT_LOG_S:
            return
        count = self._unlogged.pop(cause)
        logger.warning(
            "processing workers still failing: %s (%d more failure%s since it was last "
            "logged); worker %d restarts at %s UTC",
            cause,
            count,
            "" if count == 1 else "s",
            slot,
            restart,
        )
        self._logged_at[cause] = now

    def recovered(self, slot: int) -> None:
        failures = self._failing.pop(slot, 0)
        if not failures:
            return
        logger.warning("processing worker %d started again after %d failed runs", slot, failures)
        if not self._failing:
            self._unlogged.clear()
            self._logged_at.clear()
            self._looping = False


class WorkerPool:
    """The supervisor: ``run(stop)`` as ``stream.processor.Processor`` has it."""

    def __init__(
        self,
        settings: Settings,
        stats: ProcessorStats,
        workers: int,
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.settings = settings
        self.stats = stats
        self.workers = workers
        self.on_status = on_status or (lambda line: logger.info(line))
        self.live: dict[int, _Worker] = {}
        self.restarts = 0
        # When the latest holder of each partition took it (the machine's monotonic clock).
        self._taken_at: dict[str, float] = {}
        self._fatal: StreamError | None = None
        self._failures = _Failures()
        self._log: LocalLog | None = None
        # Slots whose first worker has not started yet: no shares until it has (or the wait ends).
        self._first_starts = set(range(self.workers))
        self._all_started = asyncio.Event()

    def pids(self) -> dict[int, int]:
        """Process id of each live worker slot."""
        return {slot: worker.process.pid for slot, worker in self.live.items()}

    def rss(self) -> dict[int, int]:
        """Resident memory (bytes) of each live worker slot."""
        sizes = {}
        for slot, pid in self.pids().items():
            with contextlib.suppress(psutil.Error):  # exited meanwhile
                sizes[slot] = psutil.Process(pid).memory_info().rss
        return sizes

    async def status_line(self) -> str:
        sizes = self.rss()
        memory = "+".join(f"{sizes[slot] / 2**20:.0f}" for slot in sorted(sizes)) or "-"
        return (
            f"{await self.stats.status_line()} | workers {len(self.live)}/{self.workers} "
            f"rss {memory} MB"
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Process until ``stop`` is set, then let every worker finish and checkpoint."""
        embedded = self.settings.embedded
        with ProcessorLock(embedded.data_dir / PROCESSOR_LOCK):
            log = LocalLog(embedded.log_path, embedded.partitions)
            try:
                self._log = log
                for partition in range(embedded.partitions):
                    await self.stats.attach(_Watched(log, partition), holder=None)
                self._count_running()
                async with asyncio.TaskGroup() as group:
                    reporter = group.create_task(
                        report_status(
                            self.status_line,
                            self.settings.processor.status_interval_s,
                            self.on_status,
                            stop,
                        )
                    )
                    sweeper = group.create_task(
                        sweep_until_stopped(
                            log,
                            embedded.retention_hours * 3600,
                            self.settings.processor.consumer_group,
                            stop,
                        )
                    )
                    async with asyncio.TaskGroup() as slots:
                        for slot in range(self.workers):
                            slots.create_task(self._keep(slot, stop))
                        # Done within FIRST_SHARES_WAIT_S, or at the stop: the group waits
                        # for it.
                        slots.create_task(self._first_shares(stop))
                    reporter.cancel()
                    sweeper.cancel()
                if self._fatal is not None:
                    raise self._fatal
                self.on_status("stopped: " + await self.status_line())
            finally:
                await log.aclose()

    async def _keep(self, slot: int, stop: asyncio.Event) -> None:
        """Run a worker in ``slot`` until the stop, restarting it after a pause if it dies."""
        failed_starts = 0
        while not stop.is_set():
            worker = await self._run_worker(slot, stop)
            if not worker.stuck:  # the slot's stuck worker was replaced, started or not
                self.stats.stuck.pop(slot, None)
            if worker.finished and worker.error is None and stop.is_set():
                return
            if worker.error is not None and not worker.error[0]:
                # Not retryable (configuration, a log made with other settings): every worker
                # would fail the same way; stop them all and report it.
                self._fatal = decode_error(worker.error)
                stop.set()
                return
            failed_starts = 0 if worker.batches else failed_starts + 1
            # A passing cause (the data dir full) is waited out, pauses growing; anything
            # else that keeps a worker from starting will not go away by itself.
            passing = worker.error is not None and worker.error[0]
            if failed_starts >= MAX_FAILED_STARTS and not passing:
                self._fatal = SourceError(
                    f"processing worker {slot} failed {failed_starts} times in a row at start "
                    f"(last exit code {worker.process.returncode})"
                )
                stop.set()
                return
            pause = RESTART_BACKOFF.delay(failed_starts)
            if worker.started and worker.error is None:
                logger.warning(
                    "processing worker %d exited (code %s); its partitions moved, restarting "
                    "it in %.1f s",
                    slot,
                    worker.process.returncode,
                    pause,
                )
            else:
                self._failures.failed(slot, worker, pause)
            self.restarts += 1
            await sleep_or_stop(pause, stop)

    async def _run_worker(self, slot: int, stop: asyncio.Event) -> _Worker:
        worker = _Worker(slot, *await start_worker("evalstream.worker", self.settings))
        self.live[slot] = worker
        self._count_running()
        stopper = asyncio.create_task(self._forward_stop(worker, stop))
        watchdog = asyncio.create_task(self._watch(worker))
        try:
            while (message := await worker.channel.receive()) is not None:
                worker.heard_at = time.monotonic()
                await self._dispatch(worker, message)
        finally:
            stopper.cancel()
            watchdog.cancel()
            del self.live[slot]
            self.stats.released(slot)
            self._count_running()
            if not stop.is_set():
                await self._rebalance()
            worker.channel.fail_calls()
            if worker.finished:
                await asyncio.shield(worker.process.wait())
            else:
                await end_child(worker.process)
        return worker

    async def _watch(self, worker: _Worker) -> None:
        """Kill ``worker`` once it has been silent (no heartbeat, no message) for
        ``embedded.worker_stall_s``: a stuck worker holds its partitions' locks for as long as
        it lives, so nobody else can process them. Killed, it exits as any dead worker does:
        its partitions move (its batch in flight is processed again by their next owner, which
        resumes from their checkpoints) and it is restarted."""
        bound = self.settings.embedded.worker_stall_s
        # Silence counts only while this process was listening: when it was held up itself
        # (frozen with its container, stopped, its loop blocked), the workers' heartbeats of
        # that time wait unread in their pipes, and the silence is its own.
        listening_since = worker.spawned_at
        while True:
            # Before its first message the interpreter is still importing the pipeline, which
            # takes seconds on a loaded machine: a stuck start gets a longer bound.
            allowed = bound if worker.heard_at > worker.spawned_at else max(bound, START_S)
            now = time.monotonic()
            silent = now - max(worker.heard_at, listening_since)
            if silent <= allowed:
                pause = min(allowed - silent, HEARTBEAT_CHECK_S) + 0.01
                await asyncio.sleep(pause)
                if time.monotonic() - (now + pause) > HELD_UP_S:
                    listening_since = time.monotonic()
                continue
            held = self.stats.held_by(worker.slot)
            problem = (
                f"processing worker {worker.slot} (pid {worker.process.pid}) stuck: no heartbeat "
                f"for {silent:.0f} s, holding partitions {', '.join(held) or 'none'}; killed, "
                "restarting it"
            )
            logger.error(problem)
            self.stats.stuck[worker.slot] = problem
            worker.stuck = True
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()
            return

    def _count_running(self) -> None:
        self.stats.workers = (len(self.live), self.workers)

    async def _first_shares(self, stop: asyncio.Event) -> None:
        """Share the partitions once every worker has started, or after FIRST_SHARES_WAIT_S
        among those that have (a worker that cannot start gets its share when it does)."""
        await until_first(self._all_started, stop, timeout=FIRST_SHARES_WAIT_S)
        # A stop ends the wait at once: the task group waits for this task.
        if not self._all_started.is_set() and not stop.is_set():
            self._first_starts.clear()
            await self._rebalance()
        # Else the last one to start has shared them (``_dispatch``).

    async def _rebalance(self) -> None:
        assert self._log is not None
        if self._first_starts:
            return
        weights = [
            await self._log.last_sequence_async(partition) + 1
            for partition in range(self.settings.embedded.partitions)
        ]
        started = [slot for slot, worker in self.live.items() if worker.started]
        for slot, owned in shares(started, weights).items():
            worker = self.live.get(slot)
            if worker is not None and worker.started:
                with contextlib.suppress(StreamError):  # gone: its own task notices
                    worker.channel.send("assign", owned)

    @staticmethod
    async def _forward_stop(worker: _Worker, stop: asyncio.Event) -> None:
        await stop.wait()
        with contextlib.suppress(StreamError):
            worker.channel.send("stop")
            await worker.channel.flush()

    async def _dispatch(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        stats = self.stats
        if kind == "alive":
            return
        if kind == "started":
            worker.started = True
            self._first_starts.discard(worker.slot)
            if not self._first_starts:
                self._all_started.set()
            self.stats.stuck.pop(worker.slot, None)
            self._failures.recovered(worker.slot)
            await self._rebalance()
        elif kind == "attached" and self._log is not None:
            _, partition, resumed, taken_at, covered = message
            # A report older than the latest holder's (its pipe read later): that worker has
            # let go of the partition since.
            if taken_at >= self._taken_at.get(partition, 0.0):
                self._taken_at[partition] = taken_at
                await stats.attach(
                    _Watched(self._log, int(partition), resumed), worker.slot, covered
                )
        elif kind == "detached":
            stats.released(worker.slot, message[1])
        elif kind == "batch":
            _, partition, last, documents, codes, breaches, seconds, store, publish = message
            worker.batches += 1
            stats.record_counts(
                partition, last, documents, codes, breaches, seconds, holder=worker.slot
            )
            stats.store_error, stats.publish_error = store, publish
        elif kind == "detectors":
            _, seconds, failures = message
            stats.metrics.detector_seconds.inc(seconds)
            stats.metrics.detector_failures.inc(failures)
        elif kind == "checkpointed":
            stats.checkpointed(message[1], worker.slot)
        elif kind == "failing":
            _, what, error = message
            if what == "store":
                stats.store_error = error
                stats.metrics.store_failures.inc()
            else:
                stats.publish_error = error
                stats.metrics.publish_failures.inc()
        elif kind == "alerts lost":
            stats.alerts_lost(message[1], message[2])
        elif kind == "finished":
            worker.finished, worker.error, worker.trace = True, message[1], message[2]
        else:
            logger.error("unknown message from a processing worker", extra={"kind": kind})
