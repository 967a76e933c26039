"""The subscriber loop: receive alerts from one subscription, hand each to a handler, settle it.

Handled → complete. Handler failed → wait an exponential backoff while keeping the lock, then
abandon, so the alert comes back later with a higher delivery count; at the subscription's max
delivery count → dead-letter with the handler's error. Alerts are handled concurrently, so one
poison alert (or one slow destination) never holds back the others. A handler that runs longer
than the lock gets its lock renewed.

``run()`` returns after ``stop()`` once the alerts in flight are settled; cancelling ``run()``
stops at once and hands the unsettled alerts back to the bus for prompt redelivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from alerts.config import DEFAULT_MAX_DELIVERY_COUNT
from alerts.exceptions import AlertError, LockLostError
from alerts.ports import AlertHandler, AlertReceiver, ReceivedAlert
from common.retry import Backoff, Stopped, retry, sleep_or_stop

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONCURRENCY = 8
DEFAULT_RECEIVE_WAIT_S = 1.0
# The pause before abandoning a failed delivery: 1, 2, 4, ... s up to a minute by delivery
# count, 90-100% of that so alerts that failed together (one webhook outage) spread out a little.
DEFAULT_BACKOFF = Backoff(initial_s=1.0, max_s=60.0, multiplier=2.0, jitter_fraction=0.1)
# Renew when this fraction of the lock duration is left: room for a slow renewal call.
RENEW_AT_REMAINING_FRACTION = 0.5
# How long a settlement after cancellation may take before we leave it to lock expiry.
RELEASE_TIMEOUT_S = 5.0


class AlertListener:
    """Receive → handle → complete for one subscription, until ``stop()`` or cancellation.

    ``max_delivery_count`` must be the subscription's own (``SubscriptionSpec``): on the
    delivery that reaches it a failing alert is dead-lettered with the handler's error
    instead of being abandoned. ``max_concurrency`` bounds handler calls at once; alerts waiting
    out their backoff do not take a handler slot, but count towards ``max_in_flight``
    (received and not yet settled; default twice the concurrency).
    """

    def __init__(
        self,
        receiver: AlertReceiver,
        handler: AlertHandler,
        *,
        max_delivery_count: int = DEFAULT_MAX_DELIVERY_COUNT,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_in_flight: int | None = None,
        receive_wait_s: float = DEFAULT_RECEIVE_WAIT_S,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        if max_delivery_count < 1:
            raise ValueError(f"max_delivery_count must be >= 1, got {max_delivery_count}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.receiver = receiver
        self.handler = handler
        self.max_delivery_count = max_delivery_count
        self.max_concurrency = max_concurrency
        self.max_in_flight = max(max_in_flight or 2 * max_concurrency, max_concurrency)
        self.receive_wait_s = receive_wait_s
        self.backoff = backoff
        # A failed receive (a busy bus) is retried after the first step of the backoff, or the
        # wait the error asks for, however often it fails: a pause, not a growing outage.
        self.receive_backoff = Backoff(
            initial_s=backoff.initial_s, max_s=backoff.initial_s, jitter=False
        )
        self._stopping = asyncio.Event()
        self._handler_slots = asyncio.Semaphore(max_concurrency)
        self._in_flight: set[asyncio.Task[None]] = set()
        self.completed = 0
        self.abandoned = 0
        self.dead_lettered = 0
        self._failures_seen: set[type[Exception]] = set()

    def stop(self) -> None:
        """Stop receiving; ``run()`` returns when the alerts in flight are settled.

        Alerts waiting out a backoff are abandoned right away rather than after the delay.
        """
        self._stopping.set()

    def backoff_s(self, delivery_count: int) -> float:
        """Delay before abandoning a failed delivery (the first delivery is 1)."""
        return self.backoff.delay(max(delivery_count - 1, 0))

    async def run(self) -> None:
        """Run until ``stop()``; then settle what is in flight and return."""
        async with asyncio.TaskGroup() as tasks:
            while not self._stopping.is_set():
                free = self.max_in_flight - len(self._in_flight)
                if free <= 0:
                    await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                alerts = await self._receive(free)
                for alert in alerts:
                    task = tasks.create_task(self._process(alert))
                    self._in_flight.add(task)
                    task.add_done_callback(self._in_flight.discard)

    async def _receive(self, max_count: int) -> list[ReceivedAlert]:
        # A busy bus is a pause, not a failure of the subscriber; stop() ends the pause.
        try:
            return await retry(
                lambda: self.receiver.receive(max_count, self.receive_wait_s),
                backoff=self.receive_backoff,
                what="receiving alerts",
                stop=self._stopping,
            )
        except Stopped:
            return []

    async def _process(self, alert: ReceivedAlert) -> None:
        renewal = _LockRenewal(self.receiver, alert)
        try:
            try:
                # Renewal first: an alert waiting for a handler slot must keep its lock too.
                async with renewal.running(), self._handler_slots:
                    await self.handler.handle(alert)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The supervision boundary of one alert: whatever the handler raised is
                # this alert's failure, never the listener's.
                await self._handler_failed(alert, exc, renewal)
                return
            if await self._settle(self.receiver.complete, alert):
                self.completed += 1
        except asyncio.CancelledError:
            # Cancelled mid-flight: hand the alert back now rather than at lock expiry.
            await self._release(alert)
            raise

    async def _handler_failed(
        self, alert: ReceivedAlert, exc: Exception, renewal: _LockRenewal
    ) -> None:
        # A destination that is down fails every alert the same way: one line per failure,
        # the traceback of the first failure of each kind at DEBUG.
        failure = f"{type(exc).__name__}: {exc}"
        if type(exc) not in self._failures_seen:
            self._failures_seen.add(type(exc))
            logger.debug(
                "alert %s: first %s from the handler",
                alert.message_id,
                type(exc).__name__,
                exc_info=exc,
            )
        if alert.delivery_count >= self.max_delivery_count:
            description = (
                f"{exc} (handler failed on delivery {alert.delivery_count} "
                f"of {self.max_delivery_count})"
            )
            reason = type(exc).__name__
            if await self._settle(self.receiver.dead_letter, alert, reason, description):
                self.dead_lettered += 1
                logger.error(
                    "alert %s dead-lettered: failed on its last delivery (%d of %d): %s",
                    alert.message_id,
                    alert.delivery_count,
                    self.max_delivery_count,
                    failure,
                    extra={"message_id": alert.message_id, "reason": reason},
                )
            return
        delay = self.backoff_s(alert.delivery_count)
        logger.warning(
            "alert %s failed on delivery %d of %d, retrying in %.2f s: %s",
            alert.message_id,
            alert.delivery_count,
            self.max_delivery_count,
            delay,
            failure,
            extra={"message_id": alert.message_id},
        )
        async with renewal.running():
            await sleep_or_stop(delay, self._stopping)
        if await self._settle(self.receiver.abandon, alert):
            self.abandoned += 1

    async def _settle(
        self,
        operation: Callable[..., Awaitable[None]],
        alert: ReceivedAlert,
        *args: str,
    ) -> bool:
        """Complete, abandon or dead-letter; a failure is logged, the bus redelivers later."""
        try:
            await operation(alert, *args)
        except asyncio.CancelledError:
            raise
        except LockLostError as exc:
            logger.warning("could not %s alert %s: %s", operation.__name__, alert.message_id, exc)
            return False
        except AlertError as exc:
            logger.error("could not %s alert %s: %s", operation.__name__, alert.message_id, exc)
            return False
        return True

    async def _release(self, alert: ReceivedAlert) -> None:
        release = asyncio.ensure_future(self.receiver.abandon(alert))
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                await asyncio.shield(release)
        except (AlertError, TimeoutError, asyncio.CancelledError) as exc:
            # Best effort while shutting down: the lock expires and the alert comes back.
            # Our caller re-raises its own CancelledError right after this returns.
            logger.debug("alert %s left to lock expiry: %r", alert.message_id, exc)


class _LockRenewal:
    """Keeps one alert's lock alive while the handler (or a backoff wait) runs."""

    def __init__(self, receiver: AlertReceiver, alert: ReceivedAlert) -> None:
        self.receiver = receiver
        self.alert = alert
        self.locked_until = alert.locked_until.timestamp()
        # The lock duration as granted; the time the receiver took is negligible against it.
        self.lock_duration_s = max(self.locked_until - time.time(), 0.0)
        self.lost = False

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self._renew_until_cancelled())
        try:
            yield
        finally:
            task.cancel()
            # wait() rather than awaiting the task: a cancellation of *our* caller must still
            # propagate, only the renewal task's own cancellation is expected here.
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:
                logger.error(
                    "lock renewal of alert %s crashed",
                    self.alert.message_id,
                    exc_info=task.exception(),
                )

    async def _renew_until_cancelled(self) -> None:
        while not self.lost:
            margin = self.lock_duration_s * RENEW_AT_REMAINING_FRACTION
            await asyncio.sleep(max(self.locked_until - margin - time.time(), 0.0))
            # A failed renewal is tried again shortly, until it succeeds or the lock is lost.
            pause = min(1.0, margin / 2)
            try:
                locked_until = await retry(
                    lambda: self.receiver.renew_lock(self.alert),
                    backoff=Backoff(initial_s=pause, max_s=pause, jitter=False),
                    what=f"renewing the lock of alert {self.alert.message_id}",
                    retryable=_renewal_may_succeed,
                )
            except LockLostError as exc:
                self.lost = True
                logger.warning("lock of alert %s lost: %s", self.alert.message_id, exc)
                continue
            self.locked_until = locked_until.timestamp()


def _renewal_may_succeed(exc: BaseException) -> bool:
    # Any bus error but a lost lock: the lock is probably still valid.
    return isinstance(exc, AlertError) and not isinstance(exc, LockLostError)
