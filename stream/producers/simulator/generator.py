"""Deterministic synthetic telemetry: realistic event bodies for demos, tests and benchmarks.

Pure: no I/O and no wall clock. Event ``i`` carries the event time ``start + i / rate``
(aggregate over all apps, rounded to the microsecond); the caller paces delivery. The same
arguments always give byte-identical output.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, cast, get_args

import numpy as np
import orjson

IncidentKind = Literal["latency_regression", "score_drift", "error_burst"]
INCIDENT_KINDS: Final[tuple[str, ...]] = get_args(IncidentKind)

# The deliberately broken inputs, in the order the defect draw indexes them.
DEFECTS: Final[tuple[str, ...]] = (
    "malformed_json",
    "wrong_type",
    "missing_trace_id",
    "naive_timestamp",
    "future_timestamp",
    "oversized_output_text",
    "too_many_metadata",
    "invalid_utf8",
    "not_an_object",
    "deeply_nested_metadata",
)

SCORE_NAMES: Final[tuple[str, ...]] = (
    "groundedness",
    "relevance",
    "toxicity",
    "coherence",
    "fluency",
)
# (mean, sigma) of each score before the per-app jitter; toxicity hugs zero on purpose.
_SCORE_BASE: Final = {
    "groundedness": (0.82, 0.08),
    "relevance": (0.78, 0.09),
    "toxicity": (0.04, 0.025),
    "coherence": (0.86, 0.05),
    "fluency": (0.89, 0.04),
}
# (model_id, model_version, typical median latency in ms)
_MODELS: Final = (
    ("gpt-4o", "2024-08-06", 900.0),
    ("gpt-4o-mini", "2024-07-18", 420.0),
    ("phi-3-mini", "3.5-instruct", 320.0),
    ("phi-3-medium", "128k-instruct", 650.0),
    ("llama-3.1-8b", "instruct-v1", 380.0),
    ("mistral-large", "2407", 1100.0),
)
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
_PROMPT_POOL: Final = 1024
_ANSWER_POOL: Final = 2048
_USER_POOL: Final = 5000
_EVENT_ID_SHARE: Final = 0.30
_USER_ID_SHARE: Final = 0.05
_METADATA_TRACE_SHARE: Final = 0.10  # trace id only in metadata.trace_id (a supported shape)
_BASE_ERROR_RATE: Final = 0.005

# Sizes just past the contract's limits (schemas/telemetry.py) for the broken inputs.
_OVERSIZED_TEXT_CHARS: Final = 40_000
_TOO_MANY_METADATA: Final = 40
_NESTING_DEPTH: Final = 40
_FUTURE_OFFSET: Final = timedelta(days=1)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

_NUMBER = r"[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?"
_INCIDENT_RE: Final = re.compile(
    rf"^(?P<kind>[a-z_]+):(?P<app>[A-Za-z0-9._:-]{{1,128}})(?:/(?P<score>[A-Za-z0-9._-]+))?"
    rf"@(?P<start>{_NUMBER})\+(?P<duration>{_NUMBER})x(?P<magnitude>-?{_NUMBER})$"
)


@dataclass(frozen=True)
class Incident:
    """A scripted anomaly on one app during a span of event time.

    ``magnitude`` is the latency factor (latency_regression), the shift of a score in units
    of that score's σ (score_drift; the app's first score unless ``score`` names one), or
    the error rate during the burst (error_burst).
    """

    kind: IncidentKind
    app_id: str
    start_s: float
    duration_s: float
    magnitude: float
    score: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in INCIDENT_KINDS:
            raise ValueError(
                f"unknown incident kind {self.kind!r}; expected one of {INCIDENT_KINDS}"
            )
        values = (self.start_s, self.duration_s, self.magnitude)
        if not all(math.isfinite(v) for v in values):
            raise ValueError("incident start, duration and magnitude must be finite")
        if self.start_s < 0 or self.duration_s <= 0:
            raise ValueError("incident start must be >= 0 and duration > 0 seconds")
        if self.kind == "latency_regression" and self.magnitude <= 0:
            raise ValueError("latency_regression magnitude is a factor and must be > 0")
        if self.kind == "error_burst" and not 0 <= self.magnitude <= 1:
            raise ValueError("error_burst magnitude is an error rate in [0, 1]")
        if self.score is not None and self.kind != "score_drift":
            raise ValueError("only score_drift incidents name a score")

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    @classmethod
    def parse(cls, text: str) -> Incident:
        """Parse ``kind:app_id[/score]@start+duration x magnitude`` (seconds, no spaces).

        Examples: ``latency_regression:app-002@120+300x3``,
        ``score_drift:app-001/relevance@60+120x-2``, ``error_burst:app-000@0+30x0.2``.
        """
        match = _INCIDENT_RE.match(text.strip())
        if match is None:
            raise ValueError(
                f"cannot parse incident {text!r}: expected"
                " kind:app_id[/score]@start+durationxmagnitude,"
                " e.g. latency_regression:app-002@120+300x3"
            )
        kind = match["kind"]
        if kind not in INCIDENT_KINDS:
            raise ValueError(
                f"unknown incident kind {kind!r} in {text!r}; expected one of {INCIDENT_KINDS}"
            )
        try:
            return cls(
                kind=cast(IncidentKind, kind),
                app_id=match["app"],
                start_s=float(match["start"]),
                duration_s=float(match["duration"]),
                magnitude=float(match["magnitude"]),
                score=match["score"],
            )
        except ValueError as exc:
            raise ValueError(f"invalid incident {text!r}: {exc}") from exc

    def __str__(self) -> str:
        # The inverse of parse(), so a CLI can echo the incidents it was given.
        score = f"/{self.score}" if self.score else ""
        span = f"{_number(self.start_s)}+{_number(self.duration_s)}x{_number(self.magnitude)}"
        return f"{self.kind}:{self.app_id}{score}@{span}"


def _number(value: float) -> str:
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


@dataclass(frozen=True)
class SimulatedEvent:
    """One generated input: the bytes a producer would send and what the simulator knows of it."""

    body: bytes
    app_id: str | None
    event_time: datetime
    valid: bool
    defect: str | None
    incident: str | None


@dataclass(frozen=True)
class ModelProfile:
    model_id: str
    model_version: str
    weight: float
    median_latency_ms: float
    latency_sigma: float


@dataclass(frozen=True)
class ScoreProfile:
    name: str
    mean: float
    sigma: float


@dataclass(frozen=True)
class AppProfile:
    """The traffic shape of one simulated app (drawn from the seed)."""

    app_id: str
    share: float
    models: tuple[ModelProfile, ...]
    scores: tuple[ScoreProfile, ...]
    error_rate: float
    system_tokens: int
    app_version: str


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
        self._profiles = _draw_profiles(apps, profile_rng)
        self._index = {p.app_id: i for i, p in enumerate(self._profiles)}
        for incident in self.incidents:
            self._check_incident(incident)
        self._prompts, self._answers = _text_pools(profile_rng)
        self._prompt_tokens = np.array([_count_tokens(t) for t in self._prompts])
        self._answer_tokens = np.array([_count_tokens(t) for t in self._answers])
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
        prompt_idx = rng.integers(0, _PROMPT_POOL, size)
        answer_idx = rng.integers(0, _ANSWER_POOL, size)
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

        raw_latency = np.exp(self._log_medians[model] + self._latency_sigmas[model] * latency_z)
        latency = np.round(raw_latency * latency_factor, 1)
        # Errors are drawn as a code so one column carries both "whether" and "which".
        error = np.where(error_u < error_rate, error_kind, -1)
        raw_scores = self._score_mean[app] + self._score_sigma[app] * (score_z + score_shift)
        scores = np.round(np.clip(raw_scores, 0.0, 1.0), 3)
        # i * 10**6 is exact in float64, so this is one rounding of the true i / rate in µs.
        micros = np.round(index * 1e6 / self.rate).astype(np.int64)
        tokens_in = self._system_tokens[app] + self._prompt_tokens[prompt_idx]
        tokens_out = self._answer_tokens[answer_idx]
        # One number names the metadata combination (app, channel, locale).
        tags = (app * len(_CHANNELS) + channel) * len(_LOCALES) + locale

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
        columns = zip(
            app[:n].tolist(),
            model[:n].tolist(),
            micros[:n].tolist(),
            trace_ids[:n],
            span_ids[:n],
            latency[:n].tolist(),
            error[:n].tolist(),
            scores[:n].tolist(),
            prompt_idx[:n].tolist(),
            answer_idx[:n].tolist(),
            tokens_in[:n].tolist(),
            tokens_out[:n].tolist(),
            tags[:n].tolist(),
            has_event_id[:n].tolist(),
            user_idx[:n].tolist(),
            meta_trace[:n].tolist(),
            broken[:n].tolist(),
            incident_code[:n].tolist(),
            range(n),
            strict=True,
        )
        for (a, m, us, trace_id, span_id, lat, err, score_row, pi, ai, t_in, t_out, tag,
             with_event_id, ui, in_metadata, is_broken, ic, j) in columns:  # fmt: skip
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
                    body=_broken_body(defect, doc, int(variant[j]), event_time, self._answers[ai]),
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


def _broken_body(
    defect: str, doc: dict[str, Any], variant: int, event_time: datetime, answer: str
) -> bytes:
    """Turn a valid event into the named kind of broken input."""
    if defect == "malformed_json":
        body = orjson.dumps(doc)
        # A truncated object is never valid JSON; where it is cut varies.
        return body[: 1 + variant % (len(body) - 1)]
    if defect == "wrong_type":
        choice = variant % 3
        if choice == 0:
            doc["latency_ms"] = "fast"
        elif choice == 1:
            doc["tokens"] = {"input": "many", "output": 12}
        else:
            doc["span_id"] = 12345
        return orjson.dumps(doc)
    if defect == "missing_trace_id":
        doc.pop("trace_id", None)
        doc["metadata"].pop("trace_id", None)
        return orjson.dumps(doc)
    if defect == "naive_timestamp":
        doc["timestamp"] = event_time.replace(tzinfo=None)
        return orjson.dumps(doc)
    if defect == "future_timestamp":
        doc["timestamp"] = event_time + _FUTURE_OFFSET
        return orjson.dumps(doc)
    if defect == "oversized_output_text":
        doc["output_text"] = (answer + " ") * (_OVERSIZED_TEXT_CHARS // (len(answer) + 1) + 1)
        return orjson.dumps(doc)
    if defect == "too_many_metadata":
        doc["metadata"].update({f"tag_{k:02d}": f"value-{k}" for k in range(_TOO_MANY_METADATA)})
        return orjson.dumps(doc)
    if defect == "invalid_utf8":
        doc["input_text"] = "\x00MARK\x00"
        # orjson only writes valid UTF-8, so splice raw bytes in after encoding.
        return orjson.dumps(doc).replace(b"\\u0000MARK\\u0000", b"caf\xc3 \xff\xfe na\xefve")
    if defect == "not_an_object":
        return orjson.dumps((42, "hello", None, True, 3.5)[variant % 5])
    if defect == "deeply_nested_metadata":
        nested: Any = "bottom"
        for _ in range(_NESTING_DEPTH):
            nested = {"context": nested}
        doc["metadata"]["context"] = nested
        return orjson.dumps(doc)
    raise ValueError(f"unknown defect {defect!r}")


def _draw_profiles(apps: int, rng: np.random.Generator) -> list[AppProfile]:
    # Zipf-like traffic shares: app-000 is the busiest.
    weights = 1.0 / np.arange(1, apps + 1) ** 1.1
    shares = (weights / weights.sum()).tolist()
    width = max(3, len(str(apps - 1)))
    profiles = []
    for a in range(apps):
        n_models = 1 if rng.random() < 0.4 else 2
        picks = rng.choice(len(_MODELS), size=n_models, replace=False).tolist()
        first_weight = 1.0 if n_models == 1 else float(rng.uniform(0.6, 0.9))
        models = []
        for slot, pick in enumerate(picks):
            model_id, version, median = _MODELS[pick]
            median = float(np.clip(median * rng.uniform(0.8, 1.25), 300.0, 1200.0))
            models.append(
                ModelProfile(
                    model_id=model_id,
                    model_version=version,
                    weight=first_weight if slot == 0 else 1.0 - first_weight,
                    median_latency_ms=round(median, 1),
                    latency_sigma=round(float(rng.uniform(0.45, 0.75)), 3),
                )
            )
        # Every app reports relevance; the others are a per-app subset.
        names = [n for n in SCORE_NAMES if n == "relevance" or rng.random() < 0.55]
        scores = []
        for name in names:
            mean, sigma = _SCORE_BASE[name]
            scores.append(
                ScoreProfile(
                    name=name,
                    mean=round(float(mean + rng.uniform(-0.3, 0.3) * sigma), 4),
                    sigma=round(float(sigma * rng.uniform(0.8, 1.2)), 4),
                )
            )
        profiles.append(
            AppProfile(
                app_id=f"app-{a:0{width}d}",
                share=shares[a],
                models=tuple(models),
                scores=tuple(scores),
                error_rate=round(float(_BASE_ERROR_RATE * rng.uniform(0.6, 1.4)), 5),
                system_tokens=int(rng.integers(60, 400)),
                app_version=f"{rng.integers(1, 4)}.{rng.integers(0, 12)}.{rng.integers(0, 30)}",
            )
        )
    return profiles


def _count_tokens(text: str) -> int:
    # Roughly what BPE tokenisers give for English prose: ~4 characters per token.
    return max(1, round(len(text) / 4))


def _text_pools(rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Prompts and answers for one simulator: joins of sentences from the shared pools."""
    statements, questions = _sentences()
    prompts = []
    for _ in range(_PROMPT_POOL):
        k = int(rng.integers(1, 4))
        picked = [statements[i] for i in rng.integers(0, len(statements), k).tolist()]
        picked.append(questions[int(rng.integers(0, len(questions)))])
        prompts.append(" ".join(picked))
    answers = []
    for _ in range(_ANSWER_POOL):
        k = int(rng.integers(3, 12))
        answers.append(
            " ".join(statements[i] for i in rng.integers(0, len(statements), k).tolist())
        )
    return prompts, answers


