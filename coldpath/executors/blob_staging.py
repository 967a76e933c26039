"""Manifests staged in Blob storage for Batch tasks, which fetch them by URL.

A manifest is stored once under ``<id>.json`` (its id hashes its content, so staging it again
changes nothing). With an account key the URL handed to tasks carries a read-only SAS, so a node
needs no storage credential; without one the task reads with its managed identity.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime
from types import TracebackType

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobSasPermissions, generate_blob_sas
from azure.storage.blob.aio import BlobClient, BlobServiceClient

from coldpath.exceptions import ColdpathError, ManifestNotFound
from coldpath.executors.batch_config import StagingSettings
from common import redact
from schemas import JobManifest

logger = logging.getLogger(__name__)


class StagingError(ColdpathError):
    """Staging or fetching a manifest failed; ``retryable`` when the cause may pass."""


def _mapped(exc: AzureError, what: str) -> ColdpathError:
    if isinstance(exc, ResourceNotFoundError):
        return ManifestNotFound(f"{what}: not found")
    if isinstance(exc, ClientAuthenticationError):
        return StagingError(f"{what}: not authorised: {exc.message}")
    status = getattr(exc, "status_code", None)
    retryable = status is None or status in (408, 429) or status >= 500
    return StagingError(f"{what}: {exc.message}", retryable=retryable)


class BlobStaging:
    """Stages manifests in the configured container (an async context manager)."""

    def __init__(self, settings: StagingSettings) -> None:
        self.settings = settings
        self._service: BlobServiceClient | None = None
        self._closed = False
        self._container_ready = False

    async def __aenter__(self) -> BlobStaging:
        if self._closed:
            raise RuntimeError("BlobStaging is closed")
        if self.settings.connection_string is not None:
            self._service = BlobServiceClient.from_connection_string(
                self.settings.connection_string.get_secret_value()
            )
        elif self.settings.account_url:
            from azure.identity.aio import DefaultAzureCredential

            self._service = BlobServiceClient(self.settings.account_url, DefaultAzureCredential())
        else:
            raise StagingError(
                "azure.batch.staging: set connection_string or account_url (manifests are "
                "handed to Batch tasks through Blob storage)"
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._closed = True
        if self._service is not None:
            await self._service.close()
            self._service = None

    def _client(self) -> BlobServiceClient:
        if self._service is None:
            raise RuntimeError("BlobStaging is not open")
        return self._service

    async def stage(self, manifest: JobManifest) -> str:
        """Upload the manifest unless present; the URL a task reads it from."""
        service = self._client()
        container = service.get_container_client(self.settings.container)
        name = f"{manifest.id}.json"
        try:
            if not self._container_ready:
                with contextlib.suppress(ResourceExistsError):
                    await container.create_container()
                self._container_ready = True
            blob = container.get_blob_client(name)
            try:
                await blob.upload_blob(manifest.model_dump_json().encode(), overwrite=False)
            except ResourceExistsError:
                logger.debug("manifest %s already staged", manifest.id)
        except AzureError as exc:
            raise _mapped(exc, f"staging manifest {manifest.id}") from exc
        return self._read_url(blob.url, name)

    async def put_text(self, name: str, text: str) -> None:
        """Write (or replace) a text blob, e.g. a shard's result file."""
        blob = self._client().get_blob_client(self.settings.container, name)
        try:
            await blob.upload_blob(text.encode(), overwrite=True)
        except AzureError as exc:
            raise _mapped(exc, f"writing {name}") from exc

    def _read_url(self, url: str, name: str) -> str:
        service = self._client()
        key = getattr(service.credential, "account_key", None)
        if not key:
            return url
        sas = generate_blob_sas(
            account_name=str(service.account_name),
            container_name=self.settings.container,
            blob_name=name,
            account_key=key,
            permission=BlobSasPermissions(read=True),
            expiry=datetime.now(UTC) + self.settings.sas_ttl,
        )
        return f"{url}?{sas}"


async def fetch_manifest(url: str) -> JobManifest:
    """The manifest at ``url`` (a SAS URL, or a plain one read with the managed identity); its
    content is checked against its id."""
    credential = None
    if "sig=" not in url:
        from azure.identity.aio import DefaultAzureCredential

        credential = DefaultAzureCredential()
    try:
        async with BlobClient.from_blob_url(url, credential=credential) as blob:
            stream = await blob.download_blob()
            data = await stream.readall()
    except AzureError as exc:
        raise _mapped(exc, f"manifest {redact.endpoint(url, path=True)}") from exc
    finally:
        if credential is not None:
            await credential.close()
    try:
        return JobManifest.model_validate_json(data)
    except ValueError as exc:
        raise StagingError(
            f"manifest at {redact.endpoint(url, path=True)} is not valid: {exc}"
        ) from exc
