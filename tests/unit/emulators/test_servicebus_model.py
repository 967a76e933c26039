"""Unit tests of the test broker's Service Bus entity model (no AMQP, a hand-driven clock)."""

from __future__ import annotations

import uuid

import pytest

from tests.emulators.amqp.servicebus_model import (
    MAX_DELIVERY_COUNT_EXCEEDED,
    CorrelationFilter,
    EntityAlreadyExists,
    EntityNotFound,
    InvalidOperation,
    MessageLockLost,
    MessageNotFound,
    Namespace,
    StoredMessage,
)


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ns(clock: FakeClock) -> Namespace:
    return Namespace(clock=clock)


def msg(message_id: str | None = None, **props: object) -> StoredMessage:
    return StoredMessage(payload=message_id, message_id=message_id, application_properties=props)


# ----------------------------------------------------------------------------- queues
def test_queue_peek_lock_complete_removes_message(ns: Namespace, clock: FakeClock) -> None:
    queue = ns.create_queue("q", lock_duration_s=30)
    assert queue.send(msg("a"))
    delivery = ns.store("q").receive()
    assert delivery is not None
    assert delivery.message.message_id == "a"
    assert delivery.message.sequence_number == 1
    assert delivery.message.delivery_count == 0
    assert delivery.message.enqueued_time == clock.now
    assert delivery.locked_until == clock.now + 30
    assert isinstance(delivery.lock_token, uuid.UUID)
    assert ns.store("q").counts() == {"active": 0, "locked": 1, "deferred": 0, "dead_lettered": 0}
    ns.store("q").complete(delivery.lock_token)
    assert ns.store("q").total_count() == 0
    assert ns.store("q").receive() is None


def test_queue_delivers_in_sequence_order_and_abandon_returns_to_front(ns: Namespace) -> None:
    queue = ns.create_queue("q")
    for name in ("a", "b", "c"):
        queue.send(msg(name))
    store = ns.store("q")
    first = store.receive()
    second = store.receive()
    assert first and second
    assert [first.message.message_id, second.message.message_id] == ["a", "b"]
    store.abandon(first.lock_token)  # type: ignore[arg-type]
    again = store.receive()
    assert again is not None
    assert again.message.message_id == "a"
    assert again.message.delivery_count == 1
    assert again.lock_token != first.lock_token


def test_settling_twice_or_with_unknown_token_is_lock_lost(ns: Namespace) -> None:
    ns.create_queue("q").send(msg("a"))
    store = ns.store("q")
    delivery = store.receive()
    assert delivery and delivery.lock_token
    store.complete(delivery.lock_token)
    with pytest.raises(MessageLockLost):
        store.complete(delivery.lock_token)
    with pytest.raises(MessageLockLost):
        store.abandon(uuid.uuid4())


def test_receive_and_delete_removes_without_lock(ns: Namespace) -> None:
    ns.create_queue("q").send(msg("a"))
    delivery = ns.store("q").receive(peek_lock=False)
    assert delivery is not None
    assert delivery.lock_token is None
    assert delivery.locked_until is None
    assert ns.store("q").total_count() == 0


def test_lock_expiry_redelivers_with_incremented_count(ns: Namespace, clock: FakeClock) -> None:
    ns.create_queue("q", lock_duration_s=5).send(msg("a"))
    store = ns.store("q")
    first = store.receive()
    assert first and first.lock_token
    assert store.next_lock_expiry() == clock.now + 5
    clock.advance(4.9)
    assert store.receive() is None
    clock.advance(0.2)
    second = store.receive()
    assert second is not None
    assert second.message.message_id == "a"
    assert second.message.delivery_count == 1
    with pytest.raises(MessageLockLost):
        store.complete(first.lock_token)


