"""The processor's Prometheus metrics, in a registry of its own (one per processor, so tests and
several processors in one interpreter do not share counters).

Counters move as batches are processed (``ProcessorStats`` calls these); the per-partition
gauges (lag, checkpoint age) are set when the registry is scraped (``ProcessorStats.refresh``),
because lag is read from the source.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from schemas import QuarantineRecord, ValidationIssue

# Events ingest refused and kept in quarantine: counted by ingest (in the processor's process or
# summed over ingest workers) as it answers, not by the processor, which on the embedded backend
# makes their records from the log (source stream.enrich.INGEST_SOURCE) without counting them.
INGEST_QUARANTINED = "evalstream_ingest_quarantined_events"

BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ProcessorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # Counted once the partition's checkpoint covers them (ProcessorStats): events a
        # killed worker processed past its checkpoint are processed again and counted once.
        self.events = Counter(
            "evalstream_events",
            "Events processed and checkpointed, by outcome (stored: documents written; "
            "quarantined). An event processed again after a crash counts once.",
            ["outcome"],
            registry=r,
        )
        self.quarantined = Counter(
            "evalstream_quarantined_events",
            "Inputs the processor quarantined, by the code of their first issue, once "
            "checkpointed (those ingest refused: evalstream_ingest_quarantined_events).",
            ["code"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "evalstream_batch_duration_seconds",
            "Time to process one batch (transform, store, detect, publish).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.detector_seconds = Counter(
            "evalstream_detector_seconds", "Time spent in the hot-path detectors.", registry=r
        )
        self.breaches = Counter(
            "evalstream_breaches",
            "Breach messages published, by state and severity, once checkpointed (one "
            "published again after a crash, under its message id, counts once).",
            ["state", "severity"],
            registry=r,
        )
        self.open_breaches = Gauge(
            "evalstream_open_breaches",
            "Breaches opened by this processor and not resolved, by severity.",
            ["severity"],
            registry=r,
        )
        self.publish_failures = Counter(
            "evalstream_publish_failures", "Failed attempts to publish breaches.", registry=r
        )
        self.store_failures = Counter(
            "evalstream_store_failures", "Failed attempts to write a batch.", registry=r
        )
        self.detector_failures = Counter(
            "evalstream_detector_failures",
            "Stored events the hot-path detectors failed on (skipped by them).",
            registry=r,
        )
        self.lag = Gauge(
            "evalstream_partition_lag_events",
            "Events enqueued in a partition and not yet processed.",
            ["partition"],
            registry=r,
        )
        self.checkpoint_age = Gauge(
            "evalstream_checkpoint_age_seconds",
            "Seconds since the partition's last checkpoint (or since it was taken).",
            ["partition"],
            registry=r,
        )
        self.partitions = Gauge(
            "evalstream_partitions_owned", "Partitions this processor owns.", registry=r
        )
        # The cold path when it runs in this process (coldpath.schedule_in_process).
        self.coldpath_jobs = Counter(
            "evalstream_coldpath_jobs",
            "Cold-path jobs (manifests) run, by policy.",
            ["policy"],
            registry=r,
        )
        self.coldpath_shards = Counter(
            "evalstream_coldpath_shards",
            "Cold-path shards finished, by outcome (succeeded, failed).",
            ["outcome"],
            registry=r,
        )


class IngestMetrics:
    """HTTP ingest's requests, registered in the registry of the process that serves it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "evalstream_ingest_requests",
            "Requests to POST /api/telemetry, by answer status.",
            ["status"],
            registry=registry,
        )
        self.seconds = Histogram(
            "evalstream_ingest_request_duration_seconds",
            "Time from a request's start to its answer.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        # Not evalstream_quarantined_events: ingest workers' families are summed beside the
        # processor's, and one name may hold one family.
        self.quarantined = Counter(
            INGEST_QUARANTINED,
            "Events ingest refused and kept in quarantine, by the code of their first issue.",
            ["code"],
            registry=registry,
        )


def counted(registry: CollectorRegistry, family: str) -> float:
    """A counter family's total over its labels, from whichever collector of ``registry``
    holds it (a counter of this process, or ``SummedWorkers``); 0 when none does yet."""
    return sum(
        sample.value
        for metric in registry.collect()
        if metric.name == family
        for sample in metric.samples
        if sample.name == f"{family}_total"
    )


def quarantine_code(record: QuarantineRecord) -> str:
    """The label a quarantined input is counted under: the code of its first issue."""
    return issue_code(record.issues)


def issue_code(issues: Sequence[ValidationIssue]) -> str:
    """``quarantine_code`` of a record with these issues."""
    return issues[0].code if issues else "none"


# One sample as it crosses a process boundary: (sample name, labels, value).
SampleRow = tuple[str, dict[str, str], float]
# One metric family: (name, type, documentation, samples).
FamilyRow = tuple[str, str, str, list[SampleRow]]


def snapshot(registry: CollectorRegistry) -> list[FamilyRow]:
    """The registry's current values, plain enough to send as JSON to another process.

    ``_created`` samples are left out: they are per-process timestamps that cannot be summed."""
    return [
        (
            family.name,
            family.type,
            family.documentation,
            [
                (sample.name, dict(sample.labels), sample.value)
                for sample in family.samples
                if not sample.name.endswith("_created")
            ],
        )
        for family in registry.collect()
    ]


class SummedWorkers(Collector):
    """Counters and histograms of several worker processes, exposed as one set: each sample is
    the sum over the workers' latest snapshots plus what workers that have exited counted.

    A worker sends its cumulative snapshot from time to time (``update``); when it exits its
    last snapshot is kept (``retire``), so the sums never go down when a worker is restarted.
    What a worker counted after its last snapshot is lost with it when it is killed."""

    def __init__(self) -> None:
        self._live: dict[int, list[FamilyRow]] = {}
        self._retired: _Sums = {}

    def update(self, worker: int, families: list[FamilyRow]) -> None:
        self._live[worker] = families

    def retire(self, worker: int) -> None:
        _add(self._retired, self._live.pop(worker, []))

    def collect(self) -> Iterator[Metric]:
        sums = {family: dict(values) for family, values in self._retired.items()}
        for families in self._live.values():
            _add(sums, families)
        for (name, kind, documentation), values in sums.items():
            metric = Metric(name, documentation, kind)
            for (sample, labels), value in values.items():
                metric.add_sample(sample, dict(labels), value)
            yield metric


# Per family (name, type, documentation): per sample (name, sorted labels): the sum.
_Sums = dict[tuple[str, str, str], dict[tuple[str, tuple[tuple[str, str], ...]], float]]


def _add(sums: _Sums, families: list[FamilyRow]) -> None:
    for name, kind, documentation, samples in families:
        family = sums.setdefault((name, kind, documentation), {})
        for sample, labels, value in samples:
            key = (sample, tuple(sorted(labels.items())))
            family[key] = family.get(key, 0.0) + value
