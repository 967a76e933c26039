"""A page of documents as columns (numpy arrays and lists), extracted once per page and shared by
every metric that reads the same page.

The runner hands the same page object to each accumulator in turn; ``columns(page)`` keeps the
last page's columns in a one-slot cache keyed by the page's identity and length (it holds a
reference to the page, so the identity cannot be reused while cached). Each column is built on
first use, so a metric pays only for what some metric reads. Missing optional fields become
NaN in numeric columns and None in categorical ones; they are never dropped here, so each
metric can count them.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np
import numpy.typing as npt

from schemas import TelemetryDocument
from schemas.telemetry import MetadataValue, Status

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Category = MetadataValue | None


class Columns:
    """The columns of one page; every attribute is computed once, on first access."""

    def __init__(self, page: Sequence[TelemetryDocument]) -> None:
        self.page = page
        self.size = len(page)
        self._metadata: dict[str, list[Category]] = {}
        self._scores: dict[str, FloatArray] = {}

    @cached_property
    def latency_ms(self) -> FloatArray:
        # numpy turns None into NaN for a float dtype: no per-document branch in Python.
        return np.array([d.latency_ms for d in self.page], dtype=np.float64)

    @cached_property
    def statuses(self) -> list[Status]:
        return [d.status for d in self.page]

    @cached_property
    def error(self) -> BoolArray:
        error = Status.ERROR
        return np.array([status is error for status in self.statuses], dtype=np.bool_)

    @cached_property
    def error_types(self) -> list[str | None]:
        return [d.error_type for d in self.page]

    @cached_property
    def model_ids(self) -> list[str | None]:
        return [d.model_id for d in self.page]

    @cached_property
    def model_versions(self) -> list[str | None]:
        return [d.model_version for d in self.page]

    @cached_property
    def _tokens(self) -> tuple[FloatArray, FloatArray]:
        tokens = [d.tokens for d in self.page]
        inputs = np.array([t.input if t is not None else None for t in tokens], dtype=np.float64)
        outputs = np.array([t.output if t is not None else None for t in tokens], dtype=np.float64)
        return inputs, outputs

    @property
    def tokens_in(self) -> FloatArray:
        """Input tokens; NaN where the document reported no tokens."""
        return self._tokens[0]

    @property
    def tokens_out(self) -> FloatArray:
        return self._tokens[1]

    @cached_property
    def tokens_total(self) -> FloatArray:
        return self.tokens_in + self.tokens_out

    @cached_property
    def output_chars(self) -> FloatArray:
        """Output length in characters; NaN where the event carried no output text."""
        return np.array(
            [d.derived.output_chars if d.output_text is not None else None for d in self.page],
            dtype=np.float64,
        )

    @cached_property
    def score_names(self) -> tuple[str, ...]:
        # One C-level union over the documents' score dicts (iterating a dict yields its keys).
        names: set[str] = set().union(*(d.scores for d in self.page))
        return tuple(sorted(names))

    def score(self, name: str) -> FloatArray:
        """The score ``name`` per document; NaN where the document did not carry it."""
        found = self._scores.get(name)
        if found is None:
            found = np.array([d.scores.get(name) for d in self.page], dtype=np.float64)
            self._scores[name] = found
        return found

    def metadata(self, key: str) -> list[Category]:
        found = self._metadata.get(key)
        if found is None:
            found = [d.metadata.get(key) for d in self.page]
            self._metadata[key] = found
        return found


class _LastPage:
    """One-slot cache: the columns of the page most recently asked for."""

    def __init__(self) -> None:
        self.entry: tuple[Sequence[TelemetryDocument], int, Columns] | None = None

    def columns(self, page: Sequence[TelemetryDocument]) -> Columns:
        entry = self.entry
        if entry is not None and entry[0] is page and entry[1] == len(page):
            return entry[2]
        found = Columns(page)
        self.entry = (page, len(page), found)
        return found


_LAST = _LastPage()


def columns(page: Sequence[TelemetryDocument]) -> Columns:
    """The columns of ``page``, shared with every other metric fed the same page object."""
    return _LAST.columns(page)


def present(values: FloatArray) -> FloatArray:
    """The values that are not NaN (NaN marks a missing field)."""
    mask = ~np.isnan(values)
    return values if mask.all() else values[mask]
