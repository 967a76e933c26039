"""How ``replay --workers`` shares a job's partitions out: balanced by what is left of each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from evalstream.replay_pool import rates, split
from stream.replay.ports import PartitionPlan


def plan(partition: str, after: int, last: int) -> PartitionPlan:
    return PartitionPlan(partition, after, last)


def test_every_partition_goes_to_one_worker_heaviest_first() -> None:
    # The bench stream's four partitions (7.5 / 12.8 / 47.5 / 32.2 % of the events).
    plans = [(plan("0", -1, 750), -1), (plan("1", -1, 1280), -1)]
    plans += [(plan("2", -1, 4750), -1), (plan("3", -1, 3220), -1)]
    groups = split(plans, 2)
    # 47.5 % against 52.5 %: the heaviest alone, the three others together.
    assert [[p.partition for p, _ in group] for group in groups] == [["2"], ["0", "1", "3"]]
    assert sorted((pair for group in groups for pair in group), key=str) == sorted(plans, key=str)


def test_what_is_left_counts_not_the_plans_size() -> None:
    # Partition 0 is mostly read (a resumed job): the two others are the heavy ones.
    plans = [(plan("0", 0, 1000), 990), (plan("1", 0, 600), 0), (plan("2", 0, 500), 0)]
    groups = split(plans, 2)
    assert [[p.partition for p, _ in group] for group in groups] == [["1"], ["0", "2"]]


def test_never_more_workers_than_partitions_nor_an_empty_share() -> None:
    plans = [(plan("a.ndjson", 0, 10), 0), (plan("b.ndjson", 0, 20), 0)]
    groups = split(plans, 8)
    assert len(groups) == 2 and all(groups)
    assert split(plans[:1], 3) == [plans[:1]]


@pytest.mark.parametrize(("mode", "parts"), [("reprocess", 4), ("shadow", 1), ("both", 1)])
def test_only_a_reprocess_job_cuts_files_for_its_workers(
    tmp_path: Path, mode: str, parts: int
) -> None:
    from evalstream.settings import load_settings
    from evalstream.wiring import replay as replay_wiring
    from stream.replay.readers.ndjson import NdjsonReader
    from stream.replay.spec import Mode, ReplaySpec, SourceKind

    now = datetime.now(UTC)
    spec = ReplaySpec(
        id="j", created=now, source=SourceKind.NDJSON, paths=["a.ndjson"], start=now,
        end=now + timedelta(hours=1), mode=Mode(mode),
    )  # fmt: skip
    reader = replay_wiring.reader(load_settings(embedded={"data_dir": tmp_path}), spec, workers=4)
    # Detection reads each file whole, in its order: its files are never cut.
    assert isinstance(reader, NdjsonReader) and reader.parts == parts


def test_a_rate_limit_is_shared_by_what_each_worker_has_left() -> None:
    heavy = [(plan("2", -1, 4750), -1)]
    light = [(plan("0", -1, 750), -1), (plan("1", -1, 1280), 1000)]  # 751 + 280 left
    shared = rates([heavy, light], 1000.0)
    # In proportion, so both finish together; together at the limit.
    assert shared == pytest.approx([1000 * 4751 / 5782, 1000 * 1031 / 5782])
    assert sum(s for s in shared if s is not None) == pytest.approx(1000.0)
    assert rates([heavy, light], None) == [None, None]
