"""How large a record the event log's topic takes, and whether a delivery's record fits.

The broker refuses a batch over the topic's `max.message.bytes` whole, and its refusal
ends an idempotent producer's sequence: a new producer, and a 503 for every delivery in
flight. So the receiver reads the limit at each connection, keeps its batches within it,
and refuses a record that would not fit itself, before the broker sees it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from aiokafka.errors import BrokerResponseError, KafkaError

from deploy.stack.topics import record_limit
from ingest.batching import lone_batch_size
from ingest.record import LogRecord

log = structlog.get_logger("ingest.publisher")

# A record's key and the varying part of its headers (event id, type, account, API
# version) are strings of its body, so together at most twice its length (the key may be
# the event's id); the rest (header names, endpoint, time of receipt) and what a batch adds
# to a value compression cannot shrink (~90 bytes) are far less than this. A body whose
# three times is this far below its topic's limit needs no trial to know it fits.
RECORD_SLACK = 8 * 1024
# A record over the topic's limit has the limit read again first (an operator may have
# raised it since the connection), at most this often.
LIMIT_REREAD_SECONDS = 10.0


class RecordLimit:
    """The topic's max.message.bytes (`value`; None when not known), read at each
    connection and again before a record is refused for it."""

    def __init__(
        self, bootstrap: str, topic: str, timeout: float, codec: int, clock: Callable[[], float]
    ) -> None:
        self.value: int | None = None
        self._bootstrap, self._topic, self._timeout = bootstrap, topic, timeout
        self._codec = codec
        self._clock = clock
        self._read_at = -LIMIT_REREAD_SECONDS

    async def read(self) -> None:
        """Read the limit now. None when the broker refuses to say (ACLs without
        DescribeConfigs): the broker alone judges a batch's size then. A broker that
        cannot be reached is raised (the connection is tried again)."""
        self._read_at = self._clock()
        try:
            self.value = await record_limit(self._bootstrap, self._topic, timeout=self._timeout)
        except BrokerResponseError as exc:
            log.warning("kafka_record_limit_unknown", topic=self._topic, error=type(exc).__name__)
            self.value = None

    def batch_size(self, largest: int) -> int:
        """At most `largest`, and within the limit: aiokafka keeps a batch within its size
        uncompressed, and sends it so when compression would not shrink it (the batch's
        own header is ~60 bytes)."""
        return largest if self.value is None else min(largest, max(1, self.value - 1024))

    async def over(self, record: LogRecord, limit: int) -> tuple[int, int] | None:
        """None when `record`, alone in a batch, is within `limit` (or a limit read again
        now, or no longer known); else (its compressed size, the limit)."""
        size = lone_batch_size(record, self._codec)
        if size <= limit:
            return None
        latest: int | None = limit
        if self._clock() - self._read_at >= LIMIT_REREAD_SECONDS:
            try:
                async with asyncio.timeout(self._timeout):
                    await self.read()
            except (KafkaError, OSError):  # not now: the limit known stands
                pass
            else:
                latest = self.value
                log.info("kafka_record_limit_read", topic=self._topic, limit=latest)
        if latest is None or size <= latest:
            return None
        return size, latest
