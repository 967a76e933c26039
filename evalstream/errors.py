"""Error helpers for the CLI's supervision boundary."""

from __future__ import annotations


def leaves(error: BaseException) -> list[BaseException]:
    """The leaf exceptions of a (possibly nested) exception group, or the error itself."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]
