"""A local Azure Batch service for tests: the REST calls azure-batch 15.x makes, tasks run locally.

Start it with ``python -m tests.emulators.batch --port N`` or through the ``batch_server``
fixture (tests/emulators/batch_fixtures.py). See service.py for what "running a task" means here.
"""

DEFAULT_ACCOUNT_NAME = "localbatch"
# Any base64 string is a valid shared key; this one is only for local tests.
DEFAULT_ACCOUNT_KEY = "bG9jYWwtYmF0Y2gtdGVzdC1rZXktbm90LWEtc2VjcmV0LTAxMjM0NTY3ODk="
