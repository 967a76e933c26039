"""Shared pytest configuration: fixture plugins of the local test servers."""

# Each local server's fixtures live beside the server (tests/emulators/...); list them here so
# every test module can use them.
pytest_plugins: list[str] = [
    "tests.emulators.amqp_fixtures",
    "tests.emulators.npm_fixtures",
    "tests.emulators.batch_fixtures",
]
