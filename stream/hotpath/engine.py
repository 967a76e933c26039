"""HotPath: every detector of one source partition, fed one stored document at a time."""

from __future__ import annotations

import logging
import math
from collections import deque
from functools import cache
from importlib.metadata import version
from typing import Any, cast

import orjson

from schemas.appconfig import AppConfig, AppDirectory
from schemas.breach import MAX_SAMPLE_TRACE_IDS, Breach, BreachKind
from schemas.telemetry import Status
from stream.hotpath.detector import Detector, Updated
from stream.hotpath.errors import SnapshotError
from stream.hotpath.factory import (
    ERROR,
    LATENCY,
    OUTPUT_CHARS,
    SCORE_PREFIX,
    TOKENS_TOTAL,
    detectors_for,
)
from stream.hotpath.incident import Incident
from stream.hotpath.lifecycle import BreachTracker
from stream.hotpath.packing import pack_ids, unpack_ids
from stream.ports import Observed

logger = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "evalstream.hotpath"
# 2: sliding KS reference, ADWIN's minimum effect, packed counts, [detector, breach] pairs.
# 3: trace ids packed as bytes, open breaches compact (lifecycle.BreachTracker.state).
# 4: one incident per (app, signal) (stream.hotpath.incident); ADWIN's restart reference.
# An older snapshot is refused: the processor starts the hot path afresh (evalstream.wiring).
SNAPSHOT_VERSION = 4
# Name under which ``state_sizes`` reports the per-app part (watermark, recent trace ids).
APP_STATE = "*"
# Keys of a signal's offending trace ids and of its open incident in its snapshot (not
# detector names).
SAMPLES = "samples"
INCIDENT = "incident"
# Latencies and scores take any finite double, but the detectors square and sum what they are
# fed: beyond ~1e154 a square overflows, their statistics turn infinite or NaN, and a breach
# reported them as such (its JSON, null, no longer read back). Values beyond ±1e100 are fed as
# ±1e100: still far beyond any real latency or score (a change to them is detected as one),
# and sums of squares stay finite for 1e100 values.
FED_LIMIT = 1e100


@cache
def _river_version() -> str:
    return version("river")


class _Track:
    """The detectors of one (app, signal), each with its breach tracker.

    ``samples`` holds the trace ids of the signal's latest offending requests (over the SLO
    threshold, or failed) when burn-rate detectors watch it; drift breaches take the app's
    latest requests instead, which are the ones that revealed the change.
    """

    __slots__ = ("above", "entries", "incident", "pairs", "recent", "samples", "slo")

    def __init__(
        self,
        pairs: list[tuple[Detector, BreachTracker]],
        slo: set[str],
        recent: deque[str],
    ) -> None:
        self.pairs = pairs
        self.slo = slo
        self.recent = recent
        self.samples: deque[str] | None = deque(maxlen=MAX_SAMPLE_TRACE_IDS) if slo else None
        # A value above this is offending: its trace id goes to ``samples`` (inf: none is).
        self.above = math.inf
        self.entries: list[tuple[Updated, BreachTracker, deque[str]]] = []
        self.incident = Incident([tracker for _, tracker in pairs])
        self._link()

    def _link(self) -> None:
        # Built once per track, read for every detector of every event.
        self.entries = []
        self.above = math.inf
        for detector, tracker in self.pairs:
            if not isinstance(detector, Updated):
                name = type(detector).__name__
                raise TypeError(f"{name} does not derive from stream.hotpath.detector.Updated")
            if detector.name in self.slo and self.samples is not None:
                # Every burn-rate detector of a signal has the same bad threshold (the
                # signal's SLO), and a value offends exactly when it is above it: the engine
                # collects the sample before the updates instead of asking after each one.
                if self.above == math.inf:
                    self.above = detector.bad_above  # type: ignore[attr-defined]
                self.entries.append((detector, tracker, self.samples))
            else:
                self.entries.append((detector, tracker, self.recent))

    def replace(self, index: int, detector: Detector) -> None:
        self.pairs[index] = (detector, self.pairs[index][1])
        self._link()


