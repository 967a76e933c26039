"""The embedded backend's user-hash key file: created once, whole, and never replaced; read
back only when it holds a key this program could have made."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import tempfile
from pathlib import Path

from evalstream.settings import SettingsError

# The created key: 32 random bytes, written as 64 hex characters. A key file holding fewer
# than MIN_KEY_CHARS is not one this program made (nor a strong one) and is refused.
KEY_BYTES = 32
MIN_KEY_CHARS = 32
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}
_KEY_FIX = (
    "restore it from a backup, or set EVALSTREAM_USER_HASH_KEY, or remove it to create a new "
    "key (the hashes of user ids then change)"
)


def key_file(path: Path) -> bytes:
    """The key in ``path``, created first if there is none. The file appears whole or not at
    all (written aside, synced, then linked into place, never over a key another process made
    first), so two first starts end with one key. An empty, short, unreadable or undecodable
    file is refused with a SettingsError naming it: any other key would silently change every
    user hash."""
    if not path.exists() and not path.is_symlink():
        _create_key(path)
    return _read_key(path)


def _create_key(path: Path) -> None:
    """Make the key file ``path`` appear whole, unless another process made it first."""
    key = secrets.token_hex(KEY_BYTES)
    try:
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    except OSError as exc:
        raise _unusable_key(path, exc) from None
    try:
        with os.fdopen(descriptor, "w") as handle:  # mkstemp: readable by its owner only
            handle.write(key)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            # A link, not a rename: a concurrent first start's key is kept, not replaced
            # after it may have hashed user ids with it.
            os.link(temporary, path)
        except FileExistsError:
            pass
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            # A file system without hard links: a rename where the key is still absent.
            if not path.exists():
                os.rename(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        raise _unusable_key(path, exc) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _read_key(path: Path) -> bytes:
    try:
        key = path.read_bytes().decode().strip()
    except UnicodeDecodeError:
        raise SettingsError(
            f"user_hash_key: the key file {path} is not text in UTF-8; {_KEY_FIX}"
        ) from None
    except OSError as exc:
        raise _unusable_key(path, exc) from None
    if len(key) < MIN_KEY_CHARS:
        raise SettingsError(
            f"user_hash_key: the key file {path} holds {len(key)} characters, fewer than "
            f"{MIN_KEY_CHARS} (a start that stopped while creating it, or a key written by "
            f"hand); {_KEY_FIX}"
        )
    return key.encode()


def _unusable_key(path: Path, exc: OSError) -> SettingsError:
    cause = exc.strerror or type(exc).__name__
    return SettingsError(f"user_hash_key: the key file {path} cannot be used ({cause}); {_KEY_FIX}")
