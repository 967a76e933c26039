"""What of a URL is shown: the endpoint, never a password, a SAS token or a webhook's path."""

from __future__ import annotations

import pytest

from common import redact

SECRETS = ("s3cr3t-pw", "s3cr3t-sig", "s3cr3t-frag", "s3cr3t-path")


@pytest.mark.parametrize(
    ("url", "shown", "with_path"),
    [
        (
            "https://admin:s3cr3t-pw@acct.blob.core.windows.net/c?sv=2024&sig=s3cr3t-sig#s3cr3t-frag",
            "https://acct.blob.core.windows.net",
            "https://acct.blob.core.windows.net/c",
        ),
        (
            "https://acct.westeurope.batch.azure.com",
            "https://acct.westeurope.batch.azure.com",
            "https://acct.westeurope.batch.azure.com",
        ),
        ("http://127.0.0.1:8081/", "http://127.0.0.1:8081", "http://127.0.0.1:8081/"),
        ("https://[::1]:443/x?sig=s3cr3t-sig", "https://[::1]:443", "https://[::1]:443/x"),
        # Typed without "//": urlsplit would read the userinfo as a scheme and a path.
        (
            "admin:s3cr3t-pw@acct.example.com/c?sig=s3cr3t-sig",
            "acct.example.com",
            "acct.example.com/c",
        ),
        (
            "https:/admin:s3cr3t-pw@acct.example.com/c?sig=s3cr3t-sig",
            "https://acct.example.com",
            "https://acct.example.com/c",
        ),
        ("localhost:99999/c?sig=s3cr3t-sig", "localhost:99999", "localhost:99999/c"),
        # A port urlsplit refuses, as when a connection string's key follows it.
        (
            "https://acct.documents.azure.com:443;AccountKey=s3cr3t-pw==",
            "https://acct.documents.azure.com:443",
            "https://acct.documents.azure.com:443",
        ),
        ("https://admin:s3cr3t-pw@/x?sig=s3cr3t-sig", "https://", "https:///x"),
    ],
)
def test_an_endpoint_is_scheme_host_and_port_and_the_path_when_asked(
    url: str, shown: str, with_path: str
) -> None:
    assert redact.endpoint(url) == shown
    assert redact.endpoint(url, path=True) == with_path
    assert not any(secret in redact.scrub(f"error at {url}", url) for secret in SECRETS)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.slack.com/services/T000/B000/s3cr3t-path",
        "https://admin:s3cr3t-pw@hooks.slack.com/services/T000/B000/s3cr3t-path?sig=s3cr3t-sig",
        "hooks.slack.com/services/T000/B000/s3cr3t-path",
        "http://hooks.slack.com:99999/services/T000/B000/s3cr3t-path",
    ],
)
def test_a_webhook_is_its_host_and_a_fingerprint_of_its_path(url: str) -> None:
    shown = redact.webhook(url)
    assert "hooks.slack.com" in shown
    assert "/<sha256:" in shown
    assert not any(secret in shown for secret in SECRETS), shown
    assert "services" not in shown


def test_a_webhooks_fingerprint_tells_two_hooks_of_one_host_apart() -> None:
    first = "https://hooks.slack.com/services/T000/B000/s3cr3t-path"
    second = "https://hooks.slack.com/services/T000/B000/other-path"
    assert redact.webhook(first) == redact.webhook(first)
    assert redact.webhook(first) != redact.webhook(second)
    assert redact.webhook(f"{first}?sig=a") != redact.webhook(f"{first}?sig=b")
    assert redact.webhook("https://hooks.example.com/") == "https://hooks.example.com/"


