"""Batch service errors as the REST API returns them: HTTP status, OData error body, error code."""

from __future__ import annotations

from dataclasses import dataclass, field

ODATA_ERROR = "https://batch.local/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element"


@dataclass
class BatchServiceError(Exception):
    """One failed request; `code` is a Batch error code such as ``JobNotFound``."""

    status: int
    code: str
    message: str
    values: dict[str, str] = field(default_factory=dict)
    # Sent as the Retry-After header (throttling faults).
    retry_after_s: int | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def body(self, request_id: str) -> dict[str, object]:
        error: dict[str, object] = {
            "odata.metadata": ODATA_ERROR,
            "code": self.code,
            "message": {"lang": "en-US", "value": f"{self.message}\nRequestId:{request_id}"},
        }
        if self.values:
            error["values"] = [{"key": k, "value": v} for k, v in self.values.items()]
        return error


def not_found(kind: str, ident: str) -> BatchServiceError:
    """``PoolNotFound`` / ``JobNotFound`` / ``TaskNotFound`` / ``FileNotFound``."""
    return BatchServiceError(
        404, f"{kind}NotFound", f"The specified {kind.lower()} does not exist.", {"id": ident}
    )


def exists(kind: str, ident: str) -> BatchServiceError:
    """``PoolExists`` / ``JobExists`` / ``TaskExists``."""
    return BatchServiceError(
        409, f"{kind}Exists", f"The specified {kind.lower()} already exists.", {"id": ident}
    )


def invalid_property(name: str, reason: str) -> BatchServiceError:
    return BatchServiceError(
        400,
        "InvalidPropertyValue",
        "The value provided for one of the properties in the request body is invalid.",
        {"PropertyName": name, "Reason": reason},
    )


def missing_property(name: str) -> BatchServiceError:
    return BatchServiceError(
        400,
        "MissingRequiredProperty",
        "A required property was not specified in the request body.",
        {"PropertyName": name},
    )