def test_renew_lock_extends_from_now(ns: Namespace, clock: FakeClock) -> None:
    ns.create_queue("q", lock_duration_s=10).send(msg("a"))
    store = ns.store("q")
    delivery = store.receive()
    assert delivery and delivery.lock_token
    clock.advance(8)
    renewed = store.renew_lock(delivery.lock_token)
    assert renewed == clock.now + 10
    clock.advance(8)  # past the first expiry, inside the renewed one
    assert store.receive() is None
    store.complete(delivery.lock_token)
    assert store.total_count() == 0
    with pytest.raises(MessageLockLost):
        store.renew_lock(delivery.lock_token)


def test_max_delivery_count_dead_letters(ns: Namespace) -> None:
    ns.create_queue("q", max_delivery_count=3).send(msg("a"))
    store = ns.store("q")
    counts = []
    for _ in range(3):
        delivery = store.receive()
        assert delivery and delivery.lock_token
        counts.append(delivery.message.delivery_count)
        store.abandon(delivery.lock_token)
    assert counts == [0, 1, 2]
    assert store.receive() is None
    dead = ns.store("q/$DeadLetterQueue").receive()
    assert dead is not None
    assert dead.message.message_id == "a"
    assert dead.message.dead_letter_reason == MAX_DELIVERY_COUNT_EXCEEDED
    assert dead.message.dead_letter_source == "q"
    assert dead.message.sequence_number == 1


def test_lock_expiry_counts_towards_max_delivery(ns: Namespace, clock: FakeClock) -> None:
    ns.create_queue("q", max_delivery_count=2, lock_duration_s=1).send(msg("a"))
    store = ns.store("q")
    for _ in range(2):
        assert store.receive() is not None
        clock.advance(1.5)
    assert store.receive() is None
    assert store.counts()["dead_lettered"] == 1


def test_release_does_not_count_as_delivery(ns: Namespace) -> None:
    ns.create_queue("q", max_delivery_count=1).send(msg("a"))
    store = ns.store("q")
    delivery = store.receive()
    assert delivery and delivery.lock_token
    store.release(delivery.lock_token)
    again = store.receive()
    assert again is not None
    assert again.message.delivery_count == 0


def test_dead_letter_with_reason_and_description(ns: Namespace) -> None:
    ns.create_queue("q").send(msg("a"))
    store = ns.store("q")
    delivery = store.receive()
    assert delivery and delivery.lock_token
    store.dead_letter_message(delivery.lock_token, "bad-shape", "field x missing")
    dlq = ns.store("Q/$deadletterqueue")  # names are case-insensitive
    assert dlq.peek(1, 10)[0].dead_letter_reason == "bad-shape"
    dead = dlq.receive()
    assert dead is not None
    assert dead.message.dead_letter_description == "field x missing"
    assert dead.message.delivery_count == 1
    with pytest.raises(InvalidOperation):
        dlq.dead_letter_message(dead.lock_token)  # type: ignore[arg-type]
    dlq.complete(dead.lock_token)  # type: ignore[arg-type]
    assert dlq.total_count() == 0


def test_defer_then_receive_by_sequence_number(ns: Namespace) -> None:
    queue = ns.create_queue("q")
    queue.send(msg("a"))
    queue.send(msg("b"))
    store = ns.store("q")
    first = store.receive()
    assert first and first.lock_token
    store.defer(first.lock_token)
    nxt = store.receive()
    assert nxt is not None
    assert nxt.message.message_id == "b"
    assert store.receive() is None  # deferred messages are not received normally
    assert store.deferred_count == 1
    with pytest.raises(MessageNotFound):
        store.receive_deferred([2])
    [deferred] = store.receive_deferred([1])
    assert deferred.message.message_id == "a"
    assert deferred.message.delivery_count == 1  # deferring counts as a delivery
    with pytest.raises(MessageNotFound):
        store.receive_deferred([1])  # already locked
    assert deferred.lock_token is not None
    store.abandon(deferred.lock_token)
    assert store.deferred_count == 1  # an abandoned deferred message stays deferred
    [again] = store.receive_deferred([1])
    assert again.message.delivery_count == 2
    store.complete(again.lock_token)  # type: ignore[arg-type]
    assert store.deferred_count == 0


