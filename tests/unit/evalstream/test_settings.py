"""Settings: defaults, TOML file, environment over file, per-app inheritance, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from evalstream.settings import DEFAULT_PARTITIONS, SettingsError, load_settings
from schemas import AppDirectory
from stream.exceptions import SourceError
from stream.sources.local_log import LocalLog, created_partitions

CONFIG = """
backend = "embedded"

[embedded]
data_dir = "/tmp/evalstream-test"
partitions = 6

[processor]
batch_size = 250

[apps.defaults.metadata]
owner = "platform"

[apps.defaults.slo]
latency_threshold_ms = 1500

[apps.overrides.checkout-bot.metadata]
owner = "payments"
tier = "critical"

[apps.overrides.checkout-bot.slo]
latency_threshold_ms = 800
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "evalstream.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "EVALSTREAM_CONFIG",
        "EVALSTREAM_PROCESSOR__BATCH_SIZE",
        "EVALSTREAM_BACKEND",
        "EVALSTREAM_EMBEDDED__PARTITIONS",
    ):
        monkeypatch.delenv(name, raising=False)
    # The default data dir is relative: a log left there by a run must not decide a default.
    monkeypatch.chdir(tmp_path)


def test_defaults_need_no_file() -> None:
    settings = load_settings()
    assert settings.backend == "embedded"
    assert settings.processor.batch_size == 1000
    assert settings.embedded.partitions == 8


def test_an_existing_log_keeps_its_partition_count_unless_one_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    LocalLog(data_dir / "log.db", 4).close()  # a data dir made when the default was 4
    assert load_settings(data_dir=data_dir).embedded.partitions == 4
    assert load_settings(embedded={"data_dir": data_dir}).embedded.partitions == 4
    assert load_settings(data_dir=tmp_path / "new").embedded.partitions == DEFAULT_PARTITIONS
    monkeypatch.setenv("EVALSTREAM_EMBEDDED__PARTITIONS", "8")
    chosen = load_settings(data_dir=data_dir).embedded
    assert chosen.partitions == 8
    with pytest.raises(SourceError, match=r"has 4 partitions but embedded\.partitions is 8"):
        LocalLog(chosen.log_path, chosen.partitions)


def test_created_partitions_reads_only_an_existing_log(tmp_path: Path) -> None:
    assert created_partitions(tmp_path / "log.db") is None
    assert not (tmp_path / "log.db").exists()
    LocalLog(tmp_path / "log.db", 3).close()
    assert created_partitions(tmp_path / "log.db") == 3
    (tmp_path / "other.db").write_bytes(b"not a database")
    assert created_partitions(tmp_path / "other.db") is None


def test_file_values_are_read(config_file: Path) -> None:
    settings = load_settings(config=config_file)
    assert settings.embedded.partitions == 6
    assert settings.processor.batch_size == 250
    assert settings.embedded.store_path == Path("/tmp/evalstream-test/store.db")


