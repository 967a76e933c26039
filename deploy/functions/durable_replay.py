"""A small stand-in for the Durable Task host, for tests: runs an orchestration of the function
app the way the extension does, episode by episode, by replaying its history.

Each episode hands the registered orchestrator function the context JSON the host sends
(``history`` from ``OrchestratorStarted``/``ExecutionStarted`` on) and reads back the actions it
asks for. New activity calls are scheduled (``TaskScheduled``), run for real through the
worker's activity converters, and their ``TaskCompleted``/``TaskFailed`` events delivered in
the next episode. A failed call with retry options gets a ``TimerCreated``/``TimerFired`` pair
and then a new ``TaskScheduled``, as the host's retry does; retry timers fire at once (the
delay is recorded, not waited). Event ids follow the SDK's sequence: actions in the order
yielded, a timer when a failure is delivered, a rescheduled call when its timer fires.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from azure.functions import meta
from azure.functions.durable_functions import ActivityTriggerConverter

TASK_SCHEDULED = 4
TASK_COMPLETED = 5
TASK_FAILED = 6
TIMER_CREATED = 10
TIMER_FIRED = 11
ORCHESTRATOR_STARTED = 12
ORCHESTRATOR_COMPLETED = 13
EXECUTION_STARTED = 0
CALL_ACTIVITY = 0
CALL_ACTIVITY_WITH_RETRY = 1
MAX_EPISODES = 1000


class OrchestrationFailed(Exception):
    """The orchestrator function raised (the host would mark the instance failed)."""


@dataclass
class _Call:
    event_id: int
    name: str
    input: str | None
    retry: dict[str, int] | None
    attempt: int = 1


@dataclass
class ReplayHost:
    """Runs orchestrations over ``functions`` (user functions by name, from the app's
    ``get_functions()``, which an app answers once); ``attempts`` counts activity runs by
    (name, input)."""

    functions: Mapping[str, Callable[..., Any]]
    episodes: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    attempts: dict[tuple[str, str | None], int] = field(default_factory=dict)
    timer_delays: list[timedelta] = field(default_factory=list)
    _next_id: int = 0

    def function(self, name: str) -> Callable[..., Any]:
        return self.functions[name]

    def replay(self, orchestrator: str, instance_id: str) -> dict[str, Any]:
        """One episode over the current history: the orchestrator's state (actions, output)."""
        context = {
            "history": self.history,
            "instanceId": instance_id,
            "isReplaying": False,
            "parentInstanceId": None,
            "input": None,
        }
        handle = self.function(orchestrator)
        try:
            state = handle(json.dumps(context))
        except Exception as exc:
            raise OrchestrationFailed(str(exc)) from exc
        self.episodes += 1
        return json.loads(state)  # type: ignore[no-any-return]

    async def run(
        self, orchestrator: str, started_at: datetime, instance_id: str = "test-instance"
    ) -> Any:
        """Drive ``orchestrator`` to completion; its output."""
        clock = started_at
        self.history = [
            _event(ORCHESTRATOR_STARTED, -1, clock),
            _event(EXECUTION_STARTED, -1, clock, Name=orchestrator, Input=None, Version=""),
        ]
        self._next_id = 0
        seen_actions = 0
        to_run: list[_Call] = []  # scheduled: they complete in the next episode
        to_fire: list[tuple[int, _Call]] = []  # retry timers: they fire in the next episode
        for _ in range(MAX_EPISODES):
            state = self.replay(orchestrator, instance_id)
            if state.get("isDone"):
                return state.get("output")
            actions = [action for group in state["actions"] for action in group]
            new_actions, seen_actions = actions[seen_actions:], len(actions)
            for action in new_actions:
                if action["actionType"] not in (CALL_ACTIVITY, CALL_ACTIVITY_WITH_RETRY):
                    raise NotImplementedError(f"action {action['actionType']} not simulated")
                call = _Call(
                    self._take_id(),
                    action["functionName"],
                    action.get("input"),
                    action.get("retryOptions"),
                )
                self.history.append(
                    _event(TASK_SCHEDULED, call.event_id, clock, Name=call.name, Input=call.input)
                )
                to_run.append(call)
            if not to_run and not to_fire:
                raise OrchestrationFailed("the orchestrator waits for nothing the host delivers")
            self.history.append(_event(ORCHESTRATOR_COMPLETED, -1, clock))

            # The next episode: due timers fire, then scheduled calls complete, in that order
            # (the order in which the SDK numbers the timers and retries they cause).
            clock += timedelta(seconds=1)
            self.history.append(_event(ORCHESTRATOR_STARTED, -1, clock))
            next_run: list[_Call] = []
            next_fire: list[tuple[int, _Call]] = []
            for timer_id, call in to_fire:
                self.history.append(_event(TIMER_FIRED, -1, clock, TimerId=timer_id))
                assert call.retry is not None
                # The SDK waits for one timer after the last attempt too, then fails the task.
                if call.attempt < call.retry["maxNumberOfAttempts"]:
                    next_run.append(
                        _Call(self._take_id(), call.name, call.input, call.retry, call.attempt + 1)
                    )
            for call in to_run:
                event, failed = await self._execute(call, clock)
                self.history.append(event)
                if failed and call.retry is not None:
                    next_fire.append((self._take_id(), call))
            # What the host records for this episode's retries: timers and rescheduled calls.
            for timer_id, call in next_fire:
                assert call.retry is not None
                delay = timedelta(milliseconds=call.retry["firstRetryIntervalInMilliseconds"])
                self.timer_delays.append(delay)
                self.history.append(
                    _event(TIMER_CREATED, timer_id, clock, FireAt=_iso(clock + delay))
                )
            for call in next_run:
                self.history.append(
                    _event(TASK_SCHEDULED, call.event_id, clock, Name=call.name, Input=call.input)
                )
            to_run, to_fire = next_run, next_fire
        raise OrchestrationFailed(f"not done after {MAX_EPISODES} episodes")

    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    async def _execute(self, call: _Call, clock: datetime) -> tuple[dict[str, Any], bool]:
        """Run the activity as the worker does; its completion or failure event."""
        key = (call.name, call.input)
        self.attempts[key] = self.attempts.get(key, 0) + 1
        activity: Callable[[Any], Awaitable[Any]] = self.function(call.name)
        payload = ActivityTriggerConverter.decode(
            meta.Datum(type="json", value=call.input), trigger_metadata={}
        )
        try:
            result = await activity(payload)
        except Exception as exc:
            return (
                _event(
                    TASK_FAILED,
                    -1,
                    clock,
                    TaskScheduledId=call.event_id,
                    Reason=str(exc),
                    Details="".join(traceback.format_exception_only(exc)),
                ),
                True,
            )
        encoded = ActivityTriggerConverter.encode(result, expected_type=None)
        return (
            _event(TASK_COMPLETED, -1, clock, TaskScheduledId=call.event_id, Result=encoded.value),
            False,
        )


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _event(kind: int, event_id: int, at: datetime, **fields: Any) -> dict[str, Any]:
    return {
        "EventType": kind,
        "EventId": event_id,
        "IsPlayed": False,
        "Timestamp": _iso(at),
        **fields,
    }
