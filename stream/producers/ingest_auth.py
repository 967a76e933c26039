"""Who may post to ingest, for which apps, and how fast: API keys, Microsoft Entra ID tokens and
per-(sender, app) rates.

Keys are configured by their SHA-256 only (``evalstream ingest-key`` makes a key and prints the
setting), so a leaked config file leaks no key. A request names its key as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. With ``entra`` configured, a bearer
value that is a JWT is checked as an Entra ID access token instead: RS256 signature against the
tenant's JWKS (``SigningKeys``: fetched, kept, fetched again for an unknown ``kid`` so key
rotation works), ``iss``, ``aud``, ``exp``/``nbf``; the sender is its ``azp``/``appid`` claim.

* no credentials, an unknown key or a token that fails a check → 401 (``WWW-Authenticate:
  Bearer``), the reason in the body;
* a token that cannot be checked because the tenant's key set cannot be had now (unreachable,
  too slow, not a key set) → 503 with ``Retry-After``: the token was not judged;
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
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
)

from schemas.bounds import PositiveCount, PositiveSeconds, Rate, Seconds
from schemas.telemetry import APP_ID_PATTERN, is_app_id
from stream.exceptions import StreamError
from stream.producers.ingest_rates import Buckets, MemoryBuckets

if TYPE_CHECKING:
    import jwt

logger = logging.getLogger(__name__)

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
    # The whole fetch (connect, answer, body): a request waiting on it is answered 503 then.
    jwks_timeout_s: PositiveSeconds = 10.0
    # After a failed fetch, tokens that need the key set are answered 503 for this long without
    # fetching again (the answer's Retry-After), so a failing endpoint is not asked per request.
    jwks_retry_s: Seconds = 5.0

    @field_validator("jwks_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        # Checked with the settings: a URL of another kind could never be fetched.
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http(s) URL")
        return url


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


class KeysUnavailable(StreamError):
    """The tenant's key set cannot be had now: a token needing it cannot be judged."""

    retryable = True