def test_peek_includes_locked_and_deferred_without_locking(ns: Namespace) -> None:
    queue = ns.create_queue("q")
    for name in ("a", "b", "c", "d"):
        queue.send(msg(name))
    store = ns.store("q")
    locked = store.receive()
    deferred = store.receive()
    assert locked and deferred and deferred.lock_token
    store.defer(deferred.lock_token)
    peeked = store.peek(1, 10)
    assert [m.message_id for m in peeked] == ["a", "b", "c", "d"]
    assert [m.message_id for m in store.peek(3, 1)] == ["c"]
    assert store.counts() == {"active": 2, "locked": 1, "deferred": 1, "dead_lettered": 0}


def test_duplicate_detection_within_window(ns: Namespace, clock: FakeClock) -> None:
    queue = ns.create_queue("q", duplicate_window_s=60)
    assert queue.send(msg("a"))
    assert not queue.send(msg("a"))
    assert queue.send(msg(None))
    assert queue.send(msg(None))  # no message id: no duplicate detection
    clock.advance(61)
    assert queue.send(msg("a"))
    assert queue.duplicate_count == 1
    assert ns.store("q").active_count == 4


# ----------------------------------------------------------------------------- topics
def test_topic_fans_out_through_correlation_filters(ns: Namespace) -> None:
    topic = ns.create_topic("alerts")
    ns.create_subscription("alerts", "all")
    ns.create_subscription("alerts", "critical", filter={"severity": "critical"})
    ns.create_subscription("alerts", "drift-a", filter={"sys.subject": "drift", "app_id": "a"})
    ns.create_subscription("alerts", "by-corr", filter={"sys.correlation_id": "c-1"})
    ns.create_subscription("alerts", "by-id", filter={"sys.MessageId": "m3"})

    topic.send(
        StoredMessage(
            message_id="m1",
            subject="drift",
            application_properties={"severity": "critical", "app_id": "a"},
        )
    )
    topic.send(
        StoredMessage(
            message_id="m2",
            subject="latency",
            correlation_id="c-1",
            application_properties={"severity": "warning", "app_id": "a"},
        )
    )
    topic.send(
        StoredMessage(
            message_id="m3",
            subject="drift",
            application_properties={"severity": "warning", "app_id": "b"},
        )
    )

    def ids(sub: str) -> list[str | None]:
        return [m.message_id for m in ns.store(f"alerts/Subscriptions/{sub}").peek(1, 10)]

    assert ids("all") == ["m1", "m2", "m3"]
    assert ids("critical") == ["m1"]
    assert ids("drift-a") == ["m1"]
    assert ids("by-corr") == ["m2"]
    assert ids("by-id") == ["m3"]


def test_subscriptions_hold_independent_copies(ns: Namespace) -> None:
    topic = ns.create_topic("t")
    ns.create_subscription("t", "s1")
    ns.create_subscription("t", "s2")
    topic.send(msg("a"))
    s1 = ns.store("t/Subscriptions/s1")
    delivery = s1.receive()
    assert delivery and delivery.lock_token
    s1.abandon(delivery.lock_token)
    again = s1.receive()
    other = ns.store("t/Subscriptions/s2").receive()
    assert again and other
    assert again.message.delivery_count == 1
    assert other.message.delivery_count == 0
    assert other.message.sequence_number == again.message.sequence_number == 1


def test_topic_duplicate_detection_and_unmatched_messages(ns: Namespace) -> None:
    topic = ns.create_topic("t", duplicate_window_s=600)
    ns.create_subscription("t", "only-x", filter={"kind": "x"})
    assert topic.send(msg("1", kind="y"))  # accepted, but no subscription wants it
    assert topic.send(msg("2", kind="x"))
    assert not topic.send(msg("2", kind="x"))
    assert ns.store("t/Subscriptions/only-x").active_count == 1


