"""The Service Bus adapter's pure parts: message shape, error mapping, the publisher's backoff."""

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
from pydantic import SecretStr

from alerts.config import SubscriptionSpec
from alerts.exceptions import AlertBusError, LockLostError
from alerts.servicebus import CONTENT_TYPE, breach_message, correlation_filter, mapped_error
from alerts.servicebus_config import ServiceBusSettings
from alerts.servicebus_publisher import DEFAULT_BACKOFF, ServiceBusAlertPublisher
from schemas import Breach, BreachKind, Severity
from tests.unit.alerts.factories import make_breach

CONNECTION = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=a2V5"


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


def test_publisher_backoff_grows_exponentially_up_to_the_cap_with_jitter_below() -> None:
    assert DEFAULT_BACKOFF.max_retries == 7  # eight attempts
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        delay = DEFAULT_BACKOFF.delay(attempt)
        assert 0.8 * ceiling <= delay <= ceiling


def test_publisher_rejects_a_nonsense_attempt_timeout() -> None:
    with pytest.raises(ValueError, match="attempt_timeout_s"):
        ServiceBusAlertPublisher(
            ServiceBusSettings(connection_string=SecretStr(CONNECTION)), attempt_timeout_s=0.0
        )


def test_a_namespace_is_named_without_a_key_pasted_into_it() -> None:
    """A connection string set as fully_qualified_namespace was named whole in the errors of a
    missing topic or subscription, its SharedAccessKey with it."""
    pasted = (
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=root;"
        "SharedAccessKey=s3cr3tK3y="
    )
    # Settings made without their checks (which refuse it), as a program using the bus may.
    settings = ServiceBusSettings.model_construct(fully_qualified_namespace=pasted)
    publisher = ServiceBusAlertPublisher(settings)
    assert publisher.where == "sb://ns.servicebus.windows.net"
    named = ServiceBusSettings(fully_qualified_namespace="ns.servicebus.windows.net")
    assert ServiceBusAlertPublisher(named).where == "ns.servicebus.windows.net"
