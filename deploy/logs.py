"""structlog setup: JSON lines when stdout is not a terminal, key=value when it is."""

from __future__ import annotations

import logging
import sys
import time

import orjson
import structlog
from structlog.types import EventDict, WrappedLogger


def _utc_timestamp(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    # structlog's TimeStamper builds a datetime per line; this is the same ISO text, cheaper.
    now = time.time()
    millis = int(now * 1000) % 1000
    event["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{millis:03d}Z"
    return event


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog and the standard library logger to write to stderr.

    JSON lines are rendered with orjson straight to bytes: the receiver writes one per
    request, so the renderer is on the hot path.
    """
    as_json = (not sys.stdout.isatty()) if json is None else json
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _utc_timestamp,
        structlog.processors.format_exc_info,
    ]
    numeric = logging.getLevelName(level.upper())
    stream = getattr(sys.stderr, "buffer", None)  # absent when a test captures stderr as text
    if as_json and stream is not None:
        structlog.configure(
            processors=[*shared, structlog.processors.JSONRenderer(serializer=orjson.dumps)],
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
    # aiokafka and uvicorn log through the standard library; keep their warnings.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")
