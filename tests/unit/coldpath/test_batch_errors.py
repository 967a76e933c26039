"""What the Batch settings and executor's errors name: the account by its endpoint, never what
its URL may carry besides (userinfo, a SAS, a key)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from pydantic import SecretStr, ValidationError

from coldpath.executors.batch import BatchExecutor, BatchMisconfigured
from coldpath.executors.batch_config import BatchSettings, PoolSettings
from common.errors import EvalstreamError
from evalstream.settings import load_settings
from schemas import JobManifest


class NoPools:
    """A Batch client in which no pool exists."""

    async def get_pool(self, pool_id: str, **_: Any) -> None:
        raise ResourceNotFoundError(f"The specified pool {pool_id} does not exist.")


async def never_staged(_: JobManifest) -> str:
    raise AssertionError("not staged")


@pytest.mark.parametrize(
    "url",
    [
        "acct.westeurope.batch.azure.com/?sig=s3cr3t-sig",
        "https://admin:s3cr3t-pw@acct.westeurope.batch.azure.com",
        "https://acct.westeurope.batch.azure.com/?sig=s3cr3t-sig",
        "https://acct.westeurope.batch.azure.com/s3cr3t-path",
        "https://acct.westeurope.batch.azure.com:443;AccountKey=s3cr3t-key",
    ],
)
def test_an_account_url_holding_a_secret_is_refused_without_quoting_it(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Accepted, the SDK quoted it whole at the first request ('reading pool p:
    acct.westeurope.batch.azure.com/pools/p?sig=...&api-version=...'), and the missing pool's
    error named it."""
    monkeypatch.setenv("EVALSTREAM_AZURE__BATCH__ACCOUNT_URL", url)
    with pytest.raises(EvalstreamError) as refused:
        load_settings(data_dir=tmp_path)
    said = str(refused.value)
    assert "azure.batch.account_url" in said
    assert "is not a URL" in said or "https://ACCOUNT.REGION.batch.azure.com" in said
    assert "s3cr3t" not in said
    with pytest.raises(ValidationError):
        BatchSettings(account_url=url)


def test_an_account_url_is_taken_as_it_is() -> None:
    for url in ("https://acct.westeurope.batch.azure.com", "http://127.0.0.1:8443/"):
        assert BatchSettings(account_url=url).account_url == url


async def test_a_missing_pool_names_the_account_without_its_secrets() -> None:
    # Settings made without their checks (model_construct), as a program using the executor
    # may: the error still shows the endpoint only.
    settings = BatchSettings.model_construct(
        account_url="https://admin:s3cr3t-pw@acct.westeurope.batch.azure.com/?sig=s3cr3t-sig",
        account_name="acct",
        account_key=SecretStr("a2V5"),
        pool=PoolSettings(id="missing"),
    )
    executor = BatchExecutor(settings, stage=never_staged)
    with pytest.raises(BatchMisconfigured) as error:
        await executor._check_pool(NoPools())  # type: ignore[arg-type]
    said = str(error.value)
    assert said.startswith(
        "Batch pool 'missing' does not exist in https://acct.westeurope.batch.azure.com: "
    )
    assert "s3cr3t" not in said
