"""Shared-key authentication of Batch requests, checked the way the service checks it.

The string to sign mirrors azure-batch's ``BatchSharedKeyAuthPolicy``: verb, eleven standard
headers, the ``ocp-*`` headers sorted, ``/<account><path>``, then the sorted query parameters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import parse_qs, urlsplit

from tests.emulators.batch.errors import BatchServiceError

SIGNED_HEADERS = (
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
)


def string_to_sign(method: str, raw_url: str, headers: Mapping[str, str], account: str) -> str:
    """The canonical string a client signs for this request."""
    lowered = {k.lower(): v for k, v in headers.items() if v}
    if method not in ("GET", "HEAD"):
        lowered.setdefault("content-length", "0")
    if lowered.get("content-length") == "0" and method in ("GET", "HEAD"):
        # The client signs no content-length on reads; some transports add "0" on the wire.
        lowered.pop("content-length")
    parts = [method, *(lowered.get(h, "") for h in SIGNED_HEADERS)]
    text = "\n".join(parts) + "\n"
    for name, value in sorted((k, v) for k, v in lowered.items() if "ocp-" in k):
        text += f"{name}:{value}\n"
    url = urlsplit(raw_url)
    text += f"/{account}{url.path}"
    query = parse_qs(url.query)
    for name in sorted(query):
        value = query[name][0]
        if value:
            text += f"\n{name}:{value}"
    return text


def sign(text: str, key: str) -> str:
    digest = hmac.new(base64.b64decode(key), text.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def check_shared_key(
    method: str, raw_url: str, headers: Mapping[str, str], account: str, key: str
) -> None:
    """Raise 401/403 unless the Authorization header is a valid SharedKey signature."""
    authorization = headers.get("Authorization", "")
    scheme, _, credential = authorization.partition(" ")
    name, _, signature = credential.partition(":")
    if scheme != "SharedKey" or not signature:
        raise BatchServiceError(
            401,
            "InvalidAuthenticationInfo",
            "Authentication information is not given in the correct format.",
        )
    if name != account:
        raise BatchServiceError(
            403,
            "AuthenticationFailed",
            "Server failed to authenticate the request.",
            {"AuthenticationErrorDetail": f"unknown account {name!r}"},
        )
    expected = sign(string_to_sign(method, raw_url, headers, account), key)
    if not hmac.compare_digest(expected, signature):
        raise BatchServiceError(
            403,
            "AuthenticationFailed",
            "Server failed to authenticate the request.",
            {
                "AuthenticationErrorDetail": "The MAC signature found in the HTTP request is not"
                " the same as any computed signature."
            },
        )
