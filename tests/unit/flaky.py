"""A stand-in operation for tests of retry loops."""

from __future__ import annotations


class Flaky:
    """An operation failing with the given errors in turn, then answering "ok"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"
