"""The alert settings (``[alerts]`` in the config) and the subscription model shared by the
settings, the buses and the listener."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.dataclasses import dataclass

from common.names import check_named_once
from schemas import Breach, BreachKind, BreachState, Severity
from schemas.bounds import PositiveCount, PositiveSeconds
from schemas.telemetry import APP_ID_PATTERN, is_app_id

DEFAULT_MAX_DELIVERY_COUNT = 5
DEFAULT_LOCK_DURATION_S = 30.0
# The keys of ``Breach.routing_properties``: the only ones a subscription filter can use, with
# the values a breach can have (a filter matching none would never deliver anything).
ROUTING_VALUES: dict[str, tuple[str, ...]] = {
    "severity": tuple(Severity),
    "kind": tuple(BreachKind),
    "state": tuple(BreachState),
}
ROUTING_KEYS = frozenset({"app_id", *ROUTING_VALUES})


# A (pydantic) dataclass rather than a model: the buses and tests build subscriptions
# positionally, ``SubscriptionSpec("pager", {"severity": "critical"})``, and the settings
# validate the same class from TOML and the environment.
@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class SubscriptionSpec:
    """One subscription of the alert topic (``[[alerts.subscriptions]]``): which breaches it
    gets and how they are delivered.

    ``filter`` matches ``Breach.routing_properties`` exactly; every key must match (empty = all).
    An invalid value raises a ``ValueError`` (pydantic's ``ValidationError``).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    # Left out of the hash: a mapping is not hashable, the name identifies the subscription.
    filter: Mapping[str, str] = dataclasses.field(default_factory=dict, hash=False)
    max_delivery_count: PositiveCount = DEFAULT_MAX_DELIVERY_COUNT
    lock_duration_s: PositiveSeconds = DEFAULT_LOCK_DURATION_S

    @field_validator("filter")
    @classmethod
    def _known_keys(cls, filter_: Mapping[str, str]) -> Mapping[str, str]:
        unknown = set(filter_) - ROUTING_KEYS
        if unknown:
            raise ValueError(
                f"subscription filters on unknown keys {sorted(unknown)}; "
                f"known keys: {sorted(ROUTING_KEYS)}"
            )
        for key, value in filter_.items():
            values = ROUTING_VALUES.get(key)
            if values is not None and value not in values:
                raise ValueError(
                    f"{key} {value!r} is never a breach's, so the subscription would get "
                    f"nothing; one of: {', '.join(values)}"
                )
        app_id = filter_.get("app_id")
        if app_id is not None and not is_app_id(app_id):
            raise ValueError(f"app_id {app_id!r} is not an app id ({APP_ID_PATTERN})")
        return filter_

    def matches(self, breach: Breach) -> bool:
        properties = breach.routing_properties
        return all(properties.get(key) == value for key, value in self.filter.items())


class AlertSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    subscriptions: tuple[SubscriptionSpec, ...] = (SubscriptionSpec(name="all"),)

    @field_validator("subscriptions")
    @classmethod
    def _unique_names(cls, specs: tuple[SubscriptionSpec, ...]) -> tuple[SubscriptionSpec, ...]:
        # A subscription is its name on the bus: a second one would be the first, its filter
        # and delivery settings silently one of the two.
        check_named_once([spec.name for spec in specs], "subscription")
        return specs
