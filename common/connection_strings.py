"""Checks of the connection-string settings (Event Hubs and Service Bus namespaces, Storage
accounts), run when the settings load: the SDKs take any text and fail only when a client is
made, with a bare ``ValueError`` deep inside a command. A refusal never quotes the value: a
connection string holds a key."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, SecretStr

NAMESPACE_EXAMPLE = (
    "Endpoint=sb://NAMESPACE.servicebus.windows.net/;SharedAccessKeyName=NAME;SharedAccessKey=KEY"
)
STORAGE_EXAMPLE = (
    "DefaultEndpointsProtocol=https;AccountName=ACCOUNT;AccountKey=KEY;"
    "EndpointSuffix=core.windows.net"
)


def _settings(value: str, example: str) -> dict[str, str]:
    """The ``Key=value`` pairs (keys in lower case); ValueError when it is not made of them."""
    if not value.strip():
        raise ValueError(f"is empty: unset it, or give a connection string ({example})")
    pairs: dict[str, str] = {}
    for part in value.strip().rstrip(";").split(";"):
        key, equals, setting = part.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"is not a connection string ({example})")
        pairs[key.strip().lower()] = setting.strip()
    return pairs


def check_namespace_connection_string(secret: SecretStr) -> SecretStr:
    """``secret`` if it reads as an Event Hubs or Service Bus connection string, as the SDKs
    read one: an ``Endpoint`` with a host, and a key with its name or a shared access
    signature."""
    pairs = _settings(secret.get_secret_value(), NAMESPACE_EXAMPLE)
    endpoint = pairs.get("endpoint", "")
    if not endpoint:
        raise ValueError(f"has no Endpoint ({NAMESPACE_EXAMPLE})")
    if not urlsplit(endpoint).netloc.strip():
        raise ValueError(f"has an Endpoint without a host ({NAMESPACE_EXAMPLE})")
    has_key = bool(pairs.get("sharedaccesskey")) and bool(pairs.get("sharedaccesskeyname"))
    if not has_key and not pairs.get("sharedaccesssignature"):
        raise ValueError(
            "needs SharedAccessKeyName and SharedAccessKey, or SharedAccessSignature "
            f"({NAMESPACE_EXAMPLE})"
        )
    return secret


def check_storage_connection_string(secret: SecretStr) -> SecretStr:
    """``secret`` if it reads as a Storage account's connection string, as the Storage SDK
    reads one: an account (``AccountName`` or ``BlobEndpoint``) and a credential (a base64
    ``AccountKey`` or a ``SharedAccessSignature``), or ``UseDevelopmentStorage=true``."""
    pairs = _settings(secret.get_secret_value(), STORAGE_EXAMPLE)
    if pairs.get("usedevelopmentstorage") == "true":
        return secret
    endpoint = pairs.get("blobendpoint")
    if not pairs.get("accountname") and not endpoint:
        raise ValueError(f"has neither AccountName nor BlobEndpoint ({STORAGE_EXAMPLE})")
    if endpoint is not None and not urlsplit(endpoint).netloc.strip():
        raise ValueError(f"has a BlobEndpoint that is not a URL ({STORAGE_EXAMPLE})")
    key = pairs.get("accountkey")
    if key is not None:
        try:
            base64.b64decode(key, validate=True)
        except binascii.Error:
            raise ValueError("has an AccountKey that is not base64 (the account's key)") from None
        if not key or not pairs.get("accountname"):
            raise ValueError(f"needs AccountName and AccountKey together ({STORAGE_EXAMPLE})")
    elif not pairs.get("sharedaccesssignature"):
        raise ValueError(f"needs an AccountKey or a SharedAccessSignature ({STORAGE_EXAMPLE})")
    return secret


# The checks as types of settings (pydantic runs them when the settings load).
NamespaceConnectionString = Annotated[SecretStr, AfterValidator(check_namespace_connection_string)]
StorageConnectionString = Annotated[SecretStr, AfterValidator(check_storage_connection_string)]
