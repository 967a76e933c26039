"""The memory regime of a processing process (stream.memory): the collector tuned while any
processor runs, and freed heap memory handed back to the system every interval."""

from __future__ import annotations

import gc
import threading

import pytest

from stream import memory


def test_this_platforms_c_library_can_hand_free_memory_back() -> None:
    # The project's machines run glibc; elsewhere the regime goes on without it.
    trim = memory._malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1)


def test_while_processing_memory_is_trimmed_every_interval_and_the_collector_restored_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    trimmed_twice = threading.Event()

    def trim(pad: int) -> int:
        calls.append(pad)
        if len(calls) >= 2:
            trimmed_twice.set()
        return 1

    monkeypatch.setattr(memory, "_malloc_trim", lambda: trim)
    monkeypatch.setattr(memory, "TRIM_INTERVAL_S", 0.01)
    before = gc.get_threshold()
    tuned = memory._TunedMemory()
    with tuned():
        with tuned():  # a second processor in the process: one trimmer, one set-up
            assert gc.get_threshold()[0] == memory.GC_YOUNG_THRESHOLD
            assert [t.name for t in threading.enumerate()].count("malloc-trim") == 1
        assert gc.get_threshold()[0] == memory.GC_YOUNG_THRESHOLD  # the first still runs
        assert trimmed_twice.wait(timeout=10)
    assert gc.get_threshold() == before
    assert "malloc-trim" not in [t.name for t in threading.enumerate()]
    assert set(calls) == {0}  # every free page, none kept at the top


def test_without_the_call_the_collector_is_still_tuned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_malloc_trim", lambda: None)
    tuned = memory._TunedMemory()
    with tuned():
        assert gc.get_threshold()[0] == memory.GC_YOUNG_THRESHOLD
        assert "malloc-trim" not in [t.name for t in threading.enumerate()]
