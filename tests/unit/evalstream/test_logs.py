"""Log lines: JSON and text formats, fields from the surrounding context, no raw user ids."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from common.log_context import ContextFilter, log_context
from evalstream.logs import JsonFormatter, KeyValueFormatter, configure


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream, handler
    finally:
        logger.removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


async def test_json_lines_carry_the_context_of_the_task_that_logs(
    captured: tuple[io.StringIO, logging.Handler],
) -> None:
    stream, handler = captured
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.logs")

    async def partition(n: int) -> None:
        with log_context(partition=str(n)):
            await asyncio.sleep(0)
            logger.info("batch stored", extra={"documents": n * 10})

    with log_context(job_id="job-1"):
        await asyncio.gather(partition(1), partition(2))
    logger.info("outside")

    lines = _lines(stream)
    assert [(line["partition"], line["documents"], line["job_id"]) for line in lines[:2]] == [
        ("1", 10, "job-1"),
        ("2", 20, "job-1"),
    ]
    assert {"time", "level", "component", "message"} <= set(lines[0])
    assert lines[0]["component"] == "tests.logs" and lines[0]["level"] == "INFO"
    assert "partition" not in lines[2] and "job_id" not in lines[2]


def test_extra_fields_win_over_the_context_and_user_ids_are_redacted(
    captured: tuple[io.StringIO, logging.Handler],
) -> None:
    stream, handler = captured
    handler.setFormatter(JsonFormatter())
    with log_context(partition="1", user_id="u-123"):
        logging.getLogger("tests.logs").info("x", extra={"partition": "7"})
    (line,) = _lines(stream)
    assert line["partition"] == "7"
    assert line["user_id"] == "<redacted>"
    assert "u-123" not in stream.getvalue()


def test_errors_keep_their_traceback_in_json(captured: tuple[io.StringIO, logging.Handler]) -> None:
    stream, handler = captured
    handler.setFormatter(JsonFormatter())
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("tests.logs").exception("failed")
    (line,) = _lines(stream)
    assert line["level"] == "ERROR"
    assert "ValueError: boom" in str(line["error"])


@pytest.mark.parametrize(
    "formatter", [JsonFormatter(), KeyValueFormatter("%(message)s")], ids=["json", "text"]
)
def test_a_traceback_given_as_text_keeps_its_lines(
    captured: tuple[io.StringIO, logging.Handler], formatter: logging.Formatter
) -> None:
    # A worker process's traceback reaches its supervisor as text (evalstream.workers).
    stream, handler = captured
    handler.setFormatter(formatter)
    logger = logging.getLogger("tests.logs")
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, "worker failed", (), None)
    record.exc_text = "Traceback (most recent call last):\n  ...\nOSError: full"
    logger.handle(record)
    if isinstance(formatter, JsonFormatter):
        (line,) = _lines(stream)
        assert (line["message"], line["error"]) == ("worker failed", record.exc_text)
    else:
        assert stream.getvalue() == f"worker failed\n{record.exc_text}\n"


def test_text_lines_append_fields_as_key_value(
    captured: tuple[io.StringIO, logging.Handler],
) -> None:
    stream, handler = captured
    handler.setFormatter(KeyValueFormatter("%(levelname)s %(name)s: %(message)s"))
    with log_context(request_id="r1"):
        logging.getLogger("tests.logs").warning("slow", extra={"user_id": "u-9"})
    assert stream.getvalue() == "WARNING tests.logs: slow user_id=<redacted> request_id=r1\n"


def test_a_producers_newline_or_escape_cannot_forge_or_colour_a_text_line(
    captured: tuple[io.StringIO, logging.Handler],
) -> None:
    stream, handler = captured
    handler.setFormatter(KeyValueFormatter("%(levelname)s %(name)s: %(message)s"))
    forged = "e-1\n2026-12-06 00:00:00 ERROR evalstream: forged"
    logging.getLogger("tests.logs").warning(
        "event_id %s held by another event", forged, extra={"event_id": "\x1b[31mred"}
    )
    (line,) = stream.getvalue().splitlines()
    assert "\x1b" not in line
    assert line == (
        "WARNING tests.logs: event_id e-1\\x0a2026-12-06 00:00:00 ERROR evalstream: forged held "
        "by another event event_id=\\x1b[31mred"
    )


def test_a_record_orjson_cannot_encode_is_still_one_json_line(
    captured: tuple[io.StringIO, logging.Handler],
) -> None:
    """A path that is not UTF-8 (Linux allows it; Python keeps its bytes as lone surrogates), a
    number beyond 64 bits, a mapping with number keys: orjson refuses each, and logging wrote
    its '--- Logging error ---' traceback, many lines that are not JSON, instead of the record."""
    stream, handler = captured
    handler.setFormatter(JsonFormatter())
    # A logger of its own, outside the logging tree: pytest's capture (which reaches every
    # logger of the tree) would keep the lone surrogate, which cannot cross to the xdist
    # controller, and that stops the whole run.
    logger = logging.Logger("tests.logs", logging.INFO)
    logger.addHandler(handler)
    logger.info("data in %s", "/var/lib/d\udcff", extra={"path": Path("/var/lib/d\udcff")})
    logger.info("counted", extra={"total": 2**70, "by_partition": {0: 3}})

    lines = _lines(stream)
    assert lines[0]["message"] == "data in /var/lib/d\\udcff" == "data in " + lines[0]["path"]
    assert (lines[1]["total"], lines[1]["by_partition"]) == (str(2**70), {"0": 3})


def test_httpx_request_lines_are_left_out_as_they_carry_the_whole_url(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """httpx logs each request at INFO with its URL, the path and query a webhook's credential:
    ``configure`` leaves them out at any level, as it does the Azure SDKs' request lines."""
    root, quiet = logging.getLogger(), ("httpx", "azure")
    saved = root.handlers[:], root.level, [logging.getLogger(name).level for name in quiet]
    try:
        configure("DEBUG")
        answer = httpx.MockTransport(lambda request: httpx.Response(500))
        with httpx.Client(transport=answer) as client:
            client.post("https://hooks.example.com/services/T000/B000/s3cr3t-path?sig=s3cr3t")
        logging.getLogger("tests.logs").warning("the webhook answered 500")
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        for name, level in zip(quiet, saved[2], strict=True):
            logging.getLogger(name).setLevel(level)
    stderr = capsys.readouterr().err
    assert "the webhook answered 500" in stderr
    assert "s3cr3t" not in stderr
