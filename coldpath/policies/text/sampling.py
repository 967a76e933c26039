"""A bounded sample of a window's documents that a re-run draws again exactly.

Each candidate gets a priority from a hash of (seed, app id, trace id, document id); the sample
is the ``size`` candidates with the smallest priorities (bottom-k). That is a uniform sample
without replacement whatever the order or page size in which documents arrive, and it depends
only on the documents themselves, so re-running a window (after a crash, a retry, a backfill)
sends the same documents to the judge.
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from schemas import TelemetryDocument

T = TypeVar("T")


def priority(seed: int, document: TelemetryDocument) -> int:
    """The document's rank: lower is sampled first. 128 bits, so distinct documents never tie."""
    key = f"{seed}\x1f{document.app_id}\x1f{document.trace_id}\x1f{document.id}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=16).digest(), "big")


@dataclass(order=True)
class _Entry(Generic[T]):
    # heapq is a min-heap and the kept set must evict its largest priority: store it negated.
    negated: int
    item: T = field(compare=False)


class BottomK(Generic[T]):
    """The ``size`` offered items with the smallest priorities; memory is O(size)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.offered = 0
        self._heap: list[_Entry[T]] = []

    def offer(self, document: TelemetryDocument, item: T) -> None:
        self.offered += 1
        if self.size <= 0:
            return
        entry = _Entry(-priority(self.seed, document), item)
        if len(self._heap) < self.size:
            heapq.heappush(self._heap, entry)
        elif entry > self._heap[0]:
            # The same document offered twice has an equal key and is not taken again.
            heapq.heapreplace(self._heap, entry)

    def items(self) -> list[T]:
        """The sample, smallest priority first: the order the judge is called in, so a cost cap
        cuts the same documents on every run."""
        return [entry.item for entry in sorted(self._heap, reverse=True)]
