"""The Cosmos DB store's settings (``azure.cosmos`` in the config), loadable without the SDK."""

from __future__ import annotations

import base64
import binascii
import dataclasses

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, SecretStr, field_validator

from common import redact
from common.retry import Backoff
from schemas.bounds import Count

# The SDK already retries a throttled (429) request after the server's x-ms-retry-after-ms and
# a 503 once; this backoff comes on top, so a throttled account or a short outage slows the
# processor down instead of failing its batch.
DEFAULT_MAX_RETRIES = 8
DEFAULT_BACKOFF = Backoff(initial_s=0.1, max_s=10.0, max_retries=DEFAULT_MAX_RETRIES)


class CosmosSettings(BaseModel):
    """Cosmos DB store. ``key``, or DefaultAzureCredential with the data-plane role
    "Cosmos DB Built-in Data Contributor"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str | None = None
    key: SecretStr | None = None
    database: str = "evalstream"
    telemetry_container: str = "telemetry"
    quarantine_container: str = "quarantine"
    state_container: str = "state"
    evaluations_container: str = "evaluations"
    create_if_missing: bool = True
    # Concurrent upserts per batch: bounded so a throttled account slows the processor down
    # instead of queueing without limit.
    max_concurrency: PositiveInt = Field(default=32, le=512)
    max_retries: Count = DEFAULT_MAX_RETRIES
    # Local emulators use self-signed certificates.
    connection_verify: bool = True
    # The SDK follows the endpoints the account advertises; the Linux emulator advertises
    # 127.0.0.1, which is wrong from another container, so compose turns this off.
    enable_endpoint_discovery: bool = True

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, endpoint: str | None) -> str | None:
        # Checked here: the SDK takes any text and fails at the first request, as unreachable.
        # A connection string pasted here holds the account key.
        if endpoint is not None:
            redact.check_account_url(
                endpoint,
                "https://ACCOUNT.documents.azure.com:443/; the key goes in azure.cosmos.key",
            )
        return endpoint

    @field_validator("key")
    @classmethod
    def _key(cls, key: SecretStr | None) -> SecretStr | None:
        # The SDK signs requests with the decoded key: one that is not base64 failed there.
        if key is not None:
            try:
                # An empty key decodes too, and signs every request wrongly.
                if not base64.b64decode(key.get_secret_value(), validate=True):
                    raise ValueError("empty")
            except (binascii.Error, ValueError):
                raise ValueError("is not a Cosmos DB key (the account's base64 key)") from None
        return key

    @property
    def backoff(self) -> Backoff:
        """How every Cosmos call is retried: the default schedule, ``max_retries`` times."""
        return dataclasses.replace(DEFAULT_BACKOFF, max_retries=self.max_retries)