def test_subscription_dead_letter_path(ns: Namespace) -> None:
    topic = ns.create_topic("t")
    ns.create_subscription("t", "s", max_delivery_count=1)
    topic.send(msg("a"))
    store = ns.store("t/Subscriptions/s")
    delivery = store.receive()
    assert delivery and delivery.lock_token
    store.abandon(delivery.lock_token)
    dead = ns.store("t/subscriptions/S/$DeadLetterQueue").receive()
    assert dead is not None
    assert dead.message.dead_letter_source == "t/Subscriptions/s"


def test_filter_value_forms() -> None:
    flt = CorrelationFilter({"flag": "true", "n": "3"})
    assert flt.matches(StoredMessage(application_properties={"flag": True, "n": 3}))
    assert not flt.matches(StoredMessage(application_properties={"flag": False, "n": 3}))
    assert not flt.matches(StoredMessage(application_properties={"n": 3}))
    assert CorrelationFilter().matches(StoredMessage())
    with pytest.raises(ValueError):
        CorrelationFilter({"sys.nope": "x"})


# ----------------------------------------------------------------------------- namespace
def test_namespace_addresses_and_errors(ns: Namespace) -> None:
    ns.create_queue("q")
    ns.create_topic("t")
    ns.create_subscription("t", "s")
    with pytest.raises(EntityAlreadyExists):
        ns.create_queue("Q")
    with pytest.raises(EntityAlreadyExists):
        ns.create_subscription("t", "S")
    with pytest.raises(EntityNotFound):
        ns.create_subscription("nope", "s")
    with pytest.raises(EntityNotFound):
        ns.store("t")  # a topic is not receivable
    with pytest.raises(EntityNotFound):
        ns.store("t/Subscriptions/other")
    assert ns.is_receivable("/q/")
    assert ns.is_sendable("T")
    assert not ns.is_sendable("t/Subscriptions/s")
    assert len(ns.all_stores()) == 4


def test_namespace_expire_locks_and_listeners(ns: Namespace, clock: FakeClock) -> None:
    ns.create_queue("q", lock_duration_s=2).send(msg("a"))
    store = ns.store("q")
    woken: list[str] = []
    store.add_listener(lambda s: woken.append(s.path))
    assert store.receive() is not None
    assert ns.next_lock_expiry() == clock.now + 2
    assert ns.expire_locks() == 0
    clock.advance(2)
    assert ns.expire_locks() == 1
    assert woken == ["q"]
    assert ns.next_lock_expiry() is None


# ----------------------------------------------------------------------------- wire helpers
# The translation between encoded AMQP messages and the model, and the management node's
# answers, checked without a network.
def _encoded(body: str, **fields: object) -> bytes:
    from proton import Message

    return bytes(Message(body=body.encode(), inferred=True, **fields).encode())


def test_parse_single_and_batch_transfers() -> None:
    from tests.emulators.amqp.codec import (
        BATCH_MESSAGE_FORMAT,
        SECTION_DATA,
        composite_value,
        encode_value,
    )
    from tests.emulators.amqp.servicebus_messages import parse_transfer

    one = _encoded(
        "a",
        id="m1",
        correlation_id="c1",
        subject="drift",
        properties={"severity": "critical"},
    )
    two = _encoded("b", id="m2")
    [single] = parse_transfer(one, 0)
    assert single.message_id == "m1"
    assert single.correlation_id == "c1"
    assert single.subject == "drift"
    assert single.application_properties == {"severity": "critical"}
    assert single.payload == one
    batch = b"".join(encode_value(composite_value(SECTION_DATA, part)) for part in (one, two))
    parsed = parse_transfer(batch, BATCH_MESSAGE_FORMAT)
    assert [m.message_id for m in parsed] == ["m1", "m2"]
    assert parsed[1].payload == two


