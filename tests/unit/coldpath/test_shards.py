from __future__ import annotations

from datetime import UTC, datetime

import pytest

from coldpath.shards import build_manifest, plan_units
from schemas import EvaluationPolicy, JobManifest, Unit, Window

WINDOW = Window(
    start=datetime(2026, 3, 1, 10, tzinfo=UTC), end=datetime(2026, 3, 1, 11, tzinfo=UTC)
)


def policy(name: str, apps: str | tuple[str, ...] = "all") -> EvaluationPolicy:
    return EvaluationPolicy.model_validate(
        {"name": name, "apps": apps, "metrics": [{"metric": "latency"}]}
    )


def test_units_sorted_by_policy_then_app_and_filtered_by_apps() -> None:
    units = plan_units([policy("b"), policy("a", ("app-2",))], ["app-3", "app-1", "app-2", "app-1"])
    assert [(u.policy, u.app_id) for u in units] == [
        ("a", "app-2"),
        ("b", "app-1"),
        ("b", "app-2"),
        ("b", "app-3"),
    ]


def test_shard_i_holds_units_i_g_to_i_plus_1_g() -> None:
    apps = [f"app-{n:02d}" for n in range(7)]
    manifest = build_manifest(WINDOW, [policy("q")], apps, group_size=3, code_version="1")
    assert manifest.shard_count == 3
    assert [u.app_id for u in manifest.shard(0)] == apps[0:3]
    assert [u.app_id for u in manifest.shard(2)] == apps[6:7]
    with pytest.raises(ValueError, match="group index"):
        manifest.shard(3)


def test_same_inputs_same_manifest_id_and_any_change_a_new_one() -> None:
    first = build_manifest(
        WINDOW, [policy("b"), policy("a")], ["x", "y"], group_size=2, code_version="1"
    )
    same = build_manifest(
        WINDOW, [policy("a"), policy("b")], ["y", "x"], group_size=2, code_version="1"
    )
    assert first.id == same.id
    assert JobManifest.model_validate_json(first.model_dump_json()).id == first.id
    variants = [
        build_manifest(WINDOW, [policy("a")], ["x", "y"], group_size=2, code_version="1"),
        build_manifest(WINDOW, [policy("a"), policy("b")], ["x"], group_size=2, code_version="1"),
        build_manifest(
            WINDOW, [policy("a"), policy("b")], ["x", "y"], group_size=1, code_version="1"
        ),
        build_manifest(
            WINDOW, [policy("a"), policy("b")], ["x", "y"], group_size=2, code_version="2"
        ),
        build_manifest(
            WINDOW, [policy("a"), policy("b")], ["x", "y"], group_size=2, code_version="1", run=1
        ),
    ]
    assert len({first.id, *(variant.id for variant in variants)}) == 6


def test_a_manifest_whose_id_does_not_match_its_content_is_refused() -> None:
    manifest = build_manifest(WINDOW, [policy("a")], ["x"], group_size=2, code_version="1")
    data = manifest.model_dump(mode="json")
    data["units"].append({"app_id": "y", "policy": "a"})
    with pytest.raises(ValueError, match="does not match"):
        JobManifest.model_validate(data)


def test_unit_key_is_stable() -> None:
    assert Unit(app_id="a", policy="p").key == "a\x1fp"
