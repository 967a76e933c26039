"""Event Hubs settings are checked before any connection is made."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from stream.exceptions import SourceError
from stream.sources.eventhubs_config import EventHubsSettings, check_settings

CONNECTION = "Endpoint=sb://ns.example/;SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0;"
CHECKPOINTS = SecretStr("UseDevelopmentStorage=true")


def test_connection_string_naming_another_hub_is_refused() -> None:
    settings = EventHubsSettings(
        connection_string=SecretStr(CONNECTION + "EntityPath=orders"),
        eventhub_name="telemetry",
        checkpoint_connection_string=CHECKPOINTS,
    )
    with pytest.raises(SourceError, match="names the hub 'orders'"):
        check_settings(settings, checkpoints=True)


@pytest.mark.parametrize("suffix", ["EntityPath=telemetry", ""])
def test_matching_or_absent_entity_path_is_accepted(suffix: str) -> None:
    settings = EventHubsSettings(
        connection_string=SecretStr(CONNECTION + suffix),
        eventhub_name="telemetry",
        checkpoint_connection_string=CHECKPOINTS,
    )
    check_settings(settings, checkpoints=True)
    assert settings.eventhub_name == "telemetry"
