"""How a processing process handles its memory while it runs: the garbage collector tuned to
batches, and freed heap memory handed back to the operating system."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys
import threading
from collections.abc import Callable, Iterator

# Young-generation threshold while processing: a 1,000-event batch allocates about 12 tracked
# objects per event, so CPython's default (700) collects many times per batch, scanning the
# batch's still-live documents each time (measured ≈ 7 µs/event, ~10% of the pipeline).
GC_YOUNG_THRESHOLD = 20_000
# How often freed heap memory is handed back (a call took 0.5-1.0 ms, 4.4 at most, in a
# processing worker under load).
TRIM_INTERVAL_S = 10.0


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


class _Trimmer:
    """A thread that calls ``malloc_trim(0)`` every ``TRIM_INTERVAL_S`` until stopped.

    glibc's malloc keeps what is freed for reuse and gives back to the system only free memory
    at the top of its heap. A processing process frees each batch's documents (~1.5 KB
    buffers) between longer-lived allocations (SQLite's pages, caches), so the free memory it
    keeps sits between them: in a worker under a sustained load it grew from 4 to 26-30 MB in 7
    minutes, live memory flat at 17-21 MB (bench/NOTES.md), and the process's resident size
    with it. ``malloc_trim(0)`` returns every whole free page wherever it is (glibc ≥ 2.8),
    which keeps the resident size at what is in use. A thread, so that every loop it runs
    beside (processor, worker, ingest worker, replay) gets it without a task of its own; the
    call releases the GIL, and takes the allocator's own locks."""

    def __init__(self, trim: Callable[[int], int]) -> None:
        self._trim = trim
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="malloc-trim", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(TRIM_INTERVAL_S):
            self._trim(0)


class _TunedMemory:
    """While processing: collect less often, and hand freed memory back (``_Trimmer``).

    The pipeline makes few reference cycles, and what it allocates per batch is freed by
    reference counting when the batch ends. Restored when the last processor of the process
    ends (it may run inside a larger program, such as a test session, or beside another
    processor)."""

    def __init__(self) -> None:
        self.depth = 0
        self.saved = gc.get_threshold()
        self._trimmer: _Trimmer | None = None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if self.depth == 0:
            self.saved = gc.get_threshold()
            # Objects alive at start (modules, settings, clients) leave the collector's scans.
            gc.freeze()
            gc.set_threshold(GC_YOUNG_THRESHOLD, *self.saved[1:])
            trim = _malloc_trim()
            if trim is not None:
                self._trimmer = _Trimmer(trim)
                self._trimmer.start()
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if self.depth == 0:
                gc.set_threshold(*self.saved)
                gc.unfreeze()
                if self._trimmer is not None:
                    self._trimmer.stop()
                    self._trimmer = None


tuned_memory = _TunedMemory()
