"""The judge sample: bounded, independent of paging, the same on every run."""

from __future__ import annotations

import hashlib

from coldpath.policies.text.sampling import BottomK
from tests.unit.coldpath.text_docs import text_doc


def rank(seed: int, app_id: str, trace_id: str, doc_id: str) -> int:
    key = f"{seed}\x1f{app_id}\x1f{trace_id}\x1f{doc_id}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=16).digest(), "big")


DOCS = [text_doc(i, f"answer {i}") for i in range(200)]


def sample(docs: list, size: int, seed: int = 0, page: int = 17) -> list[str]:  # type: ignore[type-arg]
    bottom: BottomK[str] = BottomK(size, seed)
    for start in range(0, len(docs), page):
        for doc in docs[start : start + page]:
            bottom.offer(doc, doc.id)
    assert bottom.offered == len(docs)
    return bottom.items()


def test_sample_is_the_smallest_hash_priorities_in_priority_order() -> None:
    by_rank = sorted(DOCS, key=lambda d: rank(0, d.app_id, d.trace_id, d.id))
    assert sample(DOCS, 10) == [d.id for d in by_rank[:10]]


def test_sample_does_not_depend_on_order_or_paging() -> None:
    assert sample(DOCS, 10) == sample(list(reversed(DOCS)), 10, page=3)


def test_seed_changes_the_sample_and_size_bounds_it() -> None:
    assert set(sample(DOCS, 10, seed=1)) != set(sample(DOCS, 10, seed=0))
    assert len(sample(DOCS, 500)) == 200
    assert sample(DOCS, 0) == []
