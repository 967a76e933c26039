"""What of a configured URL may be shown in an error, a log line, a status line or a report: the
endpoint it names, never the credentials users put in URLs.

A URL can carry a secret in its userinfo (``user:password@``), its query (a SAS token's
``sig=``) or, for webhooks, its path (``https://hooks.slack.com/services/T000/B000/XXXX``: the
path is the credential); a connection string holds a key. ``endpoint`` keeps scheme, host and
port (and the path where it names a resource, such as a blob); ``webhook`` replaces the path
with a short fingerprint, enough to tell two hooks apart; ``scrub`` takes a URL's secret parts
out of a text that may echo them (a server's answer, a library's error). ``check_account_url``
is the check of a setting that names an account (Cosmos DB, Batch, Blob storage), which a later
error may quote: it holds no userinfo (nor path or query, but where they are the account's),
and its refusal does not quote it; ``check_namespace`` the same for a namespace's host name.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import unquote, urlsplit

from pydantic import AfterValidator

REDACTED = "<redacted>"
# Shorter parts are left in a scrubbed text: replacing every "a" would garble it, and a one- or
# two-character password protects nothing.
_MIN_SCRUBBED = 4
# A scheme only where "/" follows: "admin:password@host" starts with userinfo, not a scheme.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):/")
# A host (name, IPv4 or IPv6 literal) and a port of digits: whatever follows is not shown.
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]*\]?|[\w.-]*)(:\d+)?")
# Where a URL that urlsplit cannot read is cut into pieces a library's error may quote alone.
_PIECES = re.compile(r"[/?&=;:@#'\"]")
# A connection string starts with a setting ("AccountEndpoint=", "DefaultEndpointsProtocol=");
# the settings whose values are secrets (AccountKey, SharedAccessKey, SharedAccessSignature).
_SETTING = re.compile(r"\s*[A-Za-z][A-Za-z0-9 ]*=")
_SECRET_SETTING = re.compile(r"key|signature|secret|password|token", re.IGNORECASE)
# A URL in a text: from its scheme to the first blank or quote; punctuation closing the sentence
# around it is not its.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_CLOSING = ".,;:)]}"
# What followed a scrubbed path in an echoed request line ("POST <redacted>?token=...").
_QUERY_AFTER_REDACTED = re.compile(re.escape(REDACTED) + r"\?[^\s'\"<>]*")


@dataclass(frozen=True)
class _Url:
    scheme: str
    host: str  # with its port
    path: str
    tail: str  # all that follows the host but the fragment
    secrets: frozenset[str]


def endpoint(url: str, *, path: bool = False) -> str:
    """``scheme://host:port`` of ``url`` (and its path with ``path``: for a URL whose path
    names a resource, a blob): never userinfo, query or fragment."""
    parsed = _parse(url)
    return _joined(parsed.scheme, parsed.host, parsed.path if path else "") or REDACTED


def webhook(url: str) -> str:
    """``scheme://host:port`` of ``url`` and a fingerprint of what follows the host (path and
    query: ``https://hooks.slack.com/<sha256:1a2b3c4d>``), never the path itself."""
    parsed = _parse(url)
    if parsed.tail in ("", "/"):
        return _joined(parsed.scheme, parsed.host, parsed.tail)
    digest = hashlib.sha256(parsed.tail.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return _joined(parsed.scheme, parsed.host, f"/<sha256:{digest}>")


def scrub(text: str, url: str) -> str:
    """``text`` with every part of ``url`` that may be secret (userinfo, path, query, fragment,
    each query value), as given or percent-decoded, replaced by ``<redacted>``."""
    for secret in sorted(_parse(url).secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def scrub_urls(text: str) -> str:
    """``text`` with each URL in it shown as ``webhook`` shows it and that URL's secret parts
    ``scrub``-bed out of the rest (a server's answer echoing its path), a query that followed
    a scrubbed path with them: for a text kept from before its URLs were redacted (an old
    dead letter's reason), whose URL is known only from the text itself."""
    found: list[str] = []

    def shown(match: re.Match[str]) -> str:
        url = match.group().rstrip(_CLOSING)
        found.append(url)
        return webhook(url) + match.group()[len(url) :]

    text = _URL_IN_TEXT.sub(shown, text)
    for url in found:
        text = scrub(text, url)
    return _QUERY_AFTER_REDACTED.sub(REDACTED, text)


def check_account_url(url: str, example: str, *, path: bool = False, query: bool = False) -> str:
    """``url`` if it is an account URL: http(s), a host, a port in range, no userinfo, and no
    path (but "/") or query unless allowed (a Blob account's: Azurite's account path, a SAS);
    else ValueError saying so and showing ``example``, never ``url``. An SDK takes any text and
    fails at its first request, with an error that quotes the URL (a key pasted into it with
    it)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when out of range or not a number
    except ValueError as exc:
        raise ValueError(f"is not a URL: {scrub(str(exc), url)}") from None
    if (
        parts.scheme not in ("https", "http")
        or not parts.hostname
        or "@" in parts.netloc
        or (parts.path not in ("", "/") and not path)
        or (parts.query and not query)
        or parts.fragment
    ):
        raise ValueError(f"is not an account URL ({example})")
    return url


def check_blob_account_url(url: str) -> str:
    """``check_account_url`` for a Blob storage account, whose URL may carry a SAS."""
    example = "https://ACCOUNT.blob.core.windows.net, a SAS as its query if need be"
    return check_account_url(url, example, path=True, query=True)


def check_namespace(name: str) -> str:
    """``name`` if it is a host name (with a port at most), as the Event Hubs and Service Bus
    SDKs take a namespace; else ValueError, never quoting ``name`` (a connection string pasted
    there holds the key)."""
    if not name or _HOST.fullmatch(name) is None:
        raise ValueError(
            "is not a namespace host name (NAMESPACE.servicebus.windows.net; a connection "
            "string goes in the connection_string setting beside it)"
        )
    return name


# The two checks as types of settings (pydantic runs them when the settings load).
BlobAccountUrl = Annotated[str, AfterValidator(check_blob_account_url)]
NamespaceName = Annotated[str, AfterValidator(check_namespace)]


def _parse(url: str) -> _Url:
    if _SETTING.match(url):
        return _connection_string(url)
    try:
        parts = urlsplit(url)
        port = parts.port
        whole = bool(parts.netloc) and _HOST.fullmatch(parts.netloc.rpartition("@")[2]) is not None
    except ValueError:
        whole = False
    if whole:
        host = parts.hostname or ""
        userinfo = parts.netloc.rpartition("@")[0]
        authority = f"//{parts.netloc}"
        tail = f"{parts.path}?{parts.query}" if parts.query else parts.path
        return _Url(
            parts.scheme,
            (f"[{host}]" if ":" in host else host) + ("" if port is None else f":{port}"),
            parts.path,
            tail,
            _secrets(
                userinfo,
                parts.path,
                parts.query,
                parts.fragment,
                url[url.find(authority) + len(authority) :],
            ),
        )
    # Not read whole by urlsplit: without "//" it reads the userinfo as a scheme and a path
    # ("user:password@host/x" is scheme "user"); with a port that is no number it refuses
    # ("host:443;AccountKey=..."). All before the last "@" but a scheme is userinfo, the host
    # is what follows up to the first character no host has, and the rest is not shown.
    text, _, fragment = url.partition("#")
    before, at, rest = text.rpartition("@")
    scheme = _SCHEME.match(before if at else rest)
    userinfo = before[scheme.end() :] if scheme and at else before
    if scheme is not None and not at:
        rest = rest[scheme.end() - 1 :]
    rest = rest.lstrip("/")
    shown = _HOST.match(rest)
    host = shown.group() if shown else ""
    tail = rest[len(host) :]
    path, _, query = tail.partition("?")
    if not path.startswith("/"):
        path = ""  # what stopped the host ("host:443;AccountKey=..."): no path to show
    return _Url(
        scheme.group(1) if scheme else "",
        host,
        path,
        tail,
        # With the pieces of the tail: a library's error quotes one ("Invalid port: 'KEY'").
        _secrets(userinfo, path, query, fragment, tail, *_PIECES.split(tail)),
    )


def _connection_string(text: str) -> _Url:
    """A connection string (``Endpoint=sb://host/;SharedAccessKey=...``) as its endpoint; the
    secrets are the whole text and the values of its key, signature or password settings."""
    settings = dict(
        (key.strip().lower(), value)
        for key, _, value in (part.partition("=") for part in text.split(";"))
    )
    endpoint = next((value for key, value in settings.items() if key.endswith("endpoint")), "")
    parsed = (
        _parse(endpoint)
        if endpoint and not _SETTING.match(endpoint)
        else _Url("", "", "", "", frozenset())
    )
    found = {value for key, value in settings.items() if _SECRET_SETTING.search(key)} | {text}
    found |= {unquote(secret) for secret in found}
    return _Url(
        parsed.scheme,
        parsed.host,
        parsed.path,
        parsed.tail,
        parsed.secrets | {secret for secret in found if len(secret) >= _MIN_SCRUBBED},
    )


def _secrets(
    userinfo: str, path: str, query: str, fragment: str, rest: str, *more: str
) -> frozenset[str]:
    found = {userinfo, userinfo.partition(":")[2], path, query, fragment, rest, *more}
    # Each segment of the path: a server may quote one alone (a Slack hook's last segment).
    found |= set(path.split("/"))
    found |= {value for _, _, value in (pair.partition("=") for pair in query.split("&"))}
    found |= {unquote(secret) for secret in found}
    return frozenset(secret for secret in found if len(secret) >= _MIN_SCRUBBED)


def _joined(scheme: str, host: str, path: str) -> str:
    return f"{scheme}://{host}{path}" if scheme else f"{host}{path}"
