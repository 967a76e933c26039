"""Shared pytest configuration: fixture plugins of the local test servers."""

from __future__ import annotations

import gc
from collections.abc import Iterator

# Imported before any test module: CPython 3.11.7 can raise "SystemError: AST constructor
# recursion depth mismatch" when the garbage collector finalises dead AMQP connections while
# pytest is compiling a late-imported module (seen with hypothesis' plugin at session end).
import hypothesis  # noqa: F401
import pytest

# Each local server's fixtures live beside the server (tests/emulators/...); list them here so
# every test module can use them.
pytest_plugins: list[str] = [
    "tests.emulators.amqp_fixtures",
    "tests.emulators.npm_fixtures",
    "tests.emulators.batch_fixtures",
]


@pytest.fixture(autouse=True, scope="module")
def _collect_garbage_between_modules() -> Iterator[None]:
    # Same reason as above: finalise a module's dead SDK clients before the next module is
    # collected, not at an arbitrary later moment.
    yield
    gc.collect()
    # What is still alive now lives on (servers, session fixtures, modules): frozen, the next
    # modules' collections no longer walk it again (~0.5 s per module late in the suite).
    gc.freeze()
