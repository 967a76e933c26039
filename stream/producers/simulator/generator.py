"""The simulator itself: draws events block by block from the seed and encodes them as bodies.

Each block of events is made in four steps: draw every random number (the draw order is part of
the output format), apply the scripted incidents, derive the columns, encode one body per event.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple, cast

import numpy as np
import orjson

from stream.producers.simulator.defects import DEFECTS, broken_body
from stream.producers.simulator.incidents import Incident
from stream.producers.simulator.profiles import SCORE_NAMES, AppProfile, draw_profiles
from stream.producers.simulator.texts import ANSWER_POOL, PROMPT_POOL, count_tokens, text_pools

_ERROR_TYPES: Final = (
    "timeout",
    "rate_limited",
    "content_filter",
    "upstream_5xx",
    "context_length_exceeded",
)
_CHANNELS: Final = ("web", "mobile", "api", "teams", "email")
_CHANNEL_P: Final = (0.45, 0.25, 0.18, 0.08, 0.04)
_LOCALES: Final = ("en-US", "en-GB", "de-DE", "fr-FR", "es-ES", "ja-JP", "pt-BR")
_LOCALE_P: Final = (0.50, 0.10, 0.12, 0.10, 0.08, 0.05, 0.05)

_BLOCK: Final = 1024  # events drawn per vectorised block; fixed so any prefix is identical
_USER_POOL: Final = 5000
_EVENT_ID_SHARE: Final = 0.30
_USER_ID_SHARE: Final = 0.05
_METADATA_TRACE_SHARE: Final = 0.10  # trace id only in metadata.trace_id (a supported shape)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SimulatedEvent:
    """One generated input: the bytes a producer would send and what the simulator knows of it."""

    body: bytes
    app_id: str | None
    event_time: datetime
    valid: bool
    defect: str | None
    incident: str | None


class _Draws(NamedTuple):
    """Every random number of one block, in the order drawn."""

    app: np.ndarray
    model: np.ndarray
    latency_z: np.ndarray
    error_u: np.ndarray
    error_kind: np.ndarray
    score_z: np.ndarray
    prompt_idx: np.ndarray
    answer_idx: np.ndarray
    channel: np.ndarray
    locale: np.ndarray
    has_event_id: np.ndarray
    user_idx: np.ndarray
    meta_trace: np.ndarray
    broken: np.ndarray
    defect_idx: np.ndarray
    variant: np.ndarray
    trace_ids: list[str]
    span_ids: list[str]


class _Effects(NamedTuple):
    """What the incidents do to one block: factors, shifts and rates per event, and which
    incident (its index, -1 for none) names each event."""

    latency_factor: np.ndarray
    score_shift: np.ndarray
    error_rate: np.ndarray
    incident_code: np.ndarray


class _Columns(NamedTuple):
    """The values of one block's events, ready to encode."""

    latency: np.ndarray
    error: np.ndarray
    scores: np.ndarray
    micros: np.ndarray
    tokens_in: np.ndarray
    tokens_out: np.ndarray
    tags: np.ndarray


