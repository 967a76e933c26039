"""Every numeric setting is refused at start when the code could not use it: infinity, NaN and
absurdly large values fail validation naming the setting, instead of an OverflowError (or a
quarantined stream) at run time."""

from __future__ import annotations

import math
import typing
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError
from typer.testing import CliRunner

from coldpath.policies.text.params import JudgeParams
from evalstream import wiring
from evalstream.cli import app
from evalstream.settings import Settings, SettingsError, load_settings
from schemas.bounds import MAX_DURATION_S

# Settings only compared with or scaled by measurements: any finite value works (a threshold
# of 1e300 never fires, a bound of 1e300 never binds), so only infinity and NaN are refused.
FINITE_ONLY = {
    "SloConfig.latency_threshold_ms",
    "BurnRateRule.factor",
    "DetectorConfig.adwin_min_effect",
    "DetectorConfig.scale_threshold",
    "DetectorConfig.scale_delta",
    "DetectorConfig.tail_sigmas",
    "DetectorConfig.page_hinkley_threshold",
    "DetectorConfig.page_hinkley_delta",
    "DetectorConfig.winsorize_sigma",
    "Bound.min",
    "Bound.max",
    # A rate: the larger, the less it limits (its lower bound keeps a wait finite).
    "Sender.events_per_s",
    "ApiKey.events_per_s",
    "EntraIdSettings.events_per_s",
}
# Any integer works: only its text is hashed (coldpath.policies.text.sampling.priority).
ANY_INTEGER = {"JudgeParams.seed"}
NUMBERS = (int, float, timedelta)
# Models validated from the settings although no field names them: a text metric's parameters
# (a policy's params table).
PARAMETER_MODELS: list[type] = [JudgeParams]


def _fields(cls: type) -> dict[str, Any]:
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return dict(cls.model_fields)
    return dict(getattr(cls, "__pydantic_fields__", {}))


def _classes(annotation: Any) -> Iterator[type]:
    if isinstance(annotation, type) and _fields(annotation):
        yield annotation
    for argument in typing.get_args(annotation):
        yield from _classes(argument)


def _number(annotation: Any) -> type | None:
    if annotation in NUMBERS:
        return typing.cast(type, annotation)
    for argument in typing.get_args(annotation):
        if (found := _number(argument)) is not None:
            return found
    return None


def numeric_settings() -> list[tuple[type, str, type]]:
    """Every int, float and timedelta field of every model the settings are made of."""
    found: list[tuple[type, str, type]] = []
    seen: set[type] = set()
    todo: list[type] = [Settings, *PARAMETER_MODELS]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        for name, field in _fields(cls).items():
            if (kind := _number(field.annotation)) is not None and kind is not bool:
                found.append((cls, name, kind))
            todo.extend(_classes(field.annotation))
    return sorted(found, key=lambda item: (item[0].__name__, item[1]))


def refusals(cls: type, name: str, value: Any) -> list[str]:
    """The messages of the errors validating ``value`` as ``name`` of ``cls`` gives at it."""
    try:
        TypeAdapter(cls).validate_python({name: value})
    except ValidationError as exc:
        return [error["msg"] for error in exc.errors() if error["loc"][:1] == (name,)]
    return []


SETTINGS = numeric_settings()


def test_the_walk_finds_the_settings_of_every_model() -> None:
    names = {f"{cls.__name__}.{name}" for cls, name, _ in SETTINGS}
    assert {
        "ProcessorSettings.lateness_s",
        "ProcessorSettings.max_future_skew_s",
        "EmbeddedSettings.retention_hours",
        "IngestSettings.max_request_bytes",
        "SubscriptionSpec.lock_duration_s",
        "DetectorConfig.tail_window",
        "ColdpathSettings.schedule_catch_up",
        "BatchSettings.max_wall_clock_time",
        "JudgeParams.max_tokens",
    } <= names
    assert FINITE_ONLY - names <= {"Sender.events_per_s"}


@pytest.mark.parametrize(
    ("cls", "name", "kind"), SETTINGS, ids=[f"{c.__name__}.{n}" for c, n, _ in SETTINGS]
)
def test_a_number_the_code_cannot_use_is_refused(cls: type, name: str, kind: type) -> None:
    if kind is timedelta:
        bad: list[Any] = [timedelta.max, timedelta(days=36_501)]
    elif kind is int:
        bad = [10**30, 2**63, math.inf, math.nan]
    elif f"{cls.__name__}.{name}" in FINITE_ONLY:
        bad = [math.inf, -math.inf, math.nan]
    else:
        bad = [1e300, 1e11, math.inf, math.nan]
    if f"{cls.__name__}.{name}" in ANY_INTEGER:
        bad = [math.inf, math.nan]
    for value in bad:
        assert refusals(cls, name, value), f"{cls.__name__}.{name} took {value!r}"


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("max_future_skew_s", "3e11"),
        ("max_future_skew_s", "inf"),
        ("lateness_s", "1e11"),
        ("lateness_s", "1e300"),
        ("lateness_s", "nan"),
        ("checkpoint_interval_s", "inf"),
    ],
)
def test_the_processor_refuses_them_at_start_naming_the_setting(
    tmp_path: Path, setting: str, value: str
) -> None:
    config = tmp_path / "evalstream.toml"
    config.write_text(f"[processor]\n{setting} = {value}\n")
    with pytest.raises(SettingsError, match=rf"processor\.{setting}: "):
        load_settings(config=config, data_dir=tmp_path)
    answer = CliRunner().invoke(
        app,
        ["process", "--config", str(config), "--data-dir", str(tmp_path), "--workers", "2"],
        env={"COLUMNS": "200"},
    )
    assert answer.exit_code == 2, answer.output
    assert f"processor.{setting}" in answer.output
    assert "Traceback" not in answer.output


def test_the_longest_durations_allowed_are_usable(tmp_path: Path) -> None:
    """At the bound, the decoder's skew and the pipeline's lateness still make datetimes."""
    settings = load_settings(
        data_dir=tmp_path,
        processor={"max_future_skew_s": MAX_DURATION_S, "lateness_s": MAX_DURATION_S},
    )
    skew = wiring.decoder(settings).limits.max_future_skew
    lateness = timedelta(seconds=settings.processor.lateness_s)
    assert datetime.now(UTC) + skew > datetime(2030, 1, 1, tzinfo=UTC)
    assert datetime(1970, 1, 1, tzinfo=UTC) - lateness < datetime(1970, 1, 1, tzinfo=UTC)