def test_scrub_takes_every_secret_part_out_of_a_text_that_quotes_the_url() -> None:
    url = "https://admin:s3cr3t-pw@hooks.example.com/s3cr3t-path?sv=1&sig=s3cr3t%2Dsig#s3cr3t-frag"
    text = (
        f"Cannot POST {url}; path /s3cr3t-path, query sv=1&sig=s3cr3t-sig, "
        "password s3cr3t-pw, fragment s3cr3t-frag"
    )
    scrubbed = redact.scrub(text, url)
    assert not any(secret in scrubbed for secret in SECRETS), scrubbed
    assert scrubbed.startswith("Cannot POST https://<redacted>@hooks.example.com<redacted>;")


def test_scrub_leaves_a_text_without_the_url_and_short_parts_alone() -> None:
    assert redact.scrub("connection refused", "https://h.example/x?a=1") == "connection refused"
    assert redact.scrub("a 1 x", "https://u:a@h.example/x?a=1") == "a 1 x"


@pytest.mark.parametrize(
    ("connection_string", "shown"),
    [
        (
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=root;"
            "SharedAccessKey=s3cr3t-pw=",
            "sb://ns.servicebus.windows.net",
        ),
        (
            "AccountEndpoint=https://acct.documents.azure.com:443/;AccountKey=s3cr3t-pw==;",
            "https://acct.documents.azure.com:443",
        ),
        (
            "BlobEndpoint=https://acct.blob.core.windows.net/;"
            "SharedAccessSignature=sv=2024&sig=s3cr3t-sig",
            "https://acct.blob.core.windows.net",
        ),
        (
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=s3cr3t-pw==;"
            "EndpointSuffix=core.windows.net",
            "<redacted>",
        ),
    ],
)
def test_a_connection_string_is_its_endpoint(connection_string: str, shown: str) -> None:
    assert redact.endpoint(connection_string) == shown
    scrubbed = redact.scrub(f"bad setting {connection_string}", connection_string)
    assert not any(secret in scrubbed for secret in SECRETS), scrubbed


def test_scrub_takes_out_a_piece_a_library_quotes_alone() -> None:
    # httpx: "Invalid port: '...'"; a server's 404 page may quote the hook's last segment.
    assert redact.scrub("Invalid port: 's3cr3t-pw'", "https://res.example.com:s3cr3t-pw/") == (
        "Invalid port: '<redacted>'"
    )
    assert redact.scrub(
        "no hook s3cr3t-path", "https://hooks.example.com/services/T000/B000/s3cr3t-path"
    ) == ("no hook <redacted>")


def test_scrub_takes_a_connection_strings_keys_out_and_leaves_its_other_settings() -> None:
    connection_string = (
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=s3cr3t-pw==;"
        "EndpointSuffix=core.windows.net"
    )
    text = "GET https://acct.blob.core.windows.net failed with key s3cr3t-pw=="
    assert redact.scrub(text, connection_string) == (
        "GET https://acct.blob.core.windows.net failed with key <redacted>"
    )


def test_scrub_urls_shows_every_url_of_a_text_as_a_webhook_and_scrubs_its_echoes() -> None:
    hook = "https://hooks.example.com/services/T0/B0/XXsecretXX?token=s3cret-token"
    longer = "https://hooks.example.com/services/T0/B0/XXsecretXX/more"
    text = f"POST {hook} answered 500: no such hook /services/T0/B0/XXsecretXX?token=s3cret-token"
    assert redact.scrub_urls(text) == (
        f"POST {redact.webhook(hook)} answered 500: no such hook <redacted>"
    )
    # A URL that starts another, and one closing a sentence: each shown whole, its own.
    assert redact.scrub_urls(f"tried {longer} then ({hook}).") == (
        f"tried {redact.webhook(longer)} then ({redact.webhook(hook)})."
    )


@pytest.mark.parametrize(
    "text",
    [
        "MaxDeliveryCountExceeded",
        "POST http://127.0.0.1:9/<sha256:7382f7b8> failed: ConnectError: refused",
        "POST https://hooks.example.com/ answered 404",
    ],
)
def test_scrub_urls_leaves_a_text_without_secret_urls_as_it_is(text: str) -> None:
    assert redact.scrub_urls(text) == text
