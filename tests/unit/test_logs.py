"""The receiver's per-request line: what structlog would write, written for less."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from collections.abc import Iterator

import orjson
import pytest
import structlog

from deploy import logs
from deploy.logs import HotLog, configure_logging


class _Stderr(io.StringIO):
    """A text stream with a `buffer` of bytes, like the real stderr."""

    def __init__(self, buffer: io.BytesIO) -> None:
        super().__init__()
        self._bytes = buffer

    @property
    def buffer(self) -> io.BytesIO:
        return self._bytes


@pytest.fixture
def json_stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.BytesIO]:
    sink = io.BytesIO()
    monkeypatch.setattr(sys, "stderr", _Stderr(sink))
    configure_logging(json=True)
    try:
        yield sink
    finally:
        structlog.reset_defaults()
        monkeypatch.setattr(logs, "_json_lines", None)


def lines(sink: io.BytesIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in sink.getvalue().splitlines()]


def test_the_line_has_structlogs_fields(json_stderr: io.BytesIO) -> None:
    structlog.get_logger("ingest").info("webhook", outcome="accepted", ms=1.5)
    HotLog("ingest").info("webhook", outcome="accepted", ms=1.5)
    by_structlog, by_hot_log = lines(json_stderr)
    assert (
        by_structlog.keys()
        == by_hot_log.keys()
        == {
            "outcome",
            "ms",
            "event",
            "level",
            "timestamp",
        }
    )
    assert by_hot_log["level"] == "info"
    assert by_hot_log["event"] == "webhook"
    assert str(by_hot_log["timestamp"]).endswith("Z")


async def test_lines_of_one_loop_turn_are_written_together(json_stderr: io.BytesIO) -> None:
    log = HotLog("ingest")
    for n in range(3):
        log.info("webhook", n=n)
    assert json_stderr.getvalue() == b""  # not yet: at the end of this turn of the loop
    await asyncio.sleep(0)
    assert [line["n"] for line in lines(json_stderr)] == [0, 1, 2]


class _Writes(io.BytesIO):
    """Remembers each write, as one system call to a pipe would see it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes.append(bytes(data))
        return super().write(data)


async def test_a_busy_loop_turn_is_written_in_whole_lines_of_at_most_pipe_buf(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Workers share stderr: a write over PIPE_BUF to a pipe can interleave with another
    worker's mid-line, and the log shipper gets a spliced, unparseable line."""
    sink = _Writes()
    monkeypatch.setattr(sys, "stderr", _Stderr(sink))
    configure_logging(json=True)
    try:
        log = HotLog("ingest")
        for n in range(100):  # ~100 bytes each: ~10 KB in one turn
            log.info("webhook", n=n, event_id=f"evt_{n:024d}")
        await asyncio.sleep(0)
    finally:
        structlog.reset_defaults()
        monkeypatch.setattr(logs, "_json_lines", None)
    assert len(sink.writes) > 1
    assert all(len(w) <= logs.PIPE_BUF and w.endswith(b"\n") for w in sink.writes)
    assert [line["n"] for line in lines(sink)] == list(range(100))


def test_under_another_configuration_it_is_structlogs_logger(json_stderr: io.BytesIO) -> None:
    with structlog.testing.capture_logs() as captured:
        HotLog("ingest").info("webhook", outcome="too_large")
    assert captured == [{"event": "webhook", "outcome": "too_large", "log_level": "info"}]
    assert json_stderr.getvalue() == b""


def test_below_the_configured_level_nothing_is_written(
    json_stderr: io.BytesIO,
) -> None:
    configure_logging("warning", json=True)
    HotLog("ingest").info("webhook", outcome="accepted")
    assert json_stderr.getvalue() == b""


def test_a_library_traceback_is_one_json_line_with_the_loggers_name() -> None:
    # asyncpg logs this, with its traceback, every time its pool cannot reconnect.
    try:
        raise ConnectionRefusedError(111, "Connect call failed")
    except OSError:
        record = logging.LogRecord(
            "asyncpg.pool",
            logging.WARNING,
            __file__,
            1,
            "Failed to restore %s",
            ("the pool",),
            sys.exc_info(),
        )
    text = logs.stdlib_formatter(as_json=True).format(record)
    assert "\n" not in text
    line = orjson.loads(text)
    assert line["event"] == "Failed to restore the pool"
    assert (line["logger"], line["level"]) == ("asyncpg.pool", "warning")
    assert str(line["timestamp"]).endswith("Z")
    assert "ConnectionRefusedError: [Errno 111] Connect call failed" in line["exception"]
    # At a terminal it stays the short human form.
    assert (
        logs.stdlib_formatter(as_json=False)
        .format(record)
        .startswith("asyncpg.pool Failed to restore the pool\nTraceback")
    )


def _record(template: str, *args: object, name: str = "aiokafka") -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, template, args, None)


def test_a_library_repeating_itself_is_written_once_per_window_then_with_a_count() -> None:
    now = [0.0]
    repeats = logs.RepeatFilter(window=10.0, clock=lambda: now[0])
    template = "Unable connect to node with id %s: %s"
    passed = [repeats.filter(_record(template, 1, f"try {n}")) for n in range(1000)]
    assert passed[0]
    assert passed.count(True) == 1
    # Another message, or another logger's, is not held back by that one.
    assert repeats.filter(_record("Unable to update metadata from %s", [1]))
    assert repeats.filter(_record(template, 1, "x", name="aiokafka.consumer.fetcher"))
    now[0] = 10.5
    after = _record(template, 1, "again")
    assert repeats.filter(after)
    line = orjson.loads(logs.stdlib_formatter(as_json=True).format(after))
    assert (line["event"], line["suppressed"]) == ("Unable connect to node with id 1: again", 999)
    assert (
        logs.stdlib_formatter(as_json=False).format(after).endswith("(999 more like it suppressed)")
    )
    # The next window starts counting afresh.
    now[0] = 21.0
    fresh = _record(template, 1, "later")
    assert repeats.filter(fresh)
    assert not hasattr(fresh, "suppressed")
