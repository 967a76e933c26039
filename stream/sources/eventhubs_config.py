"""Settings of the Event Hubs source and sink, and their checks; no SDK import, so settings
load (and fail early with a clear message) on machines without the Azure SDK."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

from common import redact
from common.connection_strings import NamespaceConnectionString, StorageConnectionString
from schemas.bounds import PositiveCount, PositiveSeconds
from stream.exceptions import SourceMisconfigured


class EventHubsSettings(BaseModel):
    """Event Hubs source (and producer for send/simulate), with Blob checkpoints.

    Authenticate with ``connection_string``, or with ``fully_qualified_namespace`` and
    DefaultAzureCredential (managed identity: role "Azure Event Hubs Data Receiver", and
    "Data Sender" for producers). Checkpoints likewise: ``checkpoint_connection_string`` or
    ``checkpoint_account_url`` with "Storage Blob Data Contributor".
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    connection_string: NamespaceConnectionString | None = None
    fully_qualified_namespace: redact.NamespaceName | None = None
    eventhub_name: str = "telemetry"
    # The hub's partition count (set it to the hub's): at most this many processors share the
    # work, so an autoscaler must not go past it (deploy/k8s's KEDA maximum is checked against
    # this setting).
    partitions: PositiveCount = 4
    checkpoint_connection_string: StorageConnectionString | None = None
    checkpoint_account_url: redact.BlobAccountUrl | None = None
    checkpoint_container: str = "evalstream-checkpoints"
    # Where a partition without a checkpoint starts: the oldest retained event or new ones only
    # (one whose snapshot is in the store resumes after the event the snapshot covers).
    starting_position: Literal["earliest", "latest"] = "earliest"
    load_balancing_interval_s: PositiveSeconds = 10.0
    partition_ownership_expiration_s: PositiveSeconds = 60.0
    prefetch: PositiveCount = 300
    # Receive in a child process: the SDK's pure-Python AMQP receive costs about as much CPU
    # per event as the pipeline, and in one process the two would share one core.
    receive_in_child_process: bool = True


def check_settings(settings: EventHubsSettings, *, checkpoints: bool) -> None:
    """Raise SourceError for settings that cannot work (``checkpoints``: for the source)."""
    if settings.connection_string is None and not settings.fully_qualified_namespace:
        raise SourceMisconfigured(
            "azure.eventhubs needs connection_string or fully_qualified_namespace "
            "(DefaultAzureCredential)"
        )
    if settings.connection_string is not None:
        # The SDK lets eventhub_name override the connection string's EntityPath silently:
        # a mismatch would read the wrong hub.
        parts = dict(
            part.split("=", 1)
            for part in settings.connection_string.get_secret_value().split(";")
            if "=" in part
        )
        entity = parts.get("EntityPath")
        if entity and entity != settings.eventhub_name:
            raise SourceMisconfigured(
                f"azure.eventhubs.eventhub_name is {settings.eventhub_name!r} but the connection "
                f"string names the hub {entity!r}: make them agree"
            )
    if (
        checkpoints
        and settings.checkpoint_connection_string is None
        and not settings.checkpoint_account_url
    ):
        raise SourceMisconfigured(
            "azure.eventhubs needs checkpoint_connection_string or checkpoint_account_url "
            "(DefaultAzureCredential) for its Blob checkpoints"
        )


def namespace_shown(settings: EventHubsSettings) -> str:
    """The namespace the settings name, and which setting names it, for an error to say where
    it looked (its host only: never the key of the connection string)."""
    if settings.connection_string is not None:
        parts = dict(
            part.split("=", 1)
            for part in settings.connection_string.get_secret_value().split(";")
            if "=" in part
        )
        endpoints = [value for key, value in parts.items() if key.strip().lower() == "endpoint"]
        host = urlsplit(endpoints[0].strip()).netloc if endpoints else ""
        return f"namespace {host or '?'} of azure.eventhubs.connection_string"
    namespace = settings.fully_qualified_namespace
    return f"namespace {namespace} of azure.eventhubs.fully_qualified_namespace"
