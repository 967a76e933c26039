"""Breach lifecycle: one open breach per detector, hysteresis, no storms, exact ids."""

from __future__ import annotations

from datetime import UTC, timedelta, timezone
from typing import Any, Self

import orjson

from schemas.breach import BreachKind, BreachState, Severity, breach_id_for
from stream.hotpath.lifecycle import BreachTracker
from stream.hotpath.page_hinkley import PageHinkley

from .streams import T0, document, normal, shifted, trace_id


class Scripted:
    """A detector whose alarms and offending values are given in advance."""

    name = "scripted"
    kind = BreachKind.DRIFT
    severity = Severity.WARNING
    observed = 2.0
    baseline = 1.0
    limit = None
    window_id: str | None = None

    def __init__(self, alarms: set[int], offending: set[int] | None = None) -> None:
        self._alarms = alarms
        self._offending = offending or set()
        self._i = -1

    def update(self, x: float, t: float) -> Self:
        self._i += 1
        return self

    @property
    def alarm(self) -> bool:
        return self._i in self._alarms

    @property
    def offending(self) -> bool:
        return self._i in self._offending

    @property
    def window_start(self) -> float:
        return T0

    def describe(self) -> str:
        return "scripted"

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass


def drive(
    detector: Scripted, tracker: BreachTracker, count: int, step: float = 1.0
) -> list[tuple[int, str, str]]:
    out = []
    for i in range(count):
        detector.update(0.0, T0 + step * i)
        doc = document(i, seconds=step * i)
        breach = tracker.step(detector, T0 + step * i, doc, [doc.trace_id])  # type: ignore[arg-type]
        if breach is not None:
            out.append((i, breach.state.value, breach.breach_id))
    return out


def test_a_storm_of_alarms_is_one_breach() -> None:
    tracker = BreachTracker("app-a", "x", quiet_events=10, quiet_seconds=0)
    found = drive(Scripted({5, 6, 8, 12, 20}), tracker, 100)
    opened_id = breach_id_for("app-a", "x", "scripted", "app-a-doc-5")
    # Opens on the first alarm; resolves after 10 quiet updates following the last one.
    assert found == [(5, "opened", opened_id), (30, "resolved", opened_id)]


def test_a_new_incident_after_resolution_is_a_new_breach() -> None:
    tracker = BreachTracker("app-a", "x", quiet_events=10, quiet_seconds=0)
    found = drive(Scripted({5, 50}), tracker, 100)
    assert [(i, s) for i, s, _ in found] == [
        (5, "opened"),
        (15, "resolved"),
        (50, "opened"),
        (60, "resolved"),
    ]
    assert found[0][2] != found[2][2]


def test_resolution_waits_for_quiet_event_time_too() -> None:
    tracker = BreachTracker("app-a", "x", quiet_events=1, quiet_seconds=600)
    found = drive(Scripted({3}), tracker, 200, step=10.0)
    assert [(i, s) for i, s, _ in found] == [(3, "opened"), (63, "resolved")]


def test_breach_carries_the_last_ten_samples_it_is_given() -> None:
    tracker = BreachTracker("app-a", "x", quiet_events=1, quiet_seconds=0)
    detector = Scripted({0})
    detector.update(0.0, T0)
    samples = [f"trace-{i}" for i in range(25)]
    opened = tracker.step(detector, T0, document(0), samples)  # type: ignore[arg-type]
    assert opened is not None
    assert opened.state is BreachState.OPENED
    assert opened.sample_trace_ids == samples[-10:]
    assert opened.observed == 2.0
    assert opened.baseline == 1.0


def test_state_round_trip_keeps_the_open_breach() -> None:
    tracker = BreachTracker("app-a", "x", quiet_events=10, quiet_seconds=0)
    detector = Scripted({5})
    drive(detector, tracker, 8)
    assert tracker.open is not None
    restored = BreachTracker("app-a", "x", quiet_events=10, quiet_seconds=0)
    restored.load_state(tracker.state())
    assert restored.open == tracker.open
    assert restored.state() == tracker.state()


class Described(Scripted):
    """A scripted detector whose message is made from arguments, as the shipped ones are."""

    def __init__(self, alarms: set[int]) -> None:
        super().__init__(alarms)
        self.message_args: list[Any] = [0.25, 7]

    @staticmethod
    def format_message(args: list[Any]) -> str:
        return f"shift {args[0]:+.2f} after {args[1]} values"

    def describe(self) -> str:
        return self.format_message(self.message_args)


def drive_hex(detector: Scripted, tracker: BreachTracker, count: int, zone: timezone = UTC) -> None:
    for i in range(count):
        detector.update(0.0, T0 + i)
        doc = document(i).model_copy(update={"timestamp": document(i).timestamp.astimezone(zone)})
        samples = [trace_id(k) for k in range(max(0, i - 11), i + 1)]
        tracker.step(detector, T0 + i, doc, samples)  # type: ignore[arg-type]


