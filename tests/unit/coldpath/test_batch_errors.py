"""What the Batch executor's errors name: the account by its endpoint, never what its URL may
carry besides (userinfo, a SAS)."""

from __future__ import annotations

from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from pydantic import SecretStr

from coldpath.executors.batch import BatchExecutor, BatchMisconfigured
from coldpath.executors.batch_config import BatchSettings, PoolSettings
from schemas import JobManifest


class NoPools:
    """A Batch client in which no pool exists."""

    async def get_pool(self, pool_id: str, **_: Any) -> None:
        raise ResourceNotFoundError(f"The specified pool {pool_id} does not exist.")


async def never_staged(_: JobManifest) -> str:
    raise AssertionError("not staged")


async def test_a_missing_pool_names_the_account_without_its_secrets() -> None:
    settings = BatchSettings(
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
