from __future__ import annotations

import logging
from typing import Any, cast

import pytest
from azure.batch.aio import BatchClient

from coldpath.executors.batch_config import BatchSettings
from coldpath.executors.batch_follow import JobFollower


class NoSize:
    """A client whose stderr.txt answer has no usable Content-Length (as a proxy may give):
    the SDK reads the header as it is, raising KeyError or ValueError from its call."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.downloads = 0

    async def get_task_file_properties(self, *args: Any) -> Any:
        raise self.error

    async def download_task_file(self, *args: Any, **kwargs: Any) -> Any:
        self.downloads += 1
        raise AssertionError("nothing is downloaded without a size")


@pytest.mark.parametrize(
    "error", [KeyError("content-length"), ValueError("invalid literal for int(): 'abc'")]
)
async def test_a_stderr_without_a_size_is_an_empty_excerpt_not_a_crash(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    async def never(*args: Any) -> Any:
        raise AssertionError("not called")

    follower = JobFollower(BatchSettings(), never)
    client = NoSize(error)
    with caplog.at_level(logging.WARNING):
        excerpt = await follower.stderr_excerpt(cast(BatchClient, client), "job", "shard-0")
    assert excerpt == ""
    assert client.downloads == 0
    assert "stderr of job/shard-0 unreadable: no size in the answer" in caplog.text