class SigningKeys:
    """The signing keys of one tenant's JWKS by ``kid``, fetched on the event loop (no thread:
    a fetch that never ends cannot hold a thread other work needs, nor delay shutdown).

    ``key`` answers a known ``kid`` from memory. For an unknown one it fetches the set again,
    at most once per ``refresh_cooldown_s`` after a fetch that succeeded (made-up kids cannot
    make us hammer the endpoint), and raises ``jwt.PyJWKClientError`` if the kid is still
    unknown. One fetch at a time: callers that need it meanwhile wait for that one. A fetch
    lasts at most ``timeout_s``; when it fails, whatever the reason (refused, reset, too slow,
    an HTTP error, not a key set), every caller waiting for it, and every caller needing a
    fetch during ``retry_s`` after, raises ``KeysUnavailable``. The keys of the latest fetch
    that succeeded keep being used meanwhile.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        refresh_cooldown_s: float,
        retry_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.refresh_cooldown_s = refresh_cooldown_s
        self.retry_s = retry_s
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] | None = None
        self._fetched_at = -math.inf
        # Why the latest fetch failed (None: it succeeded), and until when not to fetch again.
        self._failure: str | None = None
        self._retry_at = -math.inf
        self._fetching: asyncio.Task[None] | None = None

    async def key(self, kid: str) -> jwt.PyJWK:
        import jwt

        if self._keys is not None and kid in self._keys:
            return self._keys[kid]
        if not self._joinable():
            now = self._clock()
            if self._failure is not None and now < self._retry_at:
                raise KeysUnavailable(self._failure, retry_after=self._retry_at - now)
            if self._keys is not None and now - self._fetched_at < self.refresh_cooldown_s:
                raise jwt.PyJWKClientError(f'Unable to find a signing key that matches: "{kid}"')
            self._fetching = asyncio.create_task(self._fetch())
        assert self._fetching is not None
        # Shielded: a caller that goes away (its client disconnected) leaves the fetch to the
        # others waiting for it; the fetch ends by itself within timeout_s.
        await asyncio.shield(self._fetching)
        if self._failure is not None:
            raise KeysUnavailable(self._failure, retry_after=self.retry_s)
        if self._keys is None or kid not in self._keys:
            raise jwt.PyJWKClientError(f'Unable to find a signing key that matches: "{kid}"')
        return self._keys[kid]

    def _joinable(self) -> bool:
        # A task of another event loop (a test's, closed) can never be awaited here.
        fetching = self._fetching
        return (
            fetching is not None
            and not fetching.done()
            and fetching.get_loop() is asyncio.get_running_loop()
        )

    async def _fetch(self) -> None:
        """Fetch the key set and keep it, or keep why it could not be had; raises nothing (a
        task's exception no waiter retrieved would be logged as lost)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                keys = await self._get()
        except TimeoutError:
            failure = f"no key set within {self.timeout_s:g} s"
        except KeysUnavailable as exc:
            failure = str(exc)
        except Exception as exc:
            # Whatever a key server answers or a connection does is a fault of the key set,
            # not of the token: none of it may become a 500, nor a 401.
            failure = f"{type(exc).__name__}: {exc}".rstrip(": ")
        else:
            self._keys, self._fetched_at, self._failure = keys, self._clock(), None
            return
        self._failure, self._retry_at = failure, self._clock() + self.retry_s
        logger.warning("the signing keys of %s cannot be fetched: %s", self.url, failure)

    async def _get(self) -> dict[str, jwt.PyJWK]:
        # Imported here, as jwt is: httpx takes a while to import and most commands never fetch.
        import httpx
        import jwt

        async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False) as client:
            response = await client.get(self.url, headers={"accept": "application/json"})
        if response.status_code != 200:
            raise KeysUnavailable(f"HTTP {response.status_code} {response.reason_phrase}")
        try:
            document = response.json()
        except ValueError as exc:
            raise KeysUnavailable(f"the answer is not JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise KeysUnavailable("the answer is not a JSON object")
        try:
            found = jwt.PyJWKSet.from_dict(document).keys
        except jwt.PyJWTError as exc:
            raise KeysUnavailable(f"the answer is not a usable key set: {exc}") from exc
        # Only RSA signing keys can check an RS256 token: a token naming another key (an EC
        # one would make PyJWT raise TypeError) finds none, as if its kid were unknown.
        keys = {
            key.key_id: key
            for key in found
            if key.key_id is not None
            and key.key_type == "RSA"
            and key.public_key_use in ("sig", None)
        }
        if not keys:
            raise KeysUnavailable("the key set holds no RSA signing key with a kid")
        return keys


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
        self._jwks: SigningKeys | None = None
        if settings.entra is not None:
            self._jwks = SigningKeys(
                settings.entra.jwks_url,
                timeout_s=settings.entra.jwks_timeout_s,
                refresh_cooldown_s=settings.entra.jwks_refresh_cooldown_s,
                retry_s=settings.entra.jwks_retry_s,
                clock=clock,
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
        # Imported only with Entra ID configured: PyJWT loads cryptography, a tenth of a
        # second at every start of every command that reads the settings.
        import jwt

        try:
            kid = jwt.get_unverified_header(token).get("kid")
            if not isinstance(kid, str):
                # No lookup, so no fetch: such a token can match no key of the set.
                raise jwt.InvalidTokenError("the token names no signing key (a string kid)")
            signing = await self._jwks.key(kid)
            claims = jwt.decode(
                token,
                signing.key,
                algorithms=["RS256"],
                audience=entra.audience,
                issuer=entra.issuer,
                leeway=entra.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except KeysUnavailable as exc:
            return Denied(
                503,
                "keys_unavailable",
                f"the bearer token cannot be checked now: the signing keys of {self._jwks.url} "
                f"could not be fetched ({exc}); send again later",
                retry_after_s=max(1, math.ceil(exc.retry_after or 0)),
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
