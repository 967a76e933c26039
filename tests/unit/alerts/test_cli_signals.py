"""``alerts listen`` as a real process: SIGTERM stops it gracefully, Ctrl-C (SIGINT) at once; a
failing webhook's errors name its host, never its path."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alerts import SubscriptionSpec
from alerts.sqlite_bus import SqliteAlertPublisher, SqliteAlertReceiver
from evalstream.cli.alerts import alerts_app
from tests.unit.alerts.conftest import HOOK_SECRETS, Hook
from tests.unit.alerts.factories import make_breach

ROOT = Path(__file__).resolve().parents[3]
SPEC = SubscriptionSpec("all")
CLI = "from evalstream.cli.alerts import alerts_app; alerts_app()"


def start_listener(tmp_path: Path, *options: str, config_text: str = "") -> subprocess.Popen[str]:
    config = tmp_path / "evalstream.toml"
    config.write_text(f'[embedded]\ndata_dir = "{tmp_path}"\n{config_text}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVALSTREAM_")}
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "-c", CLI, "listen", "-s", "all", "--json", *options]
    return subprocess.Popen(
        [*command, "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_exit(process: subprocess.Popen[str], timeout_s: float) -> int:
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError("listener did not exit in time") from None


async def publish_once_listening(
    process: subprocess.Popen[str], bus: Path, spec: SubscriptionSpec = SPEC
) -> None:
    # The subscription exists once the listener opened; publish through it then.
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() < deadline, "listener did not open the bus"
        try:
            async with SqliteAlertReceiver(bus, "all"):
                break
        except Exception:
            await asyncio.sleep(0.05)
    async with SqliteAlertPublisher(bus, [spec]) as pub:
        await pub.publish([make_breach(1)])


async def publish_and_see_it_printed(process: subprocess.Popen[str], bus: Path) -> None:
    await publish_once_listening(process, bus)
    assert process.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 30)
    assert '"breach_id":"breach-00001"' in line


@pytest.mark.integration
@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
async def test_listen_stops_on_signals(tmp_path: Path, signum: int, exit_code: int) -> None:
    process = start_listener(tmp_path)
    try:
        await publish_and_see_it_printed(process, tmp_path / "alerts.db")
        process.send_signal(signum)
        assert await asyncio.to_thread(wait_exit, process, 10) == exit_code
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if signum == signal.SIGTERM:
        async with SqliteAlertReceiver(tmp_path / "alerts.db", SPEC) as rx:
            # Graceful: the alert in flight was completed before the listener exited.
            # (After Ctrl-C it may be completed or handed back, depending on the instant.)
            assert await rx.receive(1, 0) == []


@pytest.mark.integration
async def test_a_failing_webhooks_errors_name_its_host_not_its_path(
    tmp_path: Path, hook: Hook
) -> None:
    """The hook answers 500 (quoting the request's path and query) to every attempt of the one
    delivery: neither the listener's lines nor the dead letter show the hook's credential."""
    process = await dead_letter_through_failing_hook(tmp_path, hook, deliveries=1)
    try:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(wait_exit, process, 10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr is not None
    stderr = process.stderr.read()
    port = hook.url.split(":")[2].split("/")[0]
    assert f"POST http://127.0.0.1:{port}/<sha256:" in stderr
    assert "answered 500" in stderr
    dlq = await asyncio.to_thread(
        CliRunner().invoke,
        alerts_app,
        ["dlq", "-s", "all", "--config", str(tmp_path / "evalstream.toml")],
    )
    assert dlq.exit_code == 0, dlq.output
    assert "AlertDeliveryError" in dlq.stdout
    assert "answered 500" in dlq.stdout
    for secret in HOOK_SECRETS:
        assert secret not in stderr
        assert secret not in dlq.stdout


async def dead_letter_through_failing_hook(
    tmp_path: Path, hook: Hook, *options: str, deliveries: int = 2
) -> subprocess.Popen[str]:
    """A listener (max delivery count ``deliveries``) forwarding to ``hook``, which answers 500
    to every request (three a delivery) of one alert: returned once it is dead-lettered."""
    hook.statuses.extend([500] * 3 * deliveries)
    spec = SubscriptionSpec("all", max_delivery_count=deliveries)
    config_text = f'[[alerts.subscriptions]]\nname = "all"\nmax_delivery_count = {deliveries}\n'
    process = start_listener(tmp_path, "--webhook", hook.url, *options, config_text=config_text)
    await publish_once_listening(process, tmp_path / "alerts.db", spec)
    async with SqliteAlertReceiver(tmp_path / "alerts.db", spec) as rx:
        deadline = time.monotonic() + 30
        while not await rx.dead_letters(1):
            assert time.monotonic() < deadline, "the alert was not dead-lettered"
            await asyncio.sleep(0.05)
    return process


async def stop_listener(process: subprocess.Popen[str]) -> str:
    """SIGTERM, exit 0; the listener's stderr."""
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(wait_exit, process, 10) == 0
    assert process.stderr is not None
    return process.stderr.read()


@pytest.mark.integration
async def test_listen_logs_as_its_options_say_and_keeps_running_after_a_dead_letter(
    tmp_path: Path, hook: Hook
) -> None:
    """``--log-format json``: every line on stderr is a JSON record, INFO ones included (the
    listener started); each retry is one WARNING record without a traceback; the dead letter
    is one ERROR record naming the alert and why; the next alert is still handled."""
    process = await dead_letter_through_failing_hook(tmp_path, hook, "--log-format", "json")
    try:
        async with SqliteAlertPublisher(tmp_path / "alerts.db", [SPEC]) as pub:
            await pub.publish([make_breach(2)])
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 30)
        assert '"breach_id":"breach-00002"' in line
        stderr = await stop_listener(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    records = [json.loads(line) for line in stderr.splitlines()]
    assert all({"time", "level", "component", "message"} <= set(each) for each in records)
    started = [each for each in records if each["message"].startswith("listening to")]
    assert [each["level"] for each in started] == ["INFO"]
    assert started[0]["subscription"] == "all"
    # Three requests per delivery, two deliveries: 2 + 2 webhook retries, 1 redelivery.
    warnings = [each for each in records if each["level"] == "WARNING"]
    assert len(warnings) == 5
    assert not any("error" in each or "\n" in each["message"] for each in warnings)
    [dead] = [each for each in records if each["level"] == "ERROR"]
    assert dead["component"] == "alerts.listener"
    assert "breach-00001:opened" in dead["message"]
    assert "AlertDeliveryError" in dead["message"] and "answered 500" in dead["message"]


@pytest.mark.integration
async def test_listen_at_debug_shows_the_first_failures_traceback_once(
    tmp_path: Path, hook: Hook
) -> None:
    """Every delivery of the alert fails the same way: the handler's traceback is shown once,
    at DEBUG, and the redelivery and the dead letter are one line each, in the text format."""
    process = await dead_letter_through_failing_hook(tmp_path, hook, "--log-level", "debug")
    try:
        stderr = await stop_listener(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert stderr.count("Traceback (most recent call last)") == 1
    [first] = [line for line in stderr.splitlines() if "first AlertDeliveryError" in line]
    assert " DEBUG alerts.listener: alert breach-00001:opened: first AlertDeliveryError" in first
    listener = [line for line in stderr.splitlines() if " alerts.listener: " in line]
    assert [line.split()[2] for line in listener] == ["DEBUG", "WARNING", "ERROR"]
    assert "breach-00001:opened failed on delivery 1 of 2, retrying" in listener[1]
    assert "alert breach-00001:opened dead-lettered" in listener[2]
    assert "AlertDeliveryError: POST http://127.0.0.1:" in listener[2]
