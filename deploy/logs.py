"""structlog setup: JSON lines when stdout is not a terminal, key=value when it is."""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import orjson
import structlog
from structlog.types import EventDict, WrappedLogger


@functools.lru_cache(maxsize=4)
def _utc_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def _now_text() -> str:
    # structlog's TimeStamper builds a datetime per line; this is the same ISO text, cheaper.
    seconds, millis = divmod(int(time.time() * 1000), 1000)
    return f"{_utc_second(seconds)}.{millis:03d}Z"


def _utc_timestamp(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    event["timestamp"] = _now_text()
    return event


@dataclass(frozen=True)
class _JSONLines:
    """What `configure_logging` set up when it writes JSON bytes: `HotLog` writes the same
    lines itself while structlog's processors still end with this very renderer (tools
    such as `structlog.testing.capture_logs` swap the processors inside the same list)."""

    renderer: Any
    stream: IO[bytes]
    level: int


_json_lines: _JSONLines | None = None
# POSIX: a write of at most this many bytes to a pipe is atomic.
PIPE_BUF = 4096


class HotLog:
    """One info line per request, as structlog would write it, at a fraction of the cost.

    structlog spends ~10 µs on a line (a bound logger, a processor chain, a flush per
    line); the receiver writes one per delivery. When logging is the JSON-bytes setup of
    `configure_logging`, this renders the same fields (plus `event`, `level`, `timestamp`)
    with one `orjson.dumps` and writes the lines of one event-loop turn together. Under
    any other configuration (a terminal, a test capturing logs) it is structlog's logger.
    """

    def __init__(self, name: str) -> None:
        self._fallback = structlog.get_logger(name)
        self._pending: list[bytes] = []

    def info(self, event: str, **fields: Any) -> None:
        """Log `event` with `fields` at info level."""
        setup = _json_lines
        if setup is None or structlog.get_config()["processors"][-1:] != [setup.renderer]:
            self._fallback.info(event, **fields)
            return
        if setup.level > logging.INFO:
            return
        fields["event"] = event
        fields["level"] = "info"
        fields["timestamp"] = _now_text()
        line = orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)
        if not self._pending:
            try:
                asyncio.get_running_loop().call_soon(self._flush, setup.stream)
            except RuntimeError:  # no loop: write now
                setup.stream.write(line)
                setup.stream.flush()
                return
        self._pending.append(line)

    def _flush(self, stream: IO[bytes]) -> None:
        # Whole lines, at most PIPE_BUF bytes a write: the workers of `serve --workers N`
        # share one stderr, and only writes that small to a pipe are never interleaved.
        lines, self._pending = self._pending, []
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) > PIPE_BUF:
                stream.write(b"".join(chunk))
                stream.flush()
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        stream.write(b"".join(chunk))
        stream.flush()


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog and the standard library logger to write to stderr.

    JSON lines are rendered with orjson straight to bytes: the receiver writes one per
    request, so the renderer is on the hot path.
    """
    global _json_lines
    as_json = (not sys.stdout.isatty()) if json is None else json
    _json_lines = None
    shared = _shared_processors()
    numeric = logging.getLevelName(level.upper())
    stream = getattr(sys.stderr, "buffer", None)  # absent when a test captures stderr as text
    if as_json and stream is not None:
        to_bytes = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        _json_lines = _JSONLines(to_bytes, stream, numeric)
        structlog.configure(
            processors=[*shared, to_bytes],
            wrapper_class=structlog.make_filtering_bound_logger(numeric),
            logger_factory=structlog.BytesLoggerFactory(file=stream),
            cache_logger_on_first_use=True,
        )
    else:
        renderer: structlog.types.Processor = (
            structlog.processors.JSONRenderer()
            if as_json
            else structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"])
        )
        structlog.configure(
            processors=[*shared, renderer],
            wrapper_class=structlog.make_filtering_bound_logger(numeric),
            logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
            cache_logger_on_first_use=True,
        )
    # aiokafka, asyncpg and asyncio log through the standard library; keep their warnings,
    # in JSON lines too when ours are (a traceback becomes the line's `exception` field),
    # so that a log shipper never meets a line it cannot parse. Like `logging.basicConfig`,
    # this leaves a root logger that has handlers already (a test runner's) alone.
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(stdlib_formatter(as_json))
        handler.addFilter(RepeatFilter())
        root.addHandler(handler)
        root.setLevel(logging.WARNING)


class RepeatFilter(logging.Filter):
    """Lets a library's message through once per `window` seconds for each logger and
    message template: with the broker down, aiokafka logs the same few failures about a
    thousand times a second. The first line after a suppressed spell says in `suppressed`
    how many like it were left out."""

    MAX_KEYS = 1000  # templates remembered; a flood of distinct ones only resets this

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.window = window
        self.clock = clock
        self._last: dict[tuple[str, str], tuple[float, int]] = {}  # -> (when shown, left out)

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self.clock()
        shown, left_out = self._last.get(key, (None, 0))
        if shown is not None and now - shown < self.window:
            self._last[key] = (shown, left_out + 1)
            return False
        if left_out:
            record.suppressed = left_out
        if len(self._last) >= self.MAX_KEYS:
            self._last.clear()
        self._last[key] = (now, 0)
        return True


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        left_out = getattr(record, "suppressed", 0)
        return f"{text} ({left_out} more like it suppressed)" if left_out else text


def _shared_processors() -> list[structlog.types.Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _utc_timestamp,
        structlog.processors.format_exc_info,
    ]


def stdlib_formatter(as_json: bool) -> logging.Formatter:
    """How a standard library record is written: as our JSON lines (with the logger's
    name), or as `name message` for a person at a terminal."""
    if not as_json:
        return _TextFormatter("%(name)s %(message)s")
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(allow=["suppressed"]),
            *_shared_processors(),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.JSONRenderer(serializer=_orjson_text),
        ],
    )


def _orjson_text(value: Any, **options: Any) -> str:
    return orjson.dumps(value, **options).decode()