class _App:
    __slots__ = (
        "by_score",
        "config",
        "error",
        "latency",
        "output",
        "recent",
        "refused_scores",
        "saved",
        "scores",
        "tokens",
        "tracks",
        "watermark",
    )

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        # This app's snapshot JSON, kept until its next event: a snapshot re-encodes only the
        # apps that changed since the previous one.
        self.saved: bytes | None = None
        self.tracks: dict[str, _Track] = {}
        self.recent: deque[str] = deque(maxlen=MAX_SAMPLE_TRACE_IDS)
        self.watermark = float("-inf")
        self.scores = 0
        # Whether a score name was refused (past max_score_signals): warned once, and refused
        # names are not remembered, so names that never repeat cannot grow anything.
        self.refused_scores = False
        # The tracks of ``tracks`` again, for observe: the fixed signals by attribute and the
        # tracked scores by their bare name, so an event costs no signal-name strings and no
        # lookups of them (a refused name costs them, and nothing is kept of it).
        self.error: _Track | None = None
        self.latency: _Track | None = None
        self.output: _Track | None = None
        self.tokens: _Track | None = None
        self.by_score: dict[str, _Track] = {}


class HotPath:
    """Drift and SLO detectors per (app, signal) of one partition, and their breaches.

    Signals of an event: ``latency_ms``; ``error`` (1 for status error); and for successful
    requests ``output_chars``, ``tokens_total`` (when tokens were reported) and every score as
    ``score:<name>`` (at most ``max_score_signals`` names per app). Detectors, from the app's
    configuration (``AppDirectory.resolve``): the drift detectors on every signal but
    ``error``; burn-rate rules (one detector per severity) on ``latency_ms`` and ``error``.

    Breaches: each detector's own finding opens on a detection (drift: id from the detecting
    document) or when a rule fires (burn rate: id from the event-time window), and ends after
    ``resolve_after_events`` values of the signal without a detection once the detector's
    relearnt baseline is back to the one it fired against (drift; or after
    ``resolve_shifted_after_events``: ``lifecycle.BreachTracker``) or once no rule of its
    severity has fired for ``resolve_after_s`` of event time (burn rate). What is
    published is one incident per (app, signal) (``stream.hotpath.incident``): opened by the
    first finding (with its id), escalated by a more severe one, resolved when every
    detector's finding has ended; the others are its evidence. Every time field of a breach
    is event time, never the wall clock.

    ``observe`` is deterministic: the same documents in the same order give the same breaches
    with the same ids, and ``restore(snapshot())`` at any document boundary continues exactly
    as if nothing had happened (with the same configuration; a detector whose configuration
    changed shape starts over, with a warning). Not thread-safe: one per partition.
    """

    def __init__(self, apps: AppDirectory) -> None:
        self._directory = apps
        self._apps: dict[str, _App] = {}
        # Events of apps beyond ``max_detected_apps`` (stored, not detected), since start.
        self.undetected_events = 0

    # -- feeding ---------------------------------------------------------------------------
    def observe(self, doc: Observed) -> list[Breach]:
        """Feed one stored event (in partition order); return breaches opened/resolved by it."""
        app = self._apps.get(doc.app_id)
        if app is None:
            if not self._room_for(doc.app_id):
                return []
            app = self._app(doc.app_id)
        app.saved = None
        t = doc.timestamp.timestamp()
        if t > app.watermark:
            app.watermark = t
        trace_id = doc.trace_id
        app.recent.append(trace_id)
        # Not a dict of the enum: Enum.__hash__ is Python code.
        failed = 1.0 if doc.status is Status.ERROR else 0.0
        # (track, value) of every signal of the event, in a fixed order: error, latency,
        # output length, tokens, scores.
        work: list[tuple[_Track, float]] = [
            (app.error or self._fixed(app, doc.app_id, ERROR), failed)
        ]
        latency = doc.latency_ms
        if latency is not None:
            if latency > FED_LIMIT:
                latency = FED_LIMIT
            work.append((app.latency or self._fixed(app, doc.app_id, LATENCY), latency))
        if not failed:
            derived = doc.derived
            output = app.output or self._fixed(app, doc.app_id, OUTPUT_CHARS)
            work.append((output, derived.output_chars))
            if doc.tokens is not None:
                tokens = app.tokens or self._fixed(app, doc.app_id, TOKENS_TOTAL)
                work.append((tokens, derived.tokens_total))
            if doc.scores:
                by_score = app.by_score
                for name, value in doc.scores.items():
                    track = by_score.get(name)
                    if track is None:
                        track = self._track(app, doc.app_id, SCORE_PREFIX + name)
                    if track is not None:
                        if not -FED_LIMIT <= value <= FED_LIMIT:
                            value = FED_LIMIT if value > 0 else -FED_LIMIT
                        work.append((track, value))
        out: list[Breach] = []
        # One loop over every detector of the event, without a call per signal: this is the
        # hottest code of the processor. Detectors are reached through Updated (a direct call
        # when compiled, see Updated); the breach lifecycle takes them as the Protocol.
        for track, x in work:
            if x > track.above:
                samples_of_slo = track.samples
                if samples_of_slo is not None:
                    samples_of_slo.append(trace_id)
            for detector, tracker, samples in track.entries:
                detector.update(x, t)
                if detector.alarm or tracker.open is not None:
                    breach = tracker.step(cast(Detector, detector), app.watermark, doc, samples)
                    if breach is not None:
                        message = track.incident.absorb(breach)
                        if message is not None:
                            out.append(message)
        return out

    def _room_for(self, app_id: str) -> bool:
        """Whether a new app's signals are followed: within ``max_detected_apps``, or configured
        by name (a flood of new app ids cannot crowd out an app the operator configured)."""
        directory = self._directory
        if len(self._apps) < directory.max_detected_apps or app_id in directory.overrides:
            return True
        if not self.undetected_events:
            logger.warning(
                "app not detected: this partition's hot path follows %d apps already "
                "(apps.max_detected_apps); the events of new apps are stored, not detected",
                len(self._apps),
                extra={"app_id": app_id, "limit": directory.max_detected_apps},
            )
        self.undetected_events += 1
        return False

    def _app(self, app_id: str) -> _App:
        app = _App(self._directory.resolve(app_id))
        self._apps[app_id] = app
        return app

    def _fixed(self, app: _App, app_id: str, signal: str) -> _Track:
        """The track of one of the signals every app has (never refused, unlike scores)."""
        track = self._track(app, app_id, signal)
        assert track is not None
        return track

    def _track(self, app: _App, app_id: str, signal: str) -> _Track | None:
        if signal.startswith(SCORE_PREFIX):
            if app.scores >= app.config.detectors.max_score_signals:
                if not app.refused_scores:
                    app.refused_scores = True
                    logger.warning(
                        "score not tracked: app has too many score names (this and further "
                        "new names are stored, not detected)",
                        extra={"app_id": app_id, "signal": signal, "limit": app.scores},
                    )
                return None
            app.scores += 1
        pairs = []
        slo = set()
        for detector in detectors_for(app.config, signal):
            is_slo = detector.kind is not BreachKind.DRIFT
            if is_slo:
                slo.add(detector.name)
            tracker = BreachTracker(
                app_id,
                signal,
                quiet_events=1 if is_slo else app.config.detectors.resolve_after_events,
                quiet_seconds=app.config.slo.resolve_after_s if is_slo else 0.0,
                hold_events=0 if is_slo else app.config.detectors.resolve_shifted_after_events,
            )
            pairs.append((detector, tracker))
        track = _Track(pairs, slo, app.recent)
        app.tracks[signal] = track
        if signal == ERROR:
            app.error = track
        elif signal == LATENCY:
            app.latency = track
        elif signal == OUTPUT_CHARS:
            app.output = track
        elif signal == TOKENS_TOTAL:
            app.tokens = track
        else:
            app.by_score[signal.removeprefix(SCORE_PREFIX)] = track
        return track

    # -- state -----------------------------------------------------------------------------
    @staticmethod
    def _track_state(track: _Track) -> dict[str, Any]:
        # [detector, breach] rather than an object with those two keys: this is repeated for
        # every detector of every signal.
        state: dict[str, Any] = {
            detector.name: [detector.state(), tracker.state(detector)]
            for detector, tracker in track.pairs
        }
        if track.samples is not None:
            state[SAMPLES] = pack_ids(track.samples)
        incident = track.incident.state()
        if incident is not None:
            state[INCIDENT] = incident
        return state

    @staticmethod
    def _app_state(app: _App) -> dict[str, Any]:
        return {"watermark": app.watermark, "recent": pack_ids(app.recent)}

    def snapshot(self) -> bytes:
        """Compact, deterministic JSON of every detector's explicit state (keys sorted)."""
        apps = {}
        for app_id, app in self._apps.items():
            if app.saved is None:
                state = self._app_state(app)
                state["signals"] = {
                    signal: self._track_state(track) for signal, track in app.tracks.items()
                }
                app.saved = orjson.dumps(state, option=orjson.OPT_SORT_KEYS)
            apps[app_id] = orjson.Fragment(app.saved)
        document = {
            "format": SNAPSHOT_FORMAT,
            "version": SNAPSHOT_VERSION,
            "river": _river_version(),
            "apps": apps,
        }
        # A watermark of -inf cannot occur once an app exists (it saw an event).
        return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def restore(cls, apps: AppDirectory, blob: bytes) -> HotPath:
        """Rebuild from ``snapshot()`` bytes; detectors are built from ``apps`` and loaded."""
        try:
            document = orjson.loads(blob)
        except orjson.JSONDecodeError as exc:
            raise SnapshotError(f"hot-path snapshot is not valid JSON: {exc}") from exc
        if not isinstance(document, dict) or document.get("format") != SNAPSHOT_FORMAT:
            raise SnapshotError("not a hot-path snapshot")
        if document.get("version") != SNAPSHOT_VERSION:
            raise SnapshotError(f"unsupported hot-path snapshot version {document.get('version')}")
        running = _river_version()
        if document.get("river") != running:
            # ADWIN's state is river's own binary encoding and may change between releases.
            raise SnapshotError(
                f"snapshot written with river {document.get('river')}, running {running}"
            )
        engine = cls(apps)
        try:
            for app_id, app_state in document["apps"].items():
                app = engine._app(app_id)
                app.watermark = float(app_state["watermark"])
                app.recent.extend(unpack_ids(app_state["recent"]))
                for signal, detectors in app_state["signals"].items():
                    track = engine._track(app, app_id, signal)
                    if track is None:
                        continue
                    if track.samples is not None:
                        track.samples.extend(unpack_ids(detectors.get(SAMPLES) or []))
                    track.incident.load_state(detectors.get(INCIDENT))
                    for index, (detector, tracker) in enumerate(list(track.pairs)):
                        saved = detectors.get(detector.name)
                        if saved is None:
                            continue  # detector enabled since the snapshot: starts fresh
                        saved_detector, saved_breach = saved
                        tracker.load_state(saved_breach, detector)
                        try:
                            detector.load_state(saved_detector)
                        except (KeyError, TypeError, ValueError) as exc:
                            # The app's configuration changed shape (other burn-rate rules,
                            # bucket count, ...): this detector starts over, the others and
                            # any open breach carry on.
                            logger.warning(
                                "detector state does not fit its configuration, starting fresh",
                                extra={
                                    "app_id": app_id,
                                    "signal": signal,
                                    "detector": detector.name,
                                    "error": str(exc),
                                },
                            )
                            fresh = next(
                                d
                                for d in detectors_for(app.config, signal)
                                if d.name == detector.name
                            )
                            track.replace(index, fresh)
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"hot-path snapshot is malformed: {exc}") from exc
        return engine

    @property
    def state_sizes(self) -> dict[tuple[str, str], int]:
        """Bytes of snapshot state per (app_id, signal); the per-app part is under ``"*"``."""
        sizes: dict[tuple[str, str], int] = {}
        for app_id, app in self._apps.items():
            sizes[(app_id, APP_STATE)] = len(orjson.dumps(self._app_state(app)))
            for signal, track in app.tracks.items():
                sizes[(app_id, signal)] = len(orjson.dumps(self._track_state(track)))
        return sizes