class Simulator:
    """Generates a deterministic stream of telemetry bodies, optionally with incidents and defects.

    Each call to :meth:`events` starts again from event 0, so ``events(10)`` is a prefix of
    ``events(100)``. Incidents and ``invalid_fraction`` never change which random numbers are
    drawn: outside an incident's span (and for events not replaced by a defect) the bytes
    are the same as without it.
    """

    def __init__(
        self,
        *,
        apps: int = 5,
        rate: float = 200.0,
        seed: int = 0,
        start: datetime,
        incidents: Sequence[Incident] = (),
        invalid_fraction: float = 0.0,
    ) -> None:
        if apps < 1:
            raise ValueError("apps must be >= 1")
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError("rate must be a positive number of events per second")
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError("start must be timezone-aware")
        if not 0.0 <= invalid_fraction <= 1.0:
            raise ValueError("invalid_fraction must be in [0, 1]")
        self.apps = apps
        self.rate = float(rate)
        self.seed = seed
        self.start = start.astimezone(UTC)
        self.incidents = tuple(incidents)
        self.invalid_fraction = float(invalid_fraction)

        profile_rng = np.random.default_rng([seed, 0])
        self._profiles = draw_profiles(apps, profile_rng)
        self._index = {p.app_id: i for i, p in enumerate(self._profiles)}
        for incident in self.incidents:
            self._check_incident(incident)
        self._prompts, self._answers = text_pools(profile_rng)
        self._prompt_tokens = np.array([count_tokens(t) for t in self._prompts])
        self._answer_tokens = np.array([count_tokens(t) for t in self._answers])
        # Pre-encoded once: serialising the non-ASCII texts is most of orjson's work per event.
        self._prompt_json = [orjson.Fragment(orjson.dumps(t)) for t in self._prompts]
        self._answer_json = [orjson.Fragment(orjson.dumps(t)) for t in self._answers]
        self._users = [f"user-{k:05d}" for k in range(_USER_POOL)]
        self._build_tables()

    @property
    def app_ids(self) -> list[str]:
        return [p.app_id for p in self._profiles]

    @property
    def profiles(self) -> list[AppProfile]:
        return list(self._profiles)

    def drift_score(self, incident: Incident) -> str:
        """The score a score_drift incident shifts on its app."""
        if incident.score is not None:
            return incident.score
        return self._profiles[self._index[incident.app_id]].scores[0].name

    def events(self, count: int | None = None) -> Iterator[SimulatedEvent]:
        """Yield ``count`` events (forever when None), always starting from event 0."""
        if count is not None and count < 0:
            raise ValueError("count must be >= 0")
        return self._generate(count)

    # -- internals ------------------------------------------------------------------------

    def _generate(self, count: int | None) -> Iterator[SimulatedEvent]:
        rng = np.random.default_rng([self.seed, 1])
        # Ids come from their own stream keyed by the start as well: two runs of the same
        # seed at different starts (a demo run twice) must not collide on event or trace ids,
        # while everything else about the traffic stays the same.
        start_us = (self.start - _EPOCH) // timedelta(microseconds=1)
        id_rng = np.random.default_rng([self.seed, 2, start_us % (1 << 64)])
        first = 0
        while count is None or first < count:
            n = _BLOCK if count is None else min(_BLOCK, count - first)
            # Always draw a full block: a shorter draw would change later blocks' numbers.
            yield from self._block(rng, id_rng, first, n)
            first += _BLOCK

    def _check_incident(self, incident: Incident) -> None:
        if incident.app_id not in self._index:
            raise ValueError(f"incident {incident} names unknown app {incident.app_id!r}")
        if incident.kind == "score_drift":
            names = [s.name for s in self._profiles[self._index[incident.app_id]].scores]
            score = self.drift_score(incident)
            if score not in names:
                raise ValueError(f"app {incident.app_id} has no score {score!r} (it has {names})")

    def _build_tables(self) -> None:
        profiles = self._profiles
        shares = np.array([p.share for p in profiles])
        self._share_cum = np.cumsum(shares) / shares.sum()
        self._first_model_weight = np.array([p.models[0].weight for p in profiles])
        # Model table indexed by app * 2 + slot; one-model apps never pick slot 1.
        medians = np.zeros(2 * len(profiles))
        sigmas = np.zeros(2 * len(profiles))
        self._model_names: list[tuple[str, str]] = []
        for a, p in enumerate(profiles):
            for slot in range(2):
                model = p.models[min(slot, len(p.models) - 1)]
                medians[2 * a + slot] = model.median_latency_ms
                sigmas[2 * a + slot] = model.latency_sigma
                self._model_names.append((model.model_id, model.model_version))
        self._log_medians = np.log(medians)
        self._latency_sigmas = sigmas
        k = len(SCORE_NAMES)
        self._score_mean = np.zeros((len(profiles), k))
        self._score_sigma = np.zeros((len(profiles), k))
        self._score_cols: list[tuple[tuple[str, int], ...]] = []
        for a, p in enumerate(profiles):
            cols = []
            for s in p.scores:
                col = SCORE_NAMES.index(s.name)
                self._score_mean[a, col] = s.mean
                self._score_sigma[a, col] = s.sigma
                cols.append((s.name, col))
            self._score_cols.append(tuple(cols))
        self._error_rates = np.array([p.error_rate for p in profiles])
        self._system_tokens = np.array([p.system_tokens for p in profiles])
        self._app_id_list = [p.app_id for p in profiles]
        self._metadata_json: dict[int, orjson.Fragment] = {}

    def _metadata(self, tag: int) -> dict[str, Any]:
        rest, locale = divmod(tag, len(_LOCALES))
        app, channel = divmod(rest, len(_CHANNELS))
        return {
            "channel": _CHANNELS[channel],
            "locale": _LOCALES[locale],
            "app_version": self._profiles[app].app_version,
            "environment": "prod",
        }

    def _metadata_fragment(self, tag: int) -> orjson.Fragment:
        fragment = orjson.Fragment(orjson.dumps(self._metadata(tag)))
        self._metadata_json[tag] = fragment
        return fragment

    def _block(
        self, rng: np.random.Generator, id_rng: np.random.Generator, first: int, n: int
    ) -> Iterator[SimulatedEvent]:
        draws = self._draw(rng, id_rng)
        effects = self._incident_effects(draws.app, first)
        columns = self._columns(draws, effects, first)
        return self._encode(draws, effects, columns, n)

    def _draw(self, rng: np.random.Generator, id_rng: np.random.Generator) -> _Draws:
        size = _BLOCK
        # The draw order below is part of the output format: changing it changes every byte.
        app = np.searchsorted(self._share_cum, rng.random(size), side="right")
        app = np.minimum(app, len(self._profiles) - 1)
        model_slot = (rng.random(size) >= self._first_model_weight[app]).astype(np.int64)
        model = app * 2 + model_slot
        latency_z = rng.standard_normal(size)
        error_u = rng.random(size)
        error_kind = rng.integers(0, len(_ERROR_TYPES), size)
        score_z = rng.standard_normal((size, len(SCORE_NAMES)))
        prompt_idx = rng.integers(0, PROMPT_POOL, size)
        answer_idx = rng.integers(0, ANSWER_POOL, size)
        channel = rng.choice(len(_CHANNELS), size=size, p=_CHANNEL_P)
        locale = rng.choice(len(_LOCALES), size=size, p=_LOCALE_P)
        has_event_id = rng.random(size) < _EVENT_ID_SHARE
        user_idx = np.where(
            rng.random(size) < _USER_ID_SHARE, rng.integers(0, _USER_POOL, size), -1
        )
        meta_trace = rng.random(size) < _METADATA_TRACE_SHARE
        broken = rng.random(size) < self.invalid_fraction
        defect_idx = rng.integers(0, len(DEFECTS), size)
        variant = rng.integers(0, 1 << 30, size)
        trace_ids = _hex_strings(id_rng, size, 32)
        span_ids = _hex_strings(id_rng, size, 16)
        return _Draws(
            app,
            model,
            latency_z,
            error_u,
            error_kind,
            score_z,
            prompt_idx,
            answer_idx,
            channel,
            locale,
            has_event_id,
            user_idx,
            meta_trace,
            broken,
            defect_idx,
            variant,
            trace_ids,
            span_ids,
        )

    def _incident_effects(self, app: np.ndarray, first: int) -> _Effects:
        size = _BLOCK
        index = np.arange(first, first + size, dtype=np.int64)
        offsets = index / self.rate
        latency_factor = np.ones(size)
        score_shift = np.zeros((size, len(SCORE_NAMES)))
        error_rate = self._error_rates[app]
        incident_code = np.full(size, -1, dtype=np.int64)
        # Reversed so that, where incidents overlap, the first one listed names the event.
        for code in reversed(range(len(self.incidents))):
            incident = self.incidents[code]
            mask = (
                (app == self._index[incident.app_id])
                & (offsets >= incident.start_s)
                & (offsets < incident.end_s)
            )
            incident_code[mask] = code
            if incident.kind == "latency_regression":
                latency_factor[mask] *= incident.magnitude
            elif incident.kind == "score_drift":
                column = SCORE_NAMES.index(self.drift_score(incident))
                score_shift[mask, column] += incident.magnitude
            else:
                error_rate = np.where(mask, incident.magnitude, error_rate)
        return _Effects(latency_factor, score_shift, error_rate, incident_code)

    def _columns(self, draws: _Draws, effects: _Effects, first: int) -> _Columns:
        app, model = draws.app, draws.model
        index = np.arange(first, first + _BLOCK, dtype=np.int64)
        raw_latency = np.exp(
            self._log_medians[model] + self._latency_sigmas[model] * draws.latency_z
        )
        latency = np.round(raw_latency * effects.latency_factor, 1)
        # Errors are drawn as a code so one column carries both "whether" and "which".
        error = np.where(draws.error_u < effects.error_rate, draws.error_kind, -1)
        raw_scores = self._score_mean[app] + self._score_sigma[app] * (
            draws.score_z + effects.score_shift
        )
        scores = np.round(np.clip(raw_scores, 0.0, 1.0), 3)
        # i * 10**6 is exact in float64, so this is one rounding of the true i / rate in µs.
        micros = np.round(index * 1e6 / self.rate).astype(np.int64)
        tokens_in = self._system_tokens[app] + self._prompt_tokens[draws.prompt_idx]
        tokens_out = self._answer_tokens[draws.answer_idx]
        # One number names the metadata combination (app, channel, locale).
        tags = (app * len(_CHANNELS) + draws.channel) * len(_LOCALES) + draws.locale
        return _Columns(latency, error, scores, micros, tokens_in, tokens_out, tags)

    def _encode(
        self, draws: _Draws, effects: _Effects, columns: _Columns, n: int
    ) -> Iterator[SimulatedEvent]:
        """One body per event of the block's first ``n``; the per-event loop is the simulator's
        hot path, so it reads plain lists and builds each document as one dict literal."""
        defect_idx, variant = draws.defect_idx, draws.variant
        app_ids = self._app_id_list
        metadata_json = self._metadata_json
        model_names = self._model_names
        score_cols = self._score_cols
        prompts, answers = self._prompt_json, self._answer_json
        users = self._users
        kinds: list[str | None] = [incident.kind for incident in self.incidents]
        kinds.append(None)  # incident code -1 indexes this
        start = self.start
        dumps = orjson.dumps
        new = object.__new__
        set_attribute = object.__setattr__
        rows = zip(
            draws.app[:n].tolist(),
            draws.model[:n].tolist(),
            columns.micros[:n].tolist(),
            draws.trace_ids[:n],
            draws.span_ids[:n],
            columns.latency[:n].tolist(),
            columns.error[:n].tolist(),
            columns.scores[:n].tolist(),
            draws.prompt_idx[:n].tolist(),
            draws.answer_idx[:n].tolist(),
            columns.tokens_in[:n].tolist(),
            columns.tokens_out[:n].tolist(),
            columns.tags[:n].tolist(),
            draws.has_event_id[:n].tolist(),
            draws.user_idx[:n].tolist(),
            draws.meta_trace[:n].tolist(),
            draws.broken[:n].tolist(),
            effects.incident_code[:n].tolist(),
            range(n),
            strict=True,
        )
        for (a, m, us, trace_id, span_id, lat, err, score_row, pi, ai, t_in, t_out, tag,
             with_event_id, ui, in_metadata, is_broken, ic, j) in rows:  # fmt: skip
            event_time = start + timedelta(0, 0, us)
            app_id = app_ids[a]
            model_id, model_version = model_names[m]
            metadata: Any = metadata_json.get(tag)
            if metadata is None:
                metadata = self._metadata_fragment(tag)
            if err < 0:
                doc: dict[str, Any] = {
                    "schema_version": 1,
                    "app_id": app_id,
                    "timestamp": event_time,
                    "trace_id": trace_id,
                    "span_id": span_id,
                    "model_id": model_id,
                    "model_version": model_version,
                    "input_text": prompts[pi],
                    "output_text": answers[ai],
                    "latency_ms": lat,
                    "status": "ok",
                    "tokens": {"input": t_in, "output": t_out},
                    "scores": {name: score_row[col] for name, col in score_cols[a]},
                    "metadata": metadata,
                }
            else:
                # A failed request has no answer and nothing to score.
                doc = {
                    "schema_version": 1,
                    "app_id": app_id,
                    "timestamp": event_time,
                    "trace_id": trace_id,
                    "span_id": span_id,
                    "model_id": model_id,
                    "model_version": model_version,
                    "input_text": prompts[pi],
                    "latency_ms": lat,
                    "status": "error",
                    "error_type": _ERROR_TYPES[err],
                    "tokens": {"input": t_in, "output": 0},
                    "metadata": metadata,
                }
            # The optional fields go last so the common shape is one dict literal.
            if in_metadata or is_broken:
                # Only these need a metadata dict of their own; the rest share an encoded one.
                doc["metadata"] = metadata = self._metadata(tag)
            if in_metadata:
                del doc["trace_id"]
                metadata["trace_id"] = trace_id
            if with_event_id:
                doc["event_id"] = "evt-" + trace_id[8:]
            if ui >= 0:
                doc["user_id"] = users[ui]
            if is_broken:
                defect = DEFECTS[defect_idx[j]]
                yield SimulatedEvent(
                    body=broken_body(defect, doc, int(variant[j]), event_time, self._answers[ai]),
                    app_id=None if defect == "not_an_object" else app_id,
                    event_time=event_time,
                    valid=False,
                    defect=defect,
                    incident=kinds[ic],
                )
                continue
            # The frozen dataclass's __init__ pays one object.__setattr__ per field, which
            # costs more than building the event: the hot path sets the instance dict at once.
            event = new(SimulatedEvent)
            set_attribute(
                event,
                "__dict__",
                {
                    "body": dumps(doc),
                    "app_id": app_id,
                    "event_time": event_time,
                    "valid": True,
                    "defect": None,
                    "incident": kinds[ic],
                },
            )
            yield event


def _hex_strings(rng: np.random.Generator, count: int, width: int) -> list[str]:
    """``count`` random lowercase hex strings of ``width`` characters, without a Python loop."""
    digits = rng.integers(0, 16, (count, width), dtype=np.uint32)
    codes = _HEX_CODES[digits]
    return cast(list[str], codes.view(f"<U{width}").ravel().tolist())


_HEX_CODES: Final = np.array([ord(c) for c in "0123456789abcdef"], dtype=np.uint32)
