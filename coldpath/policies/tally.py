"""Counts per category with a bounded number of categories.

A categorical field can have any number of distinct values (a metadata tag holding request ids,
say); past ``limit`` distinct categories, new ones are counted together under ``OTHER``, so the
state stays bounded. Categories first seen early keep their own count, whatever the paging.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable

OTHER = "_other"
DEFAULT_LIMIT = 1000


class BoundedCounts:
    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self.counts: dict[Hashable, int] = {}
        self.total = 0

    def add(self, values: Iterable[Hashable]) -> None:
        # Counter counts in C; the per-category merge below runs once per distinct value.
        counts = self.counts
        for key, count in Counter(values).items():
            self.total += count
            if key in counts:
                counts[key] += count
            elif len(counts) < self.limit:
                counts[key] = count
            else:
                counts[OTHER] = counts.get(OTHER, 0) + count