def test_environment_overrides_file(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALSTREAM_PROCESSOR__BATCH_SIZE", "99")
    settings = load_settings(config=config_file)
    assert settings.processor.batch_size == 99
    assert settings.embedded.partitions == 6


def test_config_path_from_environment(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALSTREAM_CONFIG", str(config_file))
    assert load_settings().processor.batch_size == 250


def test_app_overrides_inherit_root_defaults(config_file: Path) -> None:
    apps = load_settings(config=config_file).apps
    checkout = apps.resolve("checkout-bot")
    assert checkout.metadata.owner == "payments"
    assert checkout.metadata.tier == "critical"
    assert checkout.metadata.project_code == "unassigned"
    assert checkout.slo.latency_threshold_ms == 800
    # Untouched fields of an overridden section come from the root defaults.
    assert checkout.slo.error_budget == apps.defaults.slo.error_budget


def test_unknown_app_gets_root_defaults(config_file: Path) -> None:
    apps = load_settings(config=config_file).apps
    unknown = apps.resolve("never-configured")
    assert unknown == apps.defaults
    assert unknown.metadata.owner == "platform"
    assert unknown.slo.latency_threshold_ms == 1500


def test_wrong_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALSTREAM_PROCESSOR__BATCH_SIZE", "-5")
    with pytest.raises(
        SettingsError, match=r"processor\.batch_size: Input should be greater than 0"
    ):
        load_settings()


def test_misspelt_setting_in_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[processor]\nbatch_sise = 10\n")
    with pytest.raises(
        SettingsError, match=r"processor\.batch_sise: Extra inputs are not permitted"
    ):
        load_settings(config=path)


@pytest.mark.parametrize(
    ("variable", "name"),
    [
        ("EVALSTREAM_BACKND", "backnd"),
        ("EVALSTREAM_USER_HASH_KY", "user_hash_ky"),
        ("EVALSTREAM_PROCESOR__BATCH_SIZE", "procesor"),
    ],
)
def test_misspelt_setting_in_the_environment_is_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, name: str
) -> None:
    """A nested field's typo was refused, a top-level one ignored: a pod whose manifest said
    EVALSTREAM_BACKND=azure ran on the embedded backend."""
    monkeypatch.setenv(variable, "azure")
    with pytest.raises(SettingsError, match=rf"{variable}: .*no setting {name}"):
        load_settings()


def test_bad_app_override_is_named() -> None:
    with pytest.raises(ValueError, match="latency_threshold"):
        AppDirectory(overrides={"a": {"slo": {"latency_threshold": 5}}})


@pytest.mark.parametrize("app_id", ["web app", "web/app", "", "a" * 129])
def test_an_override_for_what_is_not_an_app_id_is_named(tmp_path: Path, app_id: str) -> None:
    # It could never apply: no event has such an app id.
    path = tmp_path / "apps.toml"
    path.write_text(f'[apps.overrides."{app_id}"]\nslo = {{ latency_threshold_ms = 5 }}\n')
    with pytest.raises(SettingsError, match=r"apps\.overrides\..*\[key\]: String should match"):
        load_settings(config=path)


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(config=tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"[processor\nbatch_size = 10\n", r"not valid TOML in UTF-8: .*line 1"),
        (b"x = [\n", r"not valid TOML in UTF-8: Invalid value"),
        (b"\xff\xfe[\x00p\x00]\x00", r"not valid TOML in UTF-8: 'utf-8' codec can't decode"),
    ],
    ids=["unclosed-table", "unclosed-array", "utf-16"],
)
def test_unreadable_config_file_is_one_error(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(SettingsError, match=reason) as refused:
        load_settings(config=path)
    assert str(refused.value).startswith(f"config file {path} is not valid TOML")


@pytest.mark.parametrize("variable", ["EVALSTREAM_APPS", "EVALSTREAM_PROCESSOR"])
def test_nested_setting_that_is_not_json_is_named(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "{batch_size: 10")
    field = variable.removeprefix("EVALSTREAM_").lower()
    with pytest.raises(SettingsError, match=rf'field "{field}" .*: Expecting property name'):
        load_settings()


BLOB_ACCOUNT_URLS = (
    "azure.batch.staging.account_url",
    "azure.eventhubs.checkpoint_account_url",
    "replay.capture.account_url",
)


@pytest.mark.parametrize("setting", BLOB_ACCOUNT_URLS)
@pytest.mark.parametrize(
    "url",
    [
        # The SDK's first request failed quoting it whole, the SAS with it:
        # "https://acct.blob.core.windows.net:<key>/c?restype=container&comp=list&sig=<sas>".
        "https://acct.blob.core.windows.net:s3cr3t-key/?sv=2024&sig=s3cr3t-sig",
        "https://admin:s3cr3t-pw@acct.blob.core.windows.net/?sig=s3cr3t-sig",
        "acct.blob.core.windows.net/?sig=s3cr3t-sig",
    ],
)
def test_a_blob_account_url_that_is_not_one_is_refused_without_quoting_it(
    setting: str, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVALSTREAM_" + setting.upper().replace(".", "__"), url)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    said = str(refused.value)
    assert f"{setting}: " in said
    assert "s3cr3t" not in said


@pytest.mark.parametrize("setting", BLOB_ACCOUNT_URLS)
@pytest.mark.parametrize(
    "url",
    [
        "https://acct.blob.core.windows.net",
        "http://127.0.0.1:10000/devstoreaccount1",  # Azurite's: the account in the path
        "https://acct.blob.core.windows.net/?sv=2024-11-04&ss=b&sig=abc%3D",  # a SAS
    ],
)
def test_a_blob_account_url_is_taken_as_it_is(
    setting: str, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVALSTREAM_" + setting.upper().replace(".", "__"), url)
    settings = load_settings()
    section, *path, field = setting.split(".")
    value: object = getattr(settings, section)
    for name in path:
        value = getattr(value, name)
    assert getattr(value, field) == url


@pytest.mark.parametrize(
    "setting",
    ["azure.eventhubs.fully_qualified_namespace", "azure.servicebus.fully_qualified_namespace"],
)
@pytest.mark.parametrize(
    "name",
    [
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=root;SharedAccessKey=s3cr3t=",
        "ns.servicebus.windows.net:s3cr3t",  # the SDK's error quoted the port
        "sb://ns.servicebus.windows.net/",
        "",
    ],
)
def test_a_namespace_that_is_no_host_name_is_refused_without_quoting_it(
    setting: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVALSTREAM_" + setting.upper().replace(".", "__"), name)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    said = str(refused.value)
    assert f"{setting}: Value error, is not a namespace host name (NAMESPACE." in said
    assert "s3cr3t" not in said


def test_a_namespace_host_name_is_taken_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALSTREAM_AZURE__EVENTHUBS__FULLY_QUALIFIED_NAMESPACE", "hubs.example.net")
    monkeypatch.setenv("EVALSTREAM_AZURE__SERVICEBUS__FULLY_QUALIFIED_NAMESPACE", "127.0.0.1:5672")
    settings = load_settings()
    assert settings.azure.eventhubs.fully_qualified_namespace == "hubs.example.net"
    assert settings.azure.servicebus.fully_qualified_namespace == "127.0.0.1:5672"


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://res.openai.azure.com:s3cr3t-key/",
        "https://res.openai.azure.com/?api-key=s3cr3t-key",
        "https://admin:s3cr3t-key@res.openai.azure.com/",
    ],
)
def test_a_judge_endpoint_holding_a_key_is_refused_without_quoting_it(
    endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Accepted, every judge call failed with the SDK's error quoting it ("InvalidURL: Invalid
    port: '<key>'"), kept as the metric's reason in the results that reports show."""
    monkeypatch.setenv("EVALSTREAM_COLDPATH__JUDGE__ENDPOINT", endpoint)
    monkeypatch.setenv("EVALSTREAM_COLDPATH__JUDGE__DEPLOYMENT", "judge-4o")
    monkeypatch.setenv("EVALSTREAM_COLDPATH__JUDGE__API_KEY", "a-key")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    said = str(refused.value)
    assert "coldpath.judge.endpoint: " in said
    assert "s3cr3t" not in said
    monkeypatch.setenv("EVALSTREAM_COLDPATH__JUDGE__ENDPOINT", "https://gateway.example.net/aoai")
    judge = load_settings().coldpath.judge
    assert judge is not None and judge.endpoint == "https://gateway.example.net/aoai"