def test_render_adds_broker_annotations_header_and_dead_letter_properties() -> None:
    from proton import Message, symbol

    from tests.emulators.amqp.servicebus_messages import render

    stored = StoredMessage(
        payload=_encoded("x", id="m1", properties={"k": "v"}),
        sequence_number=7,
        enqueued_time=1_700_000_000.5,
        delivery_count=2,
        dead_letter_reason="bad",
        dead_letter_description="very bad",
        dead_letter_source="q",
    )
    out = Message()
    out.decode(render(stored, locked_until=1_700_000_030.25))
    assert out.id == "m1"
    assert out.body == b"x"
    assert out.delivery_count == 2
    assert out.annotations[symbol("x-opt-sequence-number")] == 7
    assert out.annotations[symbol("x-opt-enqueued-time")] == 1_700_000_000_500
    assert out.annotations[symbol("x-opt-locked-until")] == 1_700_000_030_250
    assert out.annotations[symbol("x-opt-deadletter-source")] == "q"
    assert out.properties == {
        "k": "v",
        "DeadLetterReason": "bad",
        "DeadLetterErrorDescription": "very bad",
    }


def test_management_renew_peek_receive_deferred_and_update_disposition(
    ns: Namespace, clock: FakeClock
) -> None:
    from proton import Array, Message

    from tests.emulators.amqp.servicebus_management import (
        PEEK_MESSAGE,
        RECEIVE_BY_SEQUENCE_NUMBER,
        RENEW_LOCK,
        UPDATE_DISPOSITION,
        handle_request,
    )

    queue = ns.create_queue("q", lock_duration_s=10)
    store = ns.store("q")
    assert handle_request(store, PEEK_MESSAGE, {"from-sequence-number": 1}).status_code == 204
    queue.send(StoredMessage(payload=_encoded("a", id="a"), message_id="a"))
    queue.send(StoredMessage(payload=_encoded("b", id="b"), message_id="b"))

    peek = handle_request(store, PEEK_MESSAGE, {"from-sequence-number": 2, "message-count": 5})
    assert peek.status_code == 200
    assert peek.body is not None
    [entry] = peek.body["messages"]
    decoded = Message()
    decoded.decode(entry["message"])
    assert decoded.id == "b"

    first = store.receive()
    assert first and first.lock_token
    clock.advance(5)
    renew = handle_request(store, RENEW_LOCK, {"lock-tokens": [first.lock_token]})
    assert renew.status_code == 200
    assert renew.body is not None
    expirations = renew.body["expirations"]
    assert isinstance(expirations, Array)
    assert list(expirations.elements) == [round((clock.now + 10) * 1000)]

    store.defer(first.lock_token)
    deferred = handle_request(
        store, RECEIVE_BY_SEQUENCE_NUMBER, {"sequence-numbers": [1], "receiver-settle-mode": 1}
    )
    assert deferred.status_code == 200
    assert deferred.body is not None
    [entry] = deferred.body["messages"]
    token = entry["lock-token"]
    done = handle_request(
        store,
        UPDATE_DISPOSITION,
        {
            "disposition-status": "suspended",
            "lock-tokens": [token],
            "deadletter-reason": "r",
            "deadletter-description": "d",
        },
    )
    assert done.status_code == 200
    [dead] = ns.store("q/$DeadLetterQueue").peek(1, 10)
    assert (dead.message_id, dead.dead_letter_reason, dead.dead_letter_description) == (
        "a",
        "r",
        "d",
    )

    lost = handle_request(
        store, UPDATE_DISPOSITION, {"disposition-status": "completed", "lock-tokens": [token]}
    )
    assert lost.status_code == 410
    assert lost.application_properties()["errorCondition"] == "com.microsoft:message-lock-lost"
    missing = handle_request(store, RECEIVE_BY_SEQUENCE_NUMBER, {"sequence-numbers": [99]})
    assert missing.status_code == 404
    assert handle_request(store, "com.microsoft:schedule-message", {}).status_code == 501
