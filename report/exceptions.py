"""Errors of the report: one type below the project's error root."""

from __future__ import annotations

from common.errors import EvalstreamError


class ReportError(EvalstreamError):
    """The report could not read what it needs (the breach log's file, a store)."""
