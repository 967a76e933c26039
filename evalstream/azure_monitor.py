"""Optional export of the processor's metrics to Azure Monitor (Application Insights).

When ``azure.monitor.connection_string`` is set, every counter and gauge of the processor's
Prometheus registry (``stream.metrics``; histograms as their ``_count`` and ``_sum``) is
exported every ``export_interval_s`` as an OpenTelemetry metric of the same name and labels,
through the exporter of ``azure-monitor-opentelemetry``. It uses a meter provider of its own
rather than ``configure_azure_monitor``, which would install process-wide providers and
instrument every HTTP library the process loads. The per-partition gauges read from the source
(lag) are refreshed before each export.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from prometheus_client import CollectorRegistry

from common.retry import sleep_or_stop
from evalstream.azure_monitor_config import AzureMonitorSettings
from stream.stats import ProcessorStats


def _observe(registry: CollectorRegistry, names: set[str]) -> Iterable[Observation]:
    for family in registry.collect():
        for sample in family.samples:
            if sample.name in names:
                yield Observation(sample.value, dict(sample.labels))


class AzureMonitorExport:
    """Owns the meter provider; ``run`` refreshes the gauges until ``stop``, then flushes."""

    def __init__(self, settings: AzureMonitorSettings, stats: ProcessorStats) -> None:
        from azure.monitor.opentelemetry.exporter import AzureMonitorMetricExporter

        assert settings.connection_string is not None
        self.stats = stats
        self.interval_s = settings.export_interval_s
        exporter = AzureMonitorMetricExporter(
            connection_string=settings.connection_string.get_secret_value(),
            # Failed exports are not kept on disk to be sent later: the next export carries
            # the cumulative values again.
            disable_offline_storage=True,
        )
        reader = PeriodicExportingMetricReader(
            exporter, export_interval_millis=settings.export_interval_s * 1000
        )
        self.provider = MeterProvider(metric_readers=[reader])
        meter = self.provider.get_meter("evalstream")
        registry = stats.metrics.registry
        for family in registry.collect():
            for name in _exported(family.name, family.type):
                callback = _callback(registry, name)
                if family.type == "gauge":
                    meter.create_observable_gauge(
                        name, [callback], description=family.documentation
                    )
                else:  # cumulative: counters, and a histogram's count and sum
                    meter.create_observable_counter(
                        name, [callback], description=family.documentation
                    )

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self.stats.refresh()
                await sleep_or_stop(self.interval_s / 2, stop)
        finally:
            await self.stats.refresh()
            await asyncio.to_thread(self.provider.shutdown)  # exports what is left


def _exported(name: str, kind: str) -> list[str]:
    return {
        "counter": [f"{name}_total"],
        "gauge": [name],
        "histogram": [f"{name}_count", f"{name}_sum"],
    }.get(kind, [])


def _callback(
    registry: CollectorRegistry, name: str
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        return list(_observe(registry, {name}))

    return observe
