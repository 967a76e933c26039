"""Who may post to ingest, for which apps, and how fast: API keys, Microsoft Entra ID tokens and
per-(sender, app) rates.

Keys are configured by their SHA-256 only (``evalstream ingest-key`` makes a key and prints the
setting), so a leaked config file leaks no key. A request names its key as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. With ``entra`` configured, a bearer
value that is a JWT is checked as an Entra ID access token instead: RS256 signature against the
tenant's JWKS (fetched, cached, fetched again for an unknown ``kid`` so key rotation works),
``iss``, ``aud``, ``exp``/``nbf``; the sender is its ``azp``/``appid`` claim.

* no credentials, an unknown key or a token that fails a check → 401 (``WWW-Authenticate:
  Bearer``), the reason in the body;
* an event for an app the key does not list → 403, nothing of the request is kept;
* more events for an app than the key's rate allows → 429 with ``Retry-After`` (seconds until
  the bucket holds enough), nothing of the request is kept (the buckets are ``ingest_rates``':
  with several ingest worker processes they are shared, so the rate holds for the service);
  more than its ``burst`` in one request → 413 (no wait would let it through).

Binding ingest beyond loopback without keys is refused at start (``require_auth_beyond_loopback``).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
)

from schemas.bounds import PositiveCount, Rate, Seconds
from schemas.telemetry import APP_ID_PATTERN, is_app_id
from stream.producers.ingest_rates import Buckets, MemoryBuckets

if TYPE_CHECKING:
    import jwt

ALL_APPS = "*"
# The bucket of a key's rejected events that name no app it may post for (no app id is empty).
WITHOUT_APP = ""


def allowed_apps(apps: tuple[str, ...]) -> tuple[str, ...]:
    """``apps`` of a key or tenant: ``*`` or app ids, at least one (an entry that is neither
    would never match an event: a key scoped to it could post nothing)."""
    if not apps:
        raise ValueError("no app: give app ids, or '*' for every app")
    for app in apps:
        if app != ALL_APPS and not is_app_id(app):
            raise ValueError(f"{app!r} is neither '*' nor an app id ({APP_ID_PATTERN})")
    return apps


class Sender(BaseModel):
    """Who posts (an API key's holder or a token's client) and what it may post."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    apps: Annotated[tuple[str, ...], AfterValidator(allowed_apps)] = (ALL_APPS,)
    # Events per second per app, refilled continuously; ``burst`` events may come at once.
    events_per_s: Rate | None = None
    burst: PositiveCount = 1000

    def allows(self, app_id: str) -> bool:
        return ALL_APPS in self.apps or app_id in self.apps


