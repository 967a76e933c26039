"""What of a configured URL may be shown in an error, a log line, a status line or a report: the
endpoint it names, never the credentials users put in URLs.

A URL can carry a secret in its userinfo (``user:password@``), its query (a SAS token's
``sig=``) or, for webhooks, its path (``https://hooks.slack.com/services/T000/B000/XXXX``: the
path is the credential). ``endpoint`` keeps scheme, host, port and path (for account URLs,
whose path names a resource); ``webhook`` replaces the path with a short fingerprint, enough
to tell two hooks apart; ``scrub`` takes a URL's secret parts out of a text that may echo them
(a server's answer, a library's error).
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import SplitResult, unquote, urlsplit

REDACTED = "<redacted>"
# Shorter parts are left in a scrubbed text: replacing every "a" would garble it, and a one- or
# two-character password protects nothing.
_MIN_SCRUBBED = 4
# A scheme only where "/" follows: "admin:password@host" starts with userinfo, not a scheme.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/")


def endpoint(url: str) -> str:
    """``scheme://host:port/path`` of ``url``: no userinfo, query or fragment."""
    scheme, host, path, _ = _parts(url)
    return _joined(scheme, host, path)


def webhook(url: str) -> str:
    """``scheme://host:port`` of ``url`` and a fingerprint of what follows the host (path and
    query: ``https://hooks.slack.com/<sha256:1a2b3c4d>``), never the path itself."""
    scheme, host, _, tail = _parts(url)
    if tail in ("", "/"):
        return _joined(scheme, host, tail)
    digest = hashlib.sha256(tail.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return _joined(scheme, host, f"/<sha256:{digest}>")


def scrub(text: str, url: str) -> str:
    """``text`` with every part of ``url`` that may be secret (userinfo, path, query, fragment,
    each query value), as given or percent-decoded, replaced by ``<redacted>``."""
    for secret in sorted(_secrets(url), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def _secrets(url: str) -> set[str]:
    parts = _split(url)
    if parts is None or not parts.netloc:
        # Not a URL urlsplit reads whole: all but the host may be a secret.
        _, host, _, _ = _parts(url)
        found = {piece for piece in url.split(host) if piece} if host else {url}
    else:
        userinfo = parts.netloc.rpartition("@")[0]
        found = {userinfo, userinfo.partition(":")[2], parts.path, parts.query, parts.fragment}
        found |= {value for _, _, value in (pair.partition("=") for pair in parts.query.split("&"))}
        authority = f"//{parts.netloc}"
        found.add(url[url.find(authority) + len(authority) :])
    found |= {unquote(secret) for secret in found}
    return {secret for secret in found if len(secret) >= _MIN_SCRUBBED}


def _split(url: str) -> SplitResult | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when out of range or not a number
    except ValueError:
        return None
    return parts


def _parts(url: str) -> tuple[str, str, str, str]:
    """Scheme, ``host[:port]``, path, and path with query of ``url`` (no userinfo, no
    fragment)."""
    parts = _split(url)
    if parts is not None and parts.netloc:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        tail = f"{parts.path}?{parts.query}" if parts.query else parts.path
        return parts.scheme, host, parts.path, tail
    # Without "//" (or with a port or an IPv6 address urlsplit refuses) urlsplit reads the
    # userinfo as a scheme and a path ("user:password@host/x" is scheme "user"): what comes
    # before the last "@" is left out, but a scheme (followed by "/"), and the host is what
    # follows up to the first "/".
    text = url.partition("#")[0]
    before, at, rest = text.rpartition("@")
    scheme = _SCHEME.match(before if at else rest)
    if scheme is not None and not at:
        rest = rest[scheme.end() - 1 :]
    host, slash, tail = rest.lstrip("/").partition("/")
    host, question, query = host.partition("?")
    tail = slash + tail if slash else question + query
    return scheme.group(1) if scheme else "", host, tail.partition("?")[0], tail


def _joined(scheme: str, host: str, path: str) -> str:
    return f"{scheme}://{host}{path}" if scheme else f"{host}{path}"
