"""The embedded backend's user-hash key file: created whole or not at all, never replaced, and
refused in one line when it holds no usable key (an empty key would silently change every user
hash)."""

from __future__ import annotations

import errno
import os
import secrets
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from evalstream import wiring
from evalstream.settings import SettingsError, load_settings
from evalstream.wiring.data_dir import usable_data_dir

KEY = "0123456789abcdef" * 4


def key_of(data_dir: Path) -> bytes:
    return wiring.user_hash_key(load_settings(data_dir=data_dir))


def test_the_created_key_is_whole_private_and_kept(tmp_path: Path) -> None:
    first = key_of(tmp_path)
    assert len(first) == 64
    assert int(first, 16) >= 0
    assert key_of(tmp_path) == first
    assert (tmp_path / "user-hash.key").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir() if "user-hash" in p.name] == ["user-hash.key"]


def test_an_existing_key_is_read_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "user-hash.key").write_text(KEY + "\n")
    assert key_of(tmp_path) == KEY.encode()


def test_a_crash_before_the_key_is_written_leaves_no_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(_: int) -> str:
        raise MemoryError("the start dies here")

    monkeypatch.setattr(secrets, "token_hex", crash)
    with pytest.raises(MemoryError):
        key_of(tmp_path)
    # Before, an empty key file was left, and the next start hashed user ids with an empty key.
    assert not (tmp_path / "user-hash.key").exists()


def test_a_failing_sync_leaves_no_key_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(_: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    usable_data_dir(tmp_path)  # its own check syncs a file: passed before the disk fails
    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(SettingsError, match=r"key cannot be used \(Input/output error\)"):
        key_of(tmp_path)
    assert [p.name for p in tmp_path.iterdir() if "user-hash" in p.name] == []


def test_a_key_another_start_made_first_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_hex = secrets.token_hex

    def raced(size: int) -> str:
        # The other start links its key in after this one looked and before it links its own.
        (tmp_path / "user-hash.key").write_text(KEY)
        return token_hex(size)

    monkeypatch.setattr(secrets, "token_hex", raced)
    assert key_of(tmp_path) == KEY.encode()
    assert (tmp_path / "user-hash.key").read_text() == KEY


def test_concurrent_first_starts_end_with_one_key(tmp_path: Path) -> None:
    for round_ in range(20):
        data_dir = tmp_path / str(round_)
        data_dir.mkdir()
        settings = load_settings(data_dir=data_dir)
        usable_data_dir(data_dir)  # checked once, before the race
        start = threading.Barrier(6)
        keys: list[bytes | BaseException] = []

        def first_start(settings: Any = settings, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                keys.append(wiring.user_hash_key(settings))
            except BaseException as exc:  # recorded: the assertion below names it
                keys.append(exc)

        threads = [threading.Thread(target=first_start) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(set(keys)) == 1, keys
        assert keys[0] == (data_dir / "user-hash.key").read_bytes()


def test_a_file_system_without_hard_links_gets_the_key_by_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(*_: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    key = key_of(tmp_path)
    assert len(key) == 64
    assert [p.name for p in tmp_path.iterdir() if "user-hash" in p.name] == ["user-hash.key"]


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"", "holds 0 characters, fewer than 32"),
        (b"\n", "holds 0 characters, fewer than 32"),
        (b"secret", "holds 6 characters, fewer than 32"),
        (b"\xff\xfe" + KEY.encode("utf-16-le"), "is not text in UTF-8"),
    ],
    ids=["empty", "newline", "short", "utf-16"],
)
def test_a_key_file_without_a_usable_key_is_refused(
    tmp_path: Path, content: bytes, said: str
) -> None:
    (tmp_path / "user-hash.key").write_bytes(content)
    with pytest.raises(SettingsError, match=said) as caught:
        key_of(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"user_hash_key: the key file {tmp_path / 'user-hash.key'} ")
    assert "set EVALSTREAM_USER_HASH_KEY" in message
    assert "\n" not in message
    assert (tmp_path / "user-hash.key").read_bytes() == content  # left for the operator


def test_a_directory_in_the_key_files_place_is_refused(tmp_path: Path) -> None:
    (tmp_path / "user-hash.key").mkdir()
    with pytest.raises(SettingsError, match=r"user-hash\.key cannot be used \(Is a directory\)"):
        key_of(tmp_path)


def test_an_empty_configured_key_is_refused(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, user_hash_key="")
    with pytest.raises(SettingsError, match="user_hash_key: empty"):
        wiring.user_hash_key(settings)


def test_the_processor_refuses_an_empty_key_file_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "user-hash.key").write_bytes(b"")
    command = ["process", "--data-dir", str(tmp_path), "--workers", "1", "--no-ingest"]
    result = subprocess.run(
        [sys.executable, "-m", "evalstream", *command],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("EVALSTREAM_")},
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "key file" in result.stderr
    assert "holds 0 characters" in result.stderr
    assert "Traceback" not in result.stderr
