"""The one error root of evalstream.

Every package raises subclasses of ``EvalstreamError``; adapters map their library's errors into
them with ``raise ... from exc``. ``retryable`` says whether the same call may succeed later,
``retry_after`` how long the cause asked us to wait (seconds), when it said so::

    EvalstreamError
    ├── Misconfigured            a setting is missing or contradicts another (mixed into
    │   │                        the packages' errors below; SettingsError is one)
    │   └── UnusableFile         a data file is not a database or is corrupt
    ├── SettingsError            a setting is invalid (evalstream.settings)
    ├── LockFileError            a lock file cannot be used (common.lock_file; Misconfigured)
    ├── StoreError               store adapters (store.exceptions)
    ├── StreamError              sources, decoding, processing (stream.exceptions)
    ├── AlertError               alert buses and handlers (alerts.exceptions)
    ├── ColdpathError            policies, shards, executors (coldpath.exceptions)
    └── ReportError              reading what the HTML report shows (report.exceptions)
"""

from __future__ import annotations


class EvalstreamError(Exception):
    """Root of every error evalstream raises on purpose."""

    retryable: bool = False

    def __init__(
        self, message: str, *, retryable: bool | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable
        self.retry_after = retry_after


class Misconfigured(EvalstreamError):
    """A setting is missing or contradicts another; the message names it. Packages raise it
    mixed into their own error (``class StoreMisconfigured(StoreError, Misconfigured)``), so
    callers catching the package's error still do; the command line answers it with one line
    and exit 2, whichever command met it."""


class UnusableFile(Misconfigured):
    """A data file that is not what it must be (not a database, or a corrupt one): no retry
    mends it, so whichever command meets it says so in one line and exits 2, as for a wrong
    setting. Mixed into the adapter's own error by ``common.sqlite.map_error``."""


def is_retryable(exc: BaseException) -> bool:
    """True for errors that say so; anything else is not worth repeating as is."""
    return bool(getattr(exc, "retryable", False))


def leaves(error: BaseException) -> list[BaseException]:
    """The leaf exceptions of a (possibly nested) exception group, or the error itself."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]