def test_compact_state_restores_the_open_breach_exactly() -> None:
    detector = Described({5})
    tracker = BreachTracker("app-a", "x", quiet_events=10, quiet_seconds=0)
    drive_hex(detector, tracker, 8)
    assert tracker.open is not None
    detector.message_args = [3.5, 99]  # the detector moved on since the breach opened
    state = orjson.loads(orjson.dumps(tracker.state(detector)))  # type: ignore[arg-type]
    # Compact: a list, the message as its arguments, no key names, no hex text.
    assert isinstance(state[2], list)
    assert state[2][-1] == [0.25, 7]
    assert len(orjson.dumps(state)) < len(orjson.dumps(tracker.state())) / 2
    restored = BreachTracker("app-a", "x", quiet_events=10, quiet_seconds=0)
    restored.load_state(state, detector)  # type: ignore[arg-type]
    assert restored.open is not None
    assert restored.open.model_dump(mode="json") == tracker.open.model_dump(mode="json")
    assert restored.open.message == "shift +0.25 after 7 values"
    assert restored.state(detector) == state  # type: ignore[arg-type]


def test_compact_state_keeps_what_it_cannot_rebuild() -> None:
    # A detector without message arguments: the text is kept.
    detector = Scripted({5})
    tracker = BreachTracker("app-a", "x", quiet_events=10, quiet_seconds=0)
    drive_hex(detector, tracker, 8)
    state = orjson.loads(orjson.dumps(tracker.state(detector)))  # type: ignore[arg-type]
    assert state[2][-1] == "scripted"
    restored = BreachTracker("app-a", "x", quiet_events=10, quiet_seconds=0)
    restored.load_state(state, detector)  # type: ignore[arg-type]
    assert restored.open == tracker.open
    # Event times in another zone than UTC: the full breach, so its JSON does not change.
    detector = Scripted({5})
    tracker = BreachTracker("app-a", "x", quiet_events=10, quiet_seconds=0)
    drive_hex(detector, tracker, 8, zone=timezone(timedelta(hours=2)))
    state = orjson.loads(orjson.dumps(tracker.state(detector)))  # type: ignore[arg-type]
    assert isinstance(state[2], dict)
    restored = BreachTracker("app-a", "x", quiet_events=10, quiet_seconds=0)
    restored.load_state(state, detector)  # type: ignore[arg-type]
    assert restored.open is not None and tracker.open is not None
    assert restored.open.model_dump_json() == tracker.open.model_dump_json()
    assert restored.open.opened_at.utcoffset() == timedelta(hours=2)


class TestHeldWhileShifted:
    """A drift breach stays open while its detector's relearnt baseline is still away from
    the one it fired against: one breach for one long regression."""

    @staticmethod
    def follow(
        values: list[float], hold: int, cuts: set[int] | frozenset[int] = frozenset()
    ) -> list[tuple[int, str]]:
        """Breach messages of a Page-Hinkley detector (resolving after 500 quiet values) fed
        ``values``; at each cut the detector and tracker are rebuilt from their JSON state."""

        def fresh() -> tuple[PageHinkley, BreachTracker]:
            detector = PageHinkley(threshold=25.0, delta=0.25, alpha=1.0)
            return detector, BreachTracker("app-a", "x", 500, 0, hold_events=hold)

        detector, tracker = fresh()
        found = []
        for i, x in enumerate(values):
            if i in cuts:
                saved = orjson.loads(orjson.dumps([detector.state(), tracker.state(detector)]))
                detector, tracker = fresh()
                detector.load_state(saved[0])
                tracker.load_state(saved[1], detector)
            detector.update(x, T0 + i)
            if detector.alarm or tracker.open is not None:
                breach = tracker.step(detector, T0 + i, document(i), [])
                if breach is not None:
                    found.append((i, breach.state.value))
        return found

    # 2000 values at the baseline, 3000 two deviations up, 3000 back at the baseline.
    REGRESSION = shifted(21, 2000, 3000, 2.0) + normal(121, 3000)

    def test_quiet_alone_resolves_in_the_middle_and_opens_a_second_breach(self) -> None:
        # What the hold is for: the detector learns the regressed level within 200 values
        # and is quiet; 500 quiet values later the breach resolves, and the recovery is a
        # second breach.
        assert self.follow(self.REGRESSION, hold=0) == [
            (2014, "opened"),
            (2514, "resolved"),
            (5011, "opened"),
            (5511, "resolved"),
        ]

    def test_a_long_regression_is_one_breach_until_the_signal_is_back(self) -> None:
        # Held from 2514 on: the detector relearns while its new baseline is 2σ away, and the
        # first baseline learnt wholly after the recovery (5115-5314) is back.
        assert self.follow(self.REGRESSION, hold=10_000) == [(2014, "opened"), (5314, "resolved")]

    def test_a_lasting_shift_is_taken_as_the_new_normal_after_the_hold(self) -> None:
        lasting = shifted(21, 2000, 6000, 2.0)
        assert self.follow(lasting, hold=2500) == [(2014, "opened"), (4514, "resolved")]

    def test_a_held_breach_survives_restores_exactly(self) -> None:
        # Cuts while open, while relearning and just before the resolution: the baseline the
        # breach fired against is in the tracker's state.
        cuts = {2015, 2600, 2714, 3000, 4915, 5200, 5314}
        expected = self.follow(self.REGRESSION, hold=10_000)
        assert self.follow(self.REGRESSION, hold=10_000, cuts=cuts) == expected
