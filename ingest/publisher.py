"""Appending accepted deliveries to the event log: an idempotent, acks=all aiokafka producer.

`publish` returns only once the broker has acknowledged the record (so a 200 means it is
on the log) and never waits longer than the configured bound: a broker that is down or
slow turns into `PublishUnavailable`, which the app answers with 503 so Stripe retries.
If the broker is unreachable at start-up, or the producer fails for good, a background
task keeps building a new producer until one connects: the receiver heals by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)
from aiokafka.record.default_records import DefaultRecordBatch

from deploy import kafka_options
from deploy.stack.topics import missing_topics
from ingest.batching import Batcher
from ingest.deadlines import Deadlines
from ingest.record import LogRecord
from ingest.record_limit import RECORD_SLACK, RecordLimit

log = structlog.get_logger("ingest.publisher")

# Under load, a worker's batches go at least this far apart (a lone delivery goes at once).
BATCH_SPACING_MS = 2
COMPRESSION = "zstd"
COMPRESSION_CODEC = DefaultRecordBatch.CODEC_ZSTD  # the same, as a batch's header names it
RECONNECT_SECONDS = 1.0
# While the broker stays away, the line saying so is repeated this often, not at each try.
UNREACHABLE_LOG_SECONDS = 30.0
MAX_BATCH_BYTES = 512 * 1024
# After these the producer's sender has stopped for good (typically: batches failed while
# the broker shut down, leaving a gap in the idempotent sequence); only a new producer,
# with a new producer id, can send again.
FATAL = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch, ProducerFenced)


class PublishUnavailable(Exception):
    """The broker did not acknowledge in time; `reason` names why (for 503 and metrics)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Publisher:
    """One producer for one topic, owned by the app's lifespan."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        timeout: float,
        on_error: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.topic = topic
        self._bootstrap = bootstrap
        self._timeout = timeout
        self._on_error = on_error
        self._batcher: Batcher | None = None
        self._connector: asyncio.Task[None] | None = None
        # Flushing and stopping a replaced producer; `stop` waits for it (it is bounded).
        self._retiring: asyncio.Task[None] | None = None
        self._closing = False
        self._deadlines = Deadlines(timeout)
        # /readyz answers on the public port: its reasons never name the brokers (the log does).
        self._no_answer = "Kafka does not answer"
        self._failed_tries = 0  # since the last line that said so
        self._said: tuple[str, float] | None = None  # that line's event and time
        self.clock: Callable[[], float] = time.monotonic
        # Why the receiver cannot append now (for /readyz), while it keeps trying.
        self.unready = "not connected to Kafka yet"
        # The topic's max.message.bytes, which a record must fit alone and a batch as well.
        self.record_limit = RecordLimit(
            bootstrap, topic, timeout, COMPRESSION_CODEC, lambda: self.clock()
        )

    def _new_producer(self) -> AIOKafkaProducer:
        ms = int(self._timeout * 1000)
        return AIOKafkaProducer(
            **kafka_options.options(),
            bootstrap_servers=self._bootstrap,
            enable_idempotence=True,
            acks="all",
            linger_ms=0,  # the Batcher has lingered already
            compression_type=COMPRESSION,
            # Idempotence allows one in-flight batch per partition: under load, records
            # queue behind it, so a batch must hold many webhook bodies (~2 KB each); not
            # more than the topic takes, though (a larger record goes alone, see `publish`).
            max_batch_size=self.record_limit.batch_size(MAX_BATCH_BYTES),
            # A request's own bound; while the broker is unreachable, though, an idempotent
            # producer retries a batch for ever (the Batcher drops what was answered 503).
            request_timeout_ms=max(ms, 1000),
            retry_backoff_ms=100,
            metadata_max_age_ms=30_000,
        )

    async def start(self) -> None:
        """Connect now if the broker answers, else keep trying in the background."""
        if not await self._try_connect():
            self._connector = asyncio.create_task(self._keep_connecting())

    async def _try_connect(self) -> bool:
        producer: AIOKafkaProducer | None = None
        try:
            # Bounded: a broker that takes connections and never answers (a hung one, a
            # firewall dropping replies) would hold the receiver's start (so it would not
            # even listen) or its reconnection for ever. TimeoutError is an OSError.
            async with asyncio.timeout(2 * self._timeout):
                # The topic first (without naming it, so no broker auto-creates it), and
                # only then the idempotent producer: each one started takes a producer id.
                if await missing_topics(self._bootstrap, [self.topic], timeout=self._timeout):
                    self.unready = f"topic {self.topic} does not exist on Kafka"
                    self._say("kafka_topic_missing", topic=self.topic)
                    return False
                await self.record_limit.read()
                producer = self._new_producer()
                await producer.start()
        except (KafkaError, OSError) as exc:
            if producer is not None:
                with contextlib.suppress(Exception):
                    await producer.stop()
            self.unready = self._no_answer
            self._say(
                "kafka_unreachable", error=str(exc) or f"no answer within {2 * self._timeout:g} s"
            )
            return False
        self._batcher = Batcher(producer, self.topic, BATCH_SPACING_MS / 1000)
        log.info("kafka_connected", bootstrap=self._bootstrap, topic=self.topic)
        self._failed_tries, self._said = 0, None
        return True

    def _say(self, event: str, **fields: str) -> None:
        """Warn that a try failed: at once when the reason is new, then once per
        `UNREACHABLE_LOG_SECONDS` with how many tries failed since (one line a second would
        flood the log)."""
        now = self.clock()
        said = self._said
        if said is not None and said[0] != event:
            self._failed_tries = 0  # another reason: said at once, its own count
        elif said is not None and now - said[1] < UNREACHABLE_LOG_SECONDS:
            self._failed_tries += 1
            return
        self._failed_tries += 1
        log.warning(event, bootstrap=self._bootstrap, tries=self._failed_tries, **fields)
        self._failed_tries, self._said = 0, (event, now)

    async def _keep_connecting(self) -> None:
        while not self._closing:
            if await self._try_connect():
                return
            await asyncio.sleep(RECONNECT_SECONDS)

    def _replace(self, broken: Batcher) -> None:
        if self._batcher is not broken or self._closing:
            return  # another request already started the replacement
        self._batcher = None
        log.warning("kafka_producer_replaced", topic=self.topic)
        # Its pending batches can only fail now; do not wait long for them to say so.
        self._retiring = asyncio.create_task(self._retire(broken))
        self._connector = asyncio.create_task(self._reconnect_after(self._retiring))

    async def _reconnect_after(self, retiring: asyncio.Task[None]) -> None:
        # Shielded: cancelling the reconnection (on stop) must not leave the old producer
        # half-stopped, with its connections and sender still running.
        await asyncio.shield(retiring)
        await self._keep_connecting()

    async def _retire(self, batcher: Batcher) -> None:
        """Flush `batcher` and stop its producer, each within the publish timeout: while
        the broker is down an idempotent producer never gives up a batch, and everything
        still queued was answered 503 already."""
        for step, closing in (("flush", batcher.close), ("stop", batcher.producer.stop)):
            try:
                async with asyncio.timeout(self._timeout):
                    await closing()
            except Exception as exc:
                log.warning("kafka_producer_not_closed", step=step, error=repr(exc))
        # A `stop` cut short leaves aiokafka's sender retrying what it held, for ever while
        # the broker is down and into the log once it is back (records answered 503, which
        # Stripe sends again), and its connections open: end both.
        await _end_sender(batcher.producer)

    async def stop(self) -> None:
        """Flush what is pending and close the producer."""
        self._closing = True
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        if self._retiring is not None:
            await self._retiring
        if self._batcher is not None:
            batcher, self._batcher = self._batcher, None
            await self._retire(batcher)
        self._deadlines.close()

    async def publish(self, record: LogRecord) -> tuple[int, int]:
        """Append `record`; return (partition, offset) once acknowledged by all replicas."""
        batcher = self._batcher
        if batcher is None:
            self._on_error("not_connected")
            raise PublishUnavailable("not_connected", "not connected to Kafka yet")
        limit = self.record_limit.value
        if (
            limit is not None
            and 3 * len(record.value) > limit - RECORD_SLACK
            and (over := await self.record_limit.over(record, limit)) is not None
        ):
            # The broker would refuse it at every try, and its refusal would cost the
            # producer its sequence (a new producer, and a 503 for every delivery in
            # flight). Not a 413: the body is within our limit, the topic's is too low.
            self._on_error("too_large_for_log")
            raise PublishUnavailable(
                "too_large_for_log",
                f"the event is {over[0]} bytes compressed, over the {over[1]} bytes the "
                "event log takes (its topic's max.message.bytes)",
            )
        future = batcher.add(record)
        # On timeout this future (ours, one per record) fails; the batch it rides in does
        # not, and may still land: a 503 allows for that.
        wait = self._deadlines.start(functools.partial(_expire, future))
        try:
            return await future
        except TimeoutError:
            self._on_error("timeout")
            if sender_stopped(batcher.producer):
                self._replace(batcher)
            raise PublishUnavailable(
                "kafka_timeout", f"Kafka did not acknowledge within {self._timeout:g} s"
            ) from None
        except KafkaError as exc:
            self._on_error(type(exc).__name__)
            if isinstance(exc, FATAL) or sender_stopped(batcher.producer):
                self._replace(batcher)
            # The exception's type, not its text, which may name brokers' addresses.
            raise PublishUnavailable(
                "kafka_error", f"Kafka refused the record ({type(exc).__name__})"
            ) from exc
        except asyncio.CancelledError:
            # Our caller went away (cancelling the future it awaited) or was cancelled just
            # after the future failed: read that failure, so asyncio does not report it as
            # never retrieved.
            if future.done() and not future.cancelled():
                future.exception()
            raise
        except Exception as exc:
            # A bug here must still answer 503 (Stripe retries), not 500, and be seen.
            log.exception("publish_failed", topic=self.topic)
            self._on_error(type(exc).__name__)
            raise PublishUnavailable("kafka_error", "the record could not be appended") from exc
        finally:
            wait.finish()

    async def unready_because(self, timeout: float = 2.0) -> str | None:
        """None when the broker answers a metadata request now; else why not."""
        batcher = self._batcher
        if batcher is None:
            return self.unready
        if sender_stopped(batcher.producer):
            self._replace(batcher)
            return "the Kafka producer stopped sending; starting a new one"
        try:
            async with asyncio.timeout(timeout):
                await batcher.producer.client.fetch_all_metadata()
        except (KafkaError, OSError, TimeoutError):
            return self._no_answer
        return None


def sender_stopped(producer: AIOKafkaProducer) -> bool:
    """Whether the producer's background sender has ended: after that no batch is ever
    sent (those added either fail with its error or wait for ever), so only a new
    producer can append again. aiokafka exposes it only as `_sender.sender_task`."""
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    return isinstance(task, asyncio.Task) and task.done()


async def _end_sender(producer: AIOKafkaProducer) -> None:
    task = getattr(getattr(producer, "_sender", None), "sender_task", None)
    if isinstance(task, asyncio.Task) and not task.done():
        task.cancel()
        await asyncio.wait({task})  # its end, not its error (nor our cancellation swallowed)
    with contextlib.suppress(Exception):
        await producer.client.close()


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())
