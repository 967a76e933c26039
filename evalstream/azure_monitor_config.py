"""Settings of the optional metrics export to Azure Monitor (``evalstream.azure_monitor``),
apart from it so that reading the settings does not import OpenTelemetry."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, SecretStr

from schemas.bounds import PositiveSeconds


class AzureMonitorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Application Insights' connection string (InstrumentationKey=…;IngestionEndpoint=…);
    # unset: no export.
    connection_string: SecretStr | None = None
    export_interval_s: PositiveSeconds = 60.0
