"""Shadow detection after reading: fresh detectors over a replay's documents, app by app.

A replay of several files detects this way; from the live partitions (or one file) the
detectors run while reading instead, one state per partition as live (stream.replay.run,
JobAlerts). Detector state is per app, so an app's breaches depend on its own documents
only: each app gets a fresh hot path and its documents in source order when they came from
one file, in event-time order when from several (JobFile.observed). An app's breaches and
"done" are written together; a resumed job detects the apps not done yet, and deterministic
detectors make its breaches the ones an uninterrupted run finds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from schemas import Breach
from stream.ports import HotPathFactory
from stream.replay.job import JobFile


async def detect(
    job: JobFile,
    hot_path: HotPathFactory,
    stop: asyncio.Event,
    on_app: Callable[[str, list[Breach]], None] = lambda app, breaches: None,
) -> bool:
    """Run detection for every app not done yet; False when stopped before the end."""
    for app in job.apps_to_detect():
        if stop.is_set():
            return False
        hot = hot_path(None)
        breaches: list[Breach] = []
        observe = hot.observe
        async for page in job.observed(app):
            for event in page:
                breaches.extend(observe(event))
            await asyncio.sleep(0)  # let Ctrl-C's handler and the progress display run
        await job.detected(app, breaches)
        on_app(app, breaches)
    return True
