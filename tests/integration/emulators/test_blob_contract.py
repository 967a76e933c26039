"""Contract: BlobCheckpointStore (aio) against Azurite behaves as the processor relies on it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore
from azure.storage.blob.aio import BlobServiceClient

from tests.emulators.npm_fixtures import Azurite

pytestmark = pytest.mark.integration

NAMESPACE = "evalstream-test.servicebus.windows.net"
HUB = "telemetry"
GROUP = "$default"


def _etag(value: object) -> str:
    # claim_ownership returns the ETag header quoted ("0x..."), list_ownership the bare value.
    assert isinstance(value, str) and value
    return value.strip('"')


def _ownership(partition: str, owner: str, etag: str | None = None) -> dict[str, object]:
    claim: dict[str, object] = {
        "fully_qualified_namespace": NAMESPACE,
        "eventhub_name": HUB,
        "consumer_group": GROUP,
        "partition_id": partition,
        "owner_id": owner,
    }
    if etag is not None:
        claim["etag"] = etag
    return claim


@pytest.fixture
async def store(azurite: Azurite) -> AsyncIterator[BlobCheckpointStore]:
    container = f"checkpoints-{uuid.uuid4().hex[:12]}"
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        await service.create_container(container)
    # No api_version: the store pins its own, which azurite accepts.
    async with BlobCheckpointStore.from_connection_string(
        azurite.connection_string, container
    ) as checkpoint_store:
        yield checkpoint_store


async def test_claim_new_ownership_returns_etag_and_is_listed(store: BlobCheckpointStore) -> None:
    assert list(await store.list_ownership(NAMESPACE, HUB, GROUP)) == []

    claimed = list(
        await store.claim_ownership([_ownership("0", "owner-a"), _ownership("1", "owner-a")])
    )

    assert sorted(str(c["partition_id"]) for c in claimed) == ["0", "1"]
    assert all(c["etag"] is not None for c in claimed)
    listed = {str(o["partition_id"]): o for o in await store.list_ownership(NAMESPACE, HUB, GROUP)}
    assert set(listed) == {"0", "1"}
    assert {o["owner_id"] for o in listed.values()} == {"owner-a"}
    assert {p: _etag(o["etag"]) for p, o in listed.items()} == {
        str(c["partition_id"]): _etag(c["etag"]) for c in claimed
    }


async def test_renew_with_current_etag_succeeds_and_changes_etag(
    store: BlobCheckpointStore,
) -> None:
    (first,) = await store.claim_ownership([_ownership("0", "owner-a")])
    assert first["etag"] is not None

    (renewed,) = await store.claim_ownership([_ownership("0", "owner-a", str(first["etag"]))])

    assert renewed["etag"] is not None
    assert renewed["etag"] != first["etag"]


async def test_claim_with_stale_etag_is_not_granted(store: BlobCheckpointStore) -> None:
    (first,) = await store.claim_ownership([_ownership("0", "owner-a")])
    stale = str(first["etag"])
    (taken,) = await store.claim_ownership([_ownership("0", "owner-b", stale)])
    assert taken["etag"] is not None

    lost = list(await store.claim_ownership([_ownership("0", "owner-a", stale)]))

    assert lost == []
    (current,) = await store.list_ownership(NAMESPACE, HUB, GROUP)
    assert current["owner_id"] == "owner-b"
    assert _etag(current["etag"]) == _etag(taken["etag"])


async def test_update_and_list_checkpoints(store: BlobCheckpointStore) -> None:
    assert list(await store.list_checkpoints(NAMESPACE, HUB, GROUP)) == []
    base = {"fully_qualified_namespace": NAMESPACE, "eventhub_name": HUB, "consumer_group": GROUP}

    await store.update_checkpoint(
        {**base, "partition_id": "0", "offset": "100", "sequence_number": 7}
    )
    await store.update_checkpoint(
        {**base, "partition_id": "1", "offset": "5", "sequence_number": 1}
    )
    await store.update_checkpoint(
        {**base, "partition_id": "0", "offset": "250", "sequence_number": 9}
    )

    checkpoints = {
        str(c["partition_id"]): c for c in await store.list_checkpoints(NAMESPACE, HUB, GROUP)
    }
    assert set(checkpoints) == {"0", "1"}
    assert checkpoints["0"]["sequence_number"] == 9
    assert str(checkpoints["0"]["offset"]) == "250"
    assert checkpoints["1"]["sequence_number"] == 1


async def test_claim_in_missing_container_returns_ownership_without_etag(azurite: Azurite) -> None:
    # The store swallows the error and hands the claim back without an etag: callers must treat
    # a missing/None etag as "not claimed".
    async with BlobCheckpointStore.from_connection_string(
        azurite.connection_string, f"missing-{uuid.uuid4().hex[:12]}"
    ) as store:
        (result,) = await store.claim_ownership([_ownership("0", "owner-a")])

    assert result.get("etag") is None
    assert result["owner_id"] == "owner-a"