def _capitalise(sentence: str) -> str:
    sentence = _A_BEFORE_VOWEL.sub(r"\1n \2", sentence)
    return sentence[0].upper() + sentence[1:]


_A_BEFORE_VOWEL: Final = re.compile(r"\b([Aa]) ([aeiou])")


def _third_person(verb: str) -> str:
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    if verb.endswith(("s", "sh", "ch", "x", "z")):
        return verb + "es"
    return verb + "s"


@functools.cache
def _sentences() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Sentence pools built once per process from the built-in vocabulary (fixed seed)."""
    rng = np.random.default_rng(20_241_122)

    def pick(words: tuple[str, ...]) -> str:
        return words[int(rng.integers(0, len(words)))]

    statements = []
    for _ in range(1536):
        template = pick(_STATEMENT_TEMPLATES)
        sentence = template.format(
            adj=pick(_ADJECTIVES),
            adj2=pick(_ADJECTIVES),
            noun=pick(_NOUNS),
            noun2=pick(_NOUNS),
            noun3=pick(_NOUNS),
            verb=pick(_VERBS),
            verbs=_third_person(pick(_VERBS)),
            adv=pick(_ADVERBS),
            prep=pick(_PREPOSITIONS),
            place=pick(_PLACES),
        )
        statements.append(_capitalise(sentence))
    questions = []
    for _ in range(512):
        template = pick(_QUESTION_TEMPLATES)
        sentence = template.format(
            adj=pick(_ADJECTIVES),
            noun=pick(_NOUNS),
            noun2=pick(_NOUNS),
            verb=pick(_VERBS),
            prep=pick(_PREPOSITIONS),
            place=pick(_PLACES),
        )
        questions.append(_capitalise(sentence))
    return tuple(statements), tuple(questions)


_STATEMENT_TEMPLATES: Final = (
    "the {adj} {noun} should {verb} the {noun2} {prep} the {noun3}.",
    "you can {verb} the {noun} {adv} if the {noun2} is {adj}.",
    "in {place}, the {noun} is usually {adj} and {adj2}.",
    "our {noun} team will {verb} the {adj} {noun2} before the next {noun3}.",
    "to {verb} a {noun}, open the {noun2} settings and select {adj} {noun3}.",
    "the {noun2} {verbs} {adv} when the {adj} {noun} changes {prep} the {noun3}.",
    "according to the {noun} policy, every {adj} {noun2} must {verb} {adv}.",
    "please note that the {noun} for {place} can {verb} the {noun2} {adv}.",
    "if the {noun} does not {verb}, check the {adj} {noun2} and try again.",
    "the {adj} {noun} and the {adj2} {noun2} both {verb} {prep} the {noun3}.",
)
_QUESTION_TEMPLATES: Final = (
    "how do I {verb} the {adj} {noun} {prep} my {noun2}?",
    "why does the {noun} not {verb} in {place}?",
    "can you explain the {adj} {noun} policy for {noun2}?",
    "what is the fastest way to {verb} a {noun}?",
    "is it possible to {verb} the {noun} {prep} the {noun2}?",
    "which {noun} should I choose for a {adj} {noun2}?",
    "when will the {adj} {noun} be available in {place}?",
)
_NOUNS: Final = (
    "account", "invoice", "subscription", "order", "refund", "password", "device", "report",
    "dashboard", "contract", "shipment", "warranty", "policy", "balance", "payment", "profile",
    "router", "license", "ticket", "schedule", "appointment", "delivery", "plan", "upgrade",
    "credit", "statement", "claim", "address", "catalogue", "discount", "voucher", "backup",
    "firmware", "calendar", "workspace", "pipeline", "dataset", "model", "quota", "budget",
    "résumé", "café", "façade", "smörgåsbord",
)  # fmt: skip
_VERBS: Final = (
    "update", "cancel", "renew", "verify", "reset", "transfer", "export", "import", "review",
    "approve", "schedule", "configure", "install", "restore", "merge", "submit", "track",
    "compare", "download", "upload", "migrate", "archive", "activate", "replace",
)  # fmt: skip
_ADJECTIVES: Final = (
    "new", "previous", "monthly", "annual", "premium", "basic", "shared", "private", "secure",
    "pending", "overdue", "default", "custom", "regional", "corporate", "temporary", "primary",
    "backup", "international", "digital", "refurbished", "naïve", "expired", "active",
)  # fmt: skip
_ADVERBS: Final = (
    "quickly", "automatically", "manually", "safely", "immediately", "usually", "directly",
    "online", "later", "again",
)  # fmt: skip
_PREPOSITIONS: Final = ("for", "with", "from", "into", "after", "before", "under", "within")
_PLACES: Final = (
    "Berlin", "Paris", "Madrid", "Tokyo", "São Paulo", "Zürich", "London", "Seattle",
    "Toronto", "Sydney", "Montréal", "Kraków",
)  # fmt: skip