class ApiKey(Sender):
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class EntraIdSettings(BaseModel):
    """Access tokens of one Entra ID tenant for one API (``audience``); every client the
    tenant issues tokens to for it gets ``apps`` and the rate below."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str = Field(min_length=1, examples=["https://login.microsoftonline.com/TENANT/v2.0"])
    audience: str = Field(min_length=1, examples=["api://evalstream-ingest"])
    jwks_url: str = Field(
        min_length=1, examples=["https://login.microsoftonline.com/TENANT/discovery/v2.0/keys"]
    )
    apps: Annotated[tuple[str, ...], AfterValidator(allowed_apps)] = (ALL_APPS,)
    events_per_s: Rate | None = None
    burst: PositiveCount = 1000
    leeway_s: Seconds = 60.0
    # A token with an unknown kid fetches the JWKS again, at most this often (so made-up kids
    # cannot make us hammer the tenant's endpoint); Entra publishes new keys before using them.
    jwks_refresh_cooldown_s: Seconds = 30.0


class IngestAuthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    api_keys: tuple[ApiKey, ...] = ()
    entra: EntraIdSettings | None = None

    @field_validator("api_keys")
    @classmethod
    def _distinct(cls, keys: tuple[ApiKey, ...]) -> tuple[ApiKey, ...]:
        # A key's rate is counted under its name, and a key is found by its hash: two of
        # either would share one rate, or one key would hide the other's apps and rate.
        for field in ("name", "key_sha256"):
            values = [getattr(key, field) for key in keys]
            if twice := sorted({value for value in values if values.count(value) > 1}):
                raise ValueError(f"two keys with the same {field}: {', '.join(twice)}")
        return keys


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def require_auth_beyond_loopback(host: str, auth: IngestAuthSettings) -> str | None:
    """The reason ingest must not start on ``host`` as configured, or None."""
    if auth.api_keys or auth.entra is not None or is_loopback(host):
        return None
    return (
        f"ingest.host {host} is reachable beyond this machine and no ingest.auth.api_keys or "
        "ingest.auth.entra are configured: add a key (evalstream ingest-key NAME) or bind "
        "ingest.host to 127.0.0.1"
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve to anything


@dataclass(frozen=True)
class Denied:
    status: int
    error: str
    message: str
    retry_after_s: int | None = None


class Authorizer:
    """Checks one request's key, apps and rate; keeps the rate buckets of the process."""

    def __init__(
        self,
        settings: IngestAuthSettings,
        clock: Callable[[], float] = time.monotonic,
        buckets: Buckets | None = None,
    ) -> None:
        self._keys = {key.key_sha256: key for key in settings.api_keys}
        self._entra = settings.entra
        self._jwks: jwt.PyJWKClient | None = None
        if settings.entra is not None:
            # Imported only with Entra ID configured: PyJWT loads cryptography, a tenth of a
            # second at every start of every command that reads the settings.
            import jwt

            self._jwks = jwt.PyJWKClient(
                settings.entra.jwks_url,
                cache_keys=True,
                timeout=10,
                cooldown_duration=settings.entra.jwks_refresh_cooldown_s,
            )
        self._clock = clock
        # Shared with other ingest processes when given (ingest_rates.SqliteBuckets).
        self._buckets = MemoryBuckets() if buckets is None else buckets

    @property
    def enabled(self) -> bool:
        return bool(self._keys) or self._entra is not None

    async def identify(self, headers: Mapping[str, str]) -> Sender | Denied:
        # An empty X-API-Key (a client's unset variable) is no key: the bearer one counts.
        presented = headers.get("x-api-key", "").strip() or None
        authorization = headers.get("authorization", "")
        if presented is None and authorization[:7].lower() == "bearer ":
            presented = authorization[7:].strip()
        if not presented:
            return Denied(
                401, "unauthenticated", "credentials are required (Authorization: Bearer)"
            )
        if self._entra is not None and presented.count(".") == 2:
            return await self._token_sender(presented, self._entra)
        key = self._keys.get(hash_key(presented))
        if key is None:
            return Denied(401, "unauthenticated", "the API key is not known")
        return key

    async def _token_sender(self, token: str, entra: EntraIdSettings) -> Sender | Denied:
        assert self._jwks is not None
        import jwt

        try:
            # The JWKS fetch is a blocking urllib call (cached after the first).
            signing = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
            claims = jwt.decode(
                token,
                signing.key,
                algorithms=["RS256"],
                audience=entra.audience,
                issuer=entra.issuer,
                leeway=entra.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            return Denied(401, "invalid_token", f"the bearer token is not accepted: {exc}")
        client = claims.get("azp") or claims.get("appid") or claims.get("sub") or "token"
        return Sender(
            name=f"entra:{client}",
            apps=entra.apps,
            events_per_s=entra.events_per_s,
            burst=entra.burst,
        )

    def admit(
        self, key: Sender, apps: Counter[str], rejected: Sequence[str | None] = ()
    ) -> Denied | None:
        """None when every app of the accepted events is allowed and every event is within
        rate; then the events are counted. ``rejected``: the app each rejected event names
        (None: none, or the body unreadable as a whole). Those are kept in quarantine, so they
        take tokens too (else a key with a rate could fill the disk with invalid events):
        from the bucket of the app they name when the key may post for it, else from the
        key's bucket of events without such an app."""
        refused = sorted(app for app in apps if not key.allows(app))
        if refused:
            return Denied(
                403, "forbidden_app", f"{key.name!r} may not post for {', '.join(refused)}"
            )
        if key.events_per_s is None:
            return None
        wants = apps.copy()
        for app in rejected:
            wants[app if app is not None and key.allows(app) else WITHOUT_APP] += 1
        waiting = self._buckets.take(key.name, key.events_per_s, key.burst, wants, self._clock())
        if waiting is None:
            return None
        app, wait = waiting
        named = app if app != WITHOUT_APP else "events without an app it may post for"
        if wait == math.inf:  # waiting would not help: the request must be split
            return Denied(
                413,
                "too_many_events",
                f"{wants[app]} events for {named} exceed {key.name!r}'s burst of {key.burst}",
            )
        return Denied(
            429,
            "rate_limited",
            f"{key.name!r} is over {key.events_per_s:g} events/s for {named}",
            retry_after_s=max(1, math.ceil(wait)),
        )
