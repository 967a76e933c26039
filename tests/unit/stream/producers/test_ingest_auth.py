"""API keys, app allow-lists and per-(key, app) token buckets, on a clock the test moves."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.sqlite import sqlite3
from stream.producers.ingest_auth import (
    ApiKey,
    Authorizer,
    Denied,
    EntraIdSettings,
    IngestAuthSettings,
    hash_key,
    require_auth_beyond_loopback,
)
from stream.producers.ingest_rates import MemoryBuckets, SqliteBuckets

KEY = ApiKey(name="web", key_sha256=hash_key("s3cret"), apps=("web-app",), events_per_s=2, burst=4)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "sqlite"])
def auth(request: pytest.FixtureRequest, clock: Clock, tmp_path: Path) -> Iterator[Authorizer]:
    # In the process, or in the file every ingest worker process shares: the same rules.
    if request.param == "memory":
        yield Authorizer(IngestAuthSettings(api_keys=(KEY,)), clock)
        return
    buckets = SqliteBuckets(tmp_path / "rates.db")
    yield Authorizer(IngestAuthSettings(api_keys=(KEY,)), clock, buckets)
    buckets.close()


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "credentials are required"),
        ({"authorization": "Basic czNjcmV0"}, "credentials are required"),
        ({"authorization": "Bearer nope"}, "the API key is not known"),
        ({"x-api-key": "S3CRET"}, "the API key is not known"),
    ],
)
async def test_missing_or_unknown_keys_are_401(
    auth: Authorizer, headers: dict[str, str], message: str
) -> None:
    denied = await auth.identify(headers)
    assert isinstance(denied, Denied)
    assert (denied.status, denied.message.startswith(message)) == (401, True)


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "bearer s3cret"},
        {"x-api-key": "s3cret"},
        # An empty X-API-Key beside the bearer key (a client's unset variable) is no key.
        {"x-api-key": "", "authorization": "Bearer s3cret"},
        {"x-api-key": " ", "authorization": "Bearer s3cret"},
    ],
    ids=["bearer", "x-api-key", "empty-x-api-key-and-bearer", "blank-x-api-key-and-bearer"],
)
async def test_a_known_key_is_found_by_its_hash(auth: Authorizer, headers: dict[str, str]) -> None:
    assert await auth.identify(headers) == KEY


def test_an_app_the_key_does_not_list_is_403(auth: Authorizer) -> None:
    denied = auth.admit(KEY, Counter({"web-app": 1, "billing": 1}))
    assert denied == Denied(403, "forbidden_app", "'web' may not post for billing")


def test_the_bucket_allows_its_burst_then_429_until_refilled(
    auth: Authorizer, clock: Clock
) -> None:
    assert auth.admit(KEY, Counter({"web-app": 3})) is None
    denied = auth.admit(KEY, Counter({"web-app": 3}))  # 1 token left, 2 missing at 2/s
    assert denied is not None and (denied.status, denied.retry_after_s) == (429, 1)
    clock.now += 0.9
    assert auth.admit(KEY, Counter({"web-app": 3})) is not None  # 2.8 tokens
    clock.now += 0.1
    assert auth.admit(KEY, Counter({"web-app": 3})) is None
    assert auth.admit(KEY, Counter({"web-app": 1})) is not None  # refused requests took nothing


def test_a_request_without_accepted_events_takes_nothing_and_is_admitted(
    auth: Authorizer,
) -> None:
    # Every event of it rejected: they are answered 422 and quarantined, not rate-limited.
    assert auth.admit(KEY, Counter()) is None
    assert auth.admit(KEY, Counter({"web-app": 4})) is None  # the bucket is still full


def test_more_than_the_burst_in_one_request_is_413(auth: Authorizer) -> None:
    denied = auth.admit(KEY, Counter({"web-app": 5}))
    assert denied is not None and (denied.status, denied.retry_after_s) == (413, None)


def test_workers_sharing_a_buckets_file_share_the_rate(clock: Clock, tmp_path: Path) -> None:
    settings = IngestAuthSettings(api_keys=(KEY,))
    first, second = SqliteBuckets(tmp_path / "rates.db"), SqliteBuckets(tmp_path / "rates.db")
    try:
        one, other = Authorizer(settings, clock, first), Authorizer(settings, clock, second)
        assert one.admit(KEY, Counter({"web-app": 3})) is None
        denied = other.admit(KEY, Counter({"web-app": 3}))  # the first took 3 of the 4
        assert denied is not None and (denied.status, denied.retry_after_s) == (429, 1)
        clock.now += 1.0  # 1 + 2 tokens
        assert other.admit(KEY, Counter({"web-app": 3})) is None
        assert one.admit(KEY, Counter({"web-app": 1})) is not None
    finally:
        first.close()
        second.close()


def test_buckets_are_per_app() -> None:
    key = KEY.model_copy(update={"apps": ("*",)})
    auth = Authorizer(IngestAuthSettings(api_keys=(key,)), Clock())
    assert auth.admit(key, Counter({"a": 4})) is None
    assert auth.admit(key, Counter({"b": 4})) is None
    assert auth.admit(key, Counter({"a": 1})) is not None


@pytest.mark.parametrize(
    ("host", "refused"),
    [
        ("127.0.0.1", False),
        ("::1", False),
        ("localhost", False),
        ("0.0.0.0", True),
        ("10.1.2.3", True),
        ("ingest.example.com", True),
    ],
)
def test_beyond_loopback_needs_a_key(host: str, refused: bool) -> None:
    assert (require_auth_beyond_loopback(host, IngestAuthSettings()) is not None) == refused
    assert require_auth_beyond_loopback(host, IngestAuthSettings(api_keys=(KEY,))) is None


def test_full_buckets_are_forgotten_so_new_app_ids_cannot_pile_them_up(tmp_path: Path) -> None:
    # A key for every app whose producer sends a new app id per request: buckets that are full
    # again (the same as none) are dropped, and a bucket still being refilled is kept exactly.
    memory, shared = MemoryBuckets(), SqliteBuckets(tmp_path / "rates.db")
    try:
        for buckets in (memory, shared):
            for n in range(25_000):
                # 2 tokens a second: every bucket is full again 0.5 s after it was taken from.
                assert buckets.take("web", 2.0, 4, {f"request-{n}": 1}, n / 1000) is None
            # The latest bucket, 3 tokens at 24.999 s (3.002 at 25 s): 4 wait 0.499 s.
            waiting = buckets.take("web", 2.0, 4, {"request-24999": 4}, 25.0)
            assert waiting is not None and waiting[0] == "request-24999"
            assert waiting[1] == pytest.approx(0.499)
        assert len(memory) < 12_000
        with sqlite3.connect(tmp_path / "rates.db") as connection:
            (rows,) = connection.execute("SELECT COUNT(*) FROM buckets").fetchone()
        assert rows < 2_500
    finally:
        shared.close()


@pytest.mark.parametrize(
    ("apps", "said"),
    [
        ((), "no app: give app ids, or '\\*' for every app"),
        (("web app",), "'web app' is neither '\\*' nor an app id"),
        (("web-app", "all"), None),
        (("web-app", "**"), "'\\*\\*' is neither"),
    ],
)
def test_a_key_names_apps_it_can_post_for(apps: tuple[str, ...], said: str | None) -> None:
    # An entry that is no app id matches no event: the key could post nothing for it.
    if said is None:
        assert ApiKey(name="k", key_sha256=hash_key("k"), apps=apps).allows("all")
        return
    with pytest.raises(ValueError, match=said):
        ApiKey(name="k", key_sha256=hash_key("k"), apps=apps)
    with pytest.raises(ValueError, match=said):
        EntraIdSettings(issuer="i", audience="a", jwks_url="https://keys.test/k", apps=apps)


@pytest.mark.parametrize(
    ("second", "said"),
    [
        (ApiKey(name="web", key_sha256=hash_key("other")), "two keys with the same name: web"),
        (ApiKey(name="ops", key_sha256=hash_key("s3cret")), "two keys with the same key_sha256"),
    ],
)
def test_two_keys_share_neither_a_name_nor_a_hash(second: ApiKey, said: str) -> None:
    # A rate is counted under the key's name and a key found by its hash: one would hide the
    # other's apps and rate.
    with pytest.raises(ValueError, match=said):
        IngestAuthSettings(api_keys=(KEY, second))


@pytest.mark.parametrize(
    ("url", "valid"),
    [
        ("https://login.microsoftonline.com/tenant/discovery/v2.0/keys", True),
        ("http://127.0.0.1:8080/keys", True),
        ("file:///etc/keys.json", False),
        ("login.microsoftonline.com/tenant/discovery/v2.0/keys", False),
        ("https://", False),
    ],
)
def test_the_key_set_url_is_an_http_url(url: str, valid: bool) -> None:
    # Found when the settings are read, not as every token's 503 once ingest serves.
    if valid:
        assert EntraIdSettings(issuer="i", audience="a", jwks_url=url).jwks_url == url
        return
    with pytest.raises(ValueError, match="is not an http\\(s\\) URL"):
        EntraIdSettings(issuer="i", audience="a", jwks_url=url)
