"""SLO burn rates in event time: multi-window, multi-burn-rate rules over bounded buckets."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Self

from schemas.breach import BreachKind, Severity
from schemas.detection import BurnRateRule
from stream.hotpath.detector import Updated
from stream.hotpath.detector import printed as _printed
from stream.hotpath.packing import pack_varints, unpack_varints


class BurnRate(Updated):
    """Alarms while any of its rules burns the error budget too fast over both windows.

    A value is bad when it is above ``bad_above`` (latency over its SLO threshold, or an error
    flag of 1 with ``bad_above=0.5``). A rule fires when the bad fraction divided by ``budget``
    is at least ``factor`` over its long and its short window, and the short window holds at
    least ``min_window_events`` events — or, for a low-rate app, at least
    ``low_rate_min_events`` while its long window holds ``min_window_events`` (so an app at
    one request a minute still pages an outage within minutes: see ``SloConfig``); nothing
    fires before ``warmup`` events, and with
    ``full_windows`` a rule fires only once the detector has seen as much event time as its
    short window (a fresh app's "3 day" window holds minutes, and a ticket rule at 1× the
    budget would fire on the noise of its first few hundred requests). One detector
    serves the rules of one severity (the SRE workbook's pattern: fast and slow critical
    rules page as one alert, the slow warning rule tickets).

    Each window is a ring of ``buckets`` event-time buckets of ``window/buckets`` seconds, so a
    window slides in those steps and holds at most ``window`` seconds of events. Events of the
    current finest bucket are counted in a pending pair and added to every ring when event time
    moves on (in the bucket of the first of them: exact when every window/buckets is a multiple
    of the finest, as with the default rules): an event costs a comparison and two additions;
    rules are evaluated on bad events and at bucket boundaries. Events older than a ring's span
    are not counted in that ring.
    """

    def __init__(
        self,
        rules: tuple[BurnRateRule, ...],
        budget: float,
        bad_above: float,
        kind: BreachKind,
        severity: Severity,
        warmup: int = 200,
        min_window_events: int = 20,
        low_rate_min_events: int = 3,
        buckets: int = 12,
        full_windows: bool = True,
    ) -> None:
        if not rules:
            raise ValueError("a burn-rate detector needs at least one rule")
        self.rules = rules
        self.budget = budget
        self.bad_above = bad_above
        self.kind = kind
        self.severity = severity
        self.warmup = warmup
        self.min_window_events = min_window_events
        self.low_rate_min_events = min(low_rate_min_events, min_window_events)
        self.buckets = buckets
        self.full_windows = full_windows
        self.name = f"burn_{severity.value}"
        windows = sorted({w for r in rules for w in (r.long_window_s, r.short_window_s)})
        self._windows = windows
        self._widths = [w / buckets for w in windows]
        self._fine = self._widths[0]
        # (long ring, short ring, rule, bad fraction at which the rule fires)
        self._checks = [
            (windows.index(r.long_window_s), windows.index(r.short_window_s), r, r.factor * budget)
            for r in rules
        ]
        self._seen = 0
        self._first_t: float | None = None
        # A plain attribute, not a property: the engine reads it after every update.
        self.alarm = False
        self._offending = False
        self._totals = [[0] * buckets for _ in windows]
        self._bads = [[0] * buckets for _ in windows]
        self._heads: list[int | None] = [None for _ in windows]
        self._sum_total = [0] * len(windows)
        self._sum_bad = [0] * len(windows)
        self._pending_idx: float | None = None
        self._pending_t = 0.0
        self._pending_total = 0
        self._pending_bad = 0
        self._observed = 0.0
        self._short_burn = 0.0
        self._window_start = 0.0
        self._window_id: str | None = None
        self._rule: BurnRateRule | None = None

    def _derived_heads(self) -> list[int | None]:
        if self._pending_idx is None:
            return [None for _ in self._widths]
        return [int(self._pending_t // width) for width in self._widths]

    # -- rings -----------------------------------------------------------------------------
    def _advance(self, ring: int, idx: int) -> None:
        head = self._heads[ring]
        if head is not None and idx <= head:
            return
        totals, bads = self._totals[ring], self._bads[ring]
        k = self.buckets
        steps = k if head is None else min(idx - head, k)
        for step in range(steps):
            slot = (idx - step) % k
            self._sum_total[ring] -= totals[slot]
            self._sum_bad[ring] -= bads[slot]
            totals[slot] = 0
            bads[slot] = 0
        self._heads[ring] = idx

    def _add(self, t: float, total: int, bad: int) -> None:
        for ring, width in enumerate(self._widths):
            idx = int(t // width)
            self._advance(ring, idx)
            head = self._heads[ring]
            assert head is not None
            if idx <= head - self.buckets:
                continue  # older than this ring's span
            slot = idx % self.buckets
            self._totals[ring][slot] += total
            self._bads[ring][slot] += bad
            self._sum_total[ring] += total
            self._sum_bad[ring] += bad

    def _flush(self, t: float) -> None:
        if self._pending_total:
            self._add(self._pending_t, self._pending_total, self._pending_bad)
        for ring, width in enumerate(self._widths):
            self._advance(ring, int(t // width))

    # -- rules -----------------------------------------------------------------------------
    def _evaluate(self, t: float) -> bool:
        if self._seen < self.warmup:
            return False
        pending_total, pending_bad = self._pending_total, self._pending_bad
        sum_total, sum_bad = self._sum_total, self._sum_bad
        # _first_t is set by the first update; evaluation only follows updates.
        history = t - (self._first_t if self._first_t is not None else t)
        for long_ring, short_ring, rule, limit in self._checks:
            if self.full_windows and history < rule.short_window_s:
                continue
            short_total = sum_total[short_ring] + pending_total
            if short_total < self.low_rate_min_events:
                continue
            short_bad = sum_bad[short_ring] + pending_bad
            if short_bad < limit * short_total:
                continue
            long_total = sum_total[long_ring] + pending_total
            # A thin short window is enough when the long window holds the evidence.
            if short_total < self.min_window_events and long_total < self.min_window_events:
                continue
            long_bad = sum_bad[long_ring] + pending_bad
            if not long_total or long_bad < limit * long_total:
                continue
            self._rule = rule
            self._observed = long_bad / long_total / self.budget
            self._short_burn = short_bad / short_total / self.budget
            # The window is identified by the end of the current finest bucket, so every
            # replay of the same events names it the same way.
            end = (int(t // self._fine) + 1) * self._fine
            self._window_start = end - rule.long_window_s
            start = datetime.fromtimestamp(self._window_start, UTC).isoformat()
            self._window_id = f"{rule.long_window_s}s/{rule.short_window_s}s@{start}"
            return True
        return False

    # -- the protocol ------------------------------------------------------------------------
    def update(self, x: float, t: float) -> Self:
        seen = self._seen
        if seen == 0:
            self._first_t = t
        self._seen = seen + 1
        bad = x > self.bad_above
        self._offending = bad
        # Bucket numbers stay floats here (integral values, compared exactly): int() per
        # event is a measurable cost.
        idx = t // self._fine
        pending = self._pending_idx
        if idx == pending:
            # The common case: same finest bucket as the previous event.
            self._pending_total += 1
            if bad:
                self._pending_bad += 1
                self.alarm = self._evaluate(t)
            return self
        if pending is not None and idx < pending:
            # Late event: straight into the rings it still fits in.
            self._add(t, 1, int(bad))
            if bad:
                self.alarm = self._evaluate(self._pending_t)
            return self
        self._flush(t)
        self._pending_idx = idx
        self._pending_t = t
        self._pending_total = 1
        self._pending_bad = int(bad)
        self.alarm = self._evaluate(t)
        return self

    @property
    def observed(self) -> float:
        """Burn rate of the firing rule's long window (1.0 = exactly on budget)."""
        return self._observed

    @property
    def baseline(self) -> float | None:
        return self.budget

    @property
    def limit(self) -> float | None:
        return None if self._rule is None else self._rule.factor

    @property
    def window_start(self) -> float:
        return self._window_start

    @property
    def window_id(self) -> str | None:
        return self._window_id

    @property
    def offending(self) -> bool:
        return self._offending

    @property
    def message_args(self) -> list[Any]:
        """Everything ``describe`` prints: a snapshot keeps these instead of the text."""
        rule = self._rule
        if rule is None:
            return []
        return [
            self.budget,
            _printed(self._observed, 1),
            rule.long_window_s,
            _printed(self._short_burn, 1),
            rule.short_window_s,
            rule.factor,
        ]

    @staticmethod
    def format_message(args: list[Any]) -> str:
        if not args:
            return "burn rate"
        budget, observed, long_window_s, short_burn, short_window_s, factor = args
        return (
            f"error budget ({budget:.2%} bad) burning {observed:.1f}× over "
            f"{long_window_s}s and {short_burn:.1f}× over {short_window_s}s "
            f"(rule: ≥ {factor}× on both)"
        )

    def describe(self) -> str:
        return self.format_message(self.message_args)

    def state(self) -> list[Any]:
        # Counts per ring, packed (totals of every ring, then bad counts); everything else in
        # one list (keys would double a small state).
        rule = None if self._rule is None else self.rules.index(self._rule)
        counts = [c for rings in (self._totals, self._bads) for ring in rings for c in ring]
        # The ring heads and the pending bucket follow from the pending event's time (every
        # flush advances each ring to it): written only when they do not.
        heads: list[int | None] | None = self._heads
        pending_idx = self._pending_idx
        if self._derived_heads() == self._heads:
            heads = None
            if pending_idx is not None and pending_idx == self._pending_t // self._fine:
                pending_idx = -1.0
        return [
            pack_varints(counts),
            heads,
            [
                self._seen,
                self._first_t,
                int(self.alarm),
                int(self._offending),
                pending_idx,
                self._pending_t,
                self._pending_total,
                self._pending_bad,
                self._observed,
                self._short_burn,
                self._window_start,
                self._window_id,
                rule,
            ],
        ]

    def load_state(self, state: list[Any]) -> None:
        packed, heads, rest = state
        counts = unpack_varints(packed)
        rings, k = len(self._windows), self.buckets
        if len(counts) != 2 * rings * k or (heads is not None and len(heads) != rings):
            raise ValueError("burn-rate state does not match this detector's rules")
        self._totals = [counts[i * k : (i + 1) * k] for i in range(rings)]
        self._bads = [counts[(rings + i) * k : (rings + i + 1) * k] for i in range(rings)]
        self._sum_total = [sum(ring) for ring in self._totals]
        self._sum_bad = [sum(ring) for ring in self._bads]
        (
            seen,
            first_t,
            alarm,
            offending,
            pending_idx,
            pending_t,
            pending_total,
            pending_bad,
            observed,
            short_burn,
            window_start,
            window_id,
            rule,
        ) = rest
        self._seen = int(seen)
        self._first_t = None if first_t is None else float(first_t)
        self.alarm = bool(alarm)
        self._offending = bool(offending)
        self._pending_idx = None if pending_idx is None else float(pending_idx)
        self._pending_t = float(pending_t)
        if heads is None:
            self._heads = self._derived_heads()
            if self._pending_idx == -1.0:
                self._pending_idx = self._pending_t // self._fine
        else:
            self._heads = [None if h is None else int(h) for h in heads]
        self._pending_total = int(pending_total)
        self._pending_bad = int(pending_bad)
        self._observed = float(observed)
        self._short_burn = float(short_burn)
        self._window_start = float(window_start)
        self._window_id = window_id
        self._rule = None if rule is None else self.rules[int(rule)]
