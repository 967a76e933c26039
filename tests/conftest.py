"""Shared pytest configuration: fixture plugins of the local test servers."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

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


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to test a compiled hot-path module older than its source (setup.py compiles
    them in place): it would be the old code that runs. ``make test`` rebuilds first."""
    folder = Path(__file__).resolve().parent.parent / "stream" / "hotpath"
    stale = [
        source.name
        for source in folder.glob("*.py")
        for built in folder.glob(f"{source.stem}.*.so")
        if built.stat().st_mtime < source.stat().st_mtime
    ]
    if stale:
        pytest.exit(
            f"stream/hotpath: compiled modules older than their source ({', '.join(stale)}); "
            "rebuild them with `make install`",
            returncode=4,
        )


@pytest.fixture(autouse=True, scope="module")
def _collect_garbage_between_modules() -> Iterator[None]:
    # Same reason as above: finalise a module's dead SDK clients before the next module is
    # collected, not at an arbitrary later moment.
    yield
    gc.collect()
    # What is still alive now lives on (servers, session fixtures, modules): frozen, the next
    # modules' collections no longer walk it again (~0.5 s per module late in the suite).
    gc.freeze()
