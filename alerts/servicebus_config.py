"""The Service Bus alert topic's settings (``azure.servicebus`` in the config), loadable
without the SDK."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from common import redact
from common.connection_strings import NamespaceConnectionString


class ServiceBusSettings(BaseModel):
    """Service Bus alert topic. ``connection_string``, or ``fully_qualified_namespace`` with
    DefaultAzureCredential (roles "Azure Service Bus Data Sender" / "Data Receiver")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connection_string: NamespaceConnectionString | None = None
    fully_qualified_namespace: redact.NamespaceName | None = None
    topic: str = "breaches"
