"""Shard planning: the sorted unit list of a window, its shards, and the frozen manifest.

Units are (app_id, policy) pairs sorted by (policy, app_id); shard ``i`` of size ``g`` holds
units ``[i·g, (i+1)·g)``. The manifest freezes the list, so apps that appear while a job runs
never shift shards, and its id hashes its content, so the same inputs give the same job.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from schemas.evaluation import EvaluationPolicy, JobManifest, Unit, Window


def plan_units(policies: Sequence[EvaluationPolicy], app_ids: Iterable[str]) -> tuple[Unit, ...]:
    """Every (app, policy) pair the policies apply to, sorted deterministically."""
    apps = sorted(set(app_ids))
    units = {
        Unit(app_id=app_id, policy=policy.name)
        for policy in policies
        for app_id in apps
        if policy.applies_to(app_id)
    }
    return tuple(sorted(units, key=Unit.sort_key))


def build_manifest(
    window: Window,
    policies: Sequence[EvaluationPolicy],
    app_ids: Iterable[str],
    *,
    group_size: int,
    code_version: str,
    run: int = 0,
) -> JobManifest:
    """The manifest of one window; policies are kept sorted by name so order never matters."""
    ordered = tuple(sorted(policies, key=lambda policy: policy.name))
    return JobManifest(
        window=window,
        policies=ordered,
        units=plan_units(ordered, app_ids),
        group_size=group_size,
        code_version=code_version,
        run=run,
    )
