"""Failed Batch calls without an HTTP status, classified: connection failures retryable, a
missing credential, a name that does not exist, a TLS failure and a malformed answer not."""

from __future__ import annotations

import json
import socket
import ssl

import pytest
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DecodeError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity import CredentialUnavailableError

from coldpath.executors.batch_errors import BatchMisconfigured, map_error


@pytest.mark.parametrize(
    ("exc", "retryable", "says"),
    [
        (
            ServiceRequestError("refused", error=ConnectionRefusedError(111, "refused")),
            True,
            "cannot connect to the Batch account",
        ),
        (
            ServiceRequestError(
                "dns", error=socket.gaierror(socket.EAI_AGAIN, "Temporary failure")
            ),
            True,
            "cannot connect to the Batch account",
        ),
        (
            ServiceResponseError("reset", error=ConnectionResetError(104, "reset")),
            True,
            "the connection broke before the answer arrived",
        ),
        (
            ServiceRequestError("dns", error=socket.gaierror(socket.EAI_NONAME, "not known")),
            False,
            "host name does not exist",
        ),
        (
            ServiceRequestError("tls", error=ssl.SSLCertVerificationError("verify failed")),
            False,
            "TLS with the Batch account failed",
        ),
        (
            CredentialUnavailableError("EnvironmentCredential: not configured"),
            False,
            "no credential for the Batch account",
        ),
        (
            ClientAuthenticationError("token request failed"),
            False,
            "no credential for the Batch account",
        ),
        (
            json.JSONDecodeError("Expecting value", "<html>", 0),
            False,
            "the answer is not a Batch service response",
        ),
        (
            DecodeError("JSON is invalid\nContent: <html>"),
            False,
            "the answer is not a Batch service response",
        ),
        (AzureError("something else"), False, "AzureError: something else"),
    ],
    ids=[
        "refused",
        "dns-temporary",
        "reset",
        "dns-no-such-name",
        "tls",
        "no-credential",
        "token-refused",
        "not-json",
        "decode",
        "unknown",
    ],
)
def test_failures_without_a_status(exc: Exception, retryable: bool, says: str) -> None:
    error = map_error(exc, "reading job j")
    assert error.retryable is retryable
    assert str(error).startswith("reading job j: ") and says in str(error)
    assert "\n" not in str(error)
    assert isinstance(error, BatchMisconfigured) is (says in MISCONFIGURED)


MISCONFIGURED = (
    "host name does not exist",
    "TLS with the Batch account failed",
    "no credential for the Batch account",
)


@pytest.mark.parametrize(
    ("status", "retryable"), [(503, True), (429, True), (408, True), (400, False)]
)
def test_answers_with_a_status_keep_their_rule(status: int, retryable: bool) -> None:
    # 408, 429 and 5xx are passing; another status is the request's own fault.
    exc = HttpResponseError("refused")
    exc.status_code = status
    assert map_error(exc, "adding tasks").retryable is retryable
