"""Failed Batch calls without an HTTP status, on the Batch test server: a page that is not the
service's answer and a TLS failure are not retried (the same call fails the same way) and say
what to check; a refused connection is retried within the budget and the error says so."""

from __future__ import annotations

import logging
import socket

import pytest

from coldpath.executors.batch import BatchError, BatchExecutor, BatchMisconfigured
from common.errors import Misconfigured
from common.retry import Backoff
from tests.emulators.batch_fixtures import BatchServer
from tests.integration.coldpath.batch_harness import (
    POOL_ID,
    ensure_pool,
    executor_settings,
    one_off_manifest,
    run_async,
    stage_nowhere,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RETRIES = 2
QUICK = Backoff(initial_s=0.01, max_s=0.02, max_retries=RETRIES)
POOL_ROUTE = "GET /pools/{pool_id}"


def retry_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "common.retry"]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_page_that_is_not_a_batch_answer_is_not_retried(
    batch_server: BatchServer, caplog: pytest.LogCaptureFixture
) -> None:
    run_async(ensure_pool(batch_server))
    settings = executor_settings(batch_server)
    page = "<html><body>Sign in to continue to the network</body></html>"
    batch_server.fail_requests(200, RETRIES + 1, match=f"/pools/{POOL_ID}$", body=page)
    before = batch_server.stats()["requests"].get(POOL_ROUTE, 0)
    caplog.set_level(logging.WARNING, logger="common.retry")

    try:
        with pytest.raises(BatchError) as error:
            run_async(
                BatchExecutor(settings, stage=stage_nowhere, backoff=QUICK).run(one_off_manifest(1))
            )
        # One request: the page was not asked for again.
        assert batch_server.stats()["requests"].get(POOL_ROUTE, 0) - before == 1
    finally:
        batch_server.reset_faults()

    message = str(error.value)
    assert message.startswith(f"reading pool {POOL_ID}: the answer is not a Batch service response")
    assert "azure.batch.account_url" in message and "\n" not in message
    assert error.value.retryable is False
    assert retry_warnings(caplog) == []


def test_a_tls_failure_is_a_setting_to_check_not_retried(
    batch_server: BatchServer, caplog: pytest.LogCaptureFixture
) -> None:
    # https to the server's plain http port: the handshake can never succeed.
    settings = executor_settings(batch_server).model_copy(
        update={"account_url": f"https://{batch_server.host}:{batch_server.port}"}
    )
    caplog.set_level(logging.WARNING, logger="common.retry")

    with pytest.raises(BatchMisconfigured) as error:
        run_async(
            BatchExecutor(settings, stage=stage_nowhere, backoff=QUICK).run(one_off_manifest(1))
        )

    assert isinstance(error.value, Misconfigured) and error.value.retryable is False
    assert "TLS with the Batch account failed" in str(error.value)
    assert "check azure.batch.account_url" in str(error.value)
    assert retry_warnings(caplog) == []


def test_a_refused_connection_is_retried_within_the_budget(
    batch_server: BatchServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = executor_settings(batch_server).model_copy(
        update={"account_url": f"http://127.0.0.1:{closed_port()}"}
    )
    caplog.set_level(logging.WARNING, logger="common.retry")

    with pytest.raises(BatchError) as error:
        run_async(
            BatchExecutor(settings, stage=stage_nowhere, backoff=QUICK).run(one_off_manifest(1))
        )

    message = str(error.value)
    assert not isinstance(error.value, Misconfigured) and error.value.retryable is True
    assert f"reading pool {POOL_ID}: cannot connect to the Batch account" in message
    assert "Connect call failed" in message
    assert message.endswith(f"(gave up after {RETRIES} retries, azure.batch.submit_retries)")
    assert len(retry_warnings(caplog)) == RETRIES
