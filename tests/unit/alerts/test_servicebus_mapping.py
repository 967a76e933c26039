"""The Service Bus adapter's pure parts: message shape, error mapping, retry backoff."""

from __future__ import annotations

import pytest
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusAuthenticationError,
    ServiceBusConnectionError,
    ServiceBusServerBusyError,
)

from alerts.exceptions import AlertBusError, LockLostError
from alerts.ports import SubscriptionSpec
from alerts.servicebus import (
    CONTENT_TYPE,
    RetryPolicy,
    breach_message,
    correlation_filter,
    mapped_error,
)
from schemas import Breach, BreachKind, Severity
from tests.unit.alerts.factories import make_breach


def test_breach_message_carries_id_subject_routing_properties_and_json_body() -> None:
    breach = make_breach(7, app_id="a", severity=Severity.CRITICAL, kind=BreachKind.DRIFT)
    message = breach_message(breach)
    assert message.message_id == "breach-00007:opened"
    assert message.subject == "drift"
    assert message.content_type == CONTENT_TYPE
    assert message.application_properties == {
        "app_id": "a",
        "severity": "critical",
        "kind": "drift",
        "state": "opened",
    }
    assert Breach.model_validate_json(b"".join(message.body)) == breach


def test_correlation_filter_is_the_spec_filter() -> None:
    assert correlation_filter(SubscriptionSpec("all")) == {}
    spec = SubscriptionSpec("pager", filter={"severity": "critical", "app_id": "a"})
    assert correlation_filter(spec) == {"severity": "critical", "app_id": "a"}


@pytest.mark.parametrize(
    ("error", "expected", "retryable"),
    [
        (MessageLockLostError(message="gone"), LockLostError, False),
        (MessageAlreadySettled(action="complete"), LockLostError, False),
        (ServiceBusConnectionError(message="reset"), AlertBusError, True),
        (ServiceBusServerBusyError(message="busy"), AlertBusError, True),
        (OperationTimeoutError(message="slow"), AlertBusError, True),
        (ConnectionResetError("reset"), AlertBusError, True),
        (MessagingEntityNotFoundError(message="nope"), AlertBusError, False),
        (ServiceBusAuthenticationError(message="bad key"), AlertBusError, False),
    ],
)
def test_sdk_errors_map_to_alert_errors(
    error: Exception, expected: type[Exception], retryable: bool
) -> None:
    mapped = mapped_error(error, "doing it")
    assert type(mapped) is expected
    assert mapped.retryable is retryable
    assert str(mapped).startswith("doing it")


def test_backoff_grows_exponentially_up_to_the_cap_with_jitter_below() -> None:
    policy = RetryPolicy(backoff_initial_s=0.5, backoff_max_s=4.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (9, 4.0)]:
        delay = policy.backoff_s(attempt)
        assert 0.8 * ceiling <= delay <= ceiling


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"backoff_initial_s": -1.0},
        {"backoff_initial_s": 2.0, "backoff_max_s": 1.0},
        {"attempt_timeout_s": 0.0},
    ],
)
def test_retry_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
