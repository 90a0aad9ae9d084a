"""What a runner takes from Kafka: its group consumer, a fetch read in chunks, the records
of it not taken yet, and a batch joined with what arrived while the batch before it was
written."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import InvalidSessionTimeoutError
from aiokafka.structs import ConsumerRecord

from deploy import kafka_options
from deploy.settings import ConfigError, Settings
from projectors.base import Record, to_record
from projectors.batch import Prepared

Fetched = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]

FETCH_CHUNK = 500  # records unpacked between two turns of the event loop
# A group consumer that has not fetched for this long leaves its group (aiokafka's
# default, made explicit): the runner never holds a batch half as long (`HeldTooLong`, and
# `Prepared.cut` for slow answers).
MAX_POLL_INTERVAL_MS = 300_000


def group_of(name: str, prefix: str = "lattice") -> str:
    """The Kafka consumer group of a projection: `lattice.<name>` by default."""
    return f"{prefix}.{name}"


def group_consumer(settings: Settings, name: str) -> AIOKafkaConsumer:
    """The consumer of projection `name`'s group. Kafka's committed offsets are never used
    (positions live in PostgreSQL), so nothing is auto-committed."""
    session_ms = settings.projector_session_timeout_ms
    return AIOKafkaConsumer(
        **kafka_options.options(),
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_of(name, settings.group_prefix),
        client_id=f"lattice-{name}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # An app may write usage facts in Kafka transactions: what it aborted never counts.
        isolation_level="read_committed",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=max(session_ms // 3, 1),  # Kafka's rule: a third at most
        max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
    )


async def start_consumer(consumer: AIOKafkaConsumer, settings: Settings) -> None:
    """Start `consumer`; a session timeout the broker refuses is a `ConfigError`."""
    try:
        await consumer.start()
    except InvalidSessionTimeoutError:
        await consumer.stop()
        raise ConfigError(
            "the broker refuses LATTICE_PROJECTOR_SESSION_TIMEOUT_MS="
            f"{settings.projector_session_timeout_ms}: it must lie within its "
            "group.min.session.timeout.ms and group.max.session.timeout.ms "
            "(6000 and 1800000 unless changed)"
        ) from None


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """`consumer.stop()`, which with the broker away can raise the CancelledError of one of
    its own fetches: aiokafka (0.14) cancels a fetch sleeping out a retry and awaits it
    without catching that error. A SIGTERM would then end the process with a traceback and
    exit status 1, and skip whatever cleanup follows the stop. The error is not ours: the
    fetches the stop left behind are cancelled, the client's connections closed, and it is
    dropped. A cancellation of this task itself (counted by `cancelling()`) is passed on,
    even one aiokafka swallowed."""
    task = asyncio.current_task()
    cancelling = task.cancelling() if task is not None else 0
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        if task is None or task.cancelling() > cancelling:
            raise
        fetcher = consumer._fetcher
        if fetcher is not None:
            leftovers = [fetcher._fetch_task, *fetcher._pending_tasks]
            for leftover in leftovers:
                leftover.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)
        await consumer._client.close()
    if task is not None and task.cancelling() > cancelling:
        raise asyncio.CancelledError


async def getmany(consumer: AIOKafkaConsumer, most: int, wait_ms: int) -> Fetched:
    """Up to `most` records: waits up to `wait_ms` for the first ones, then takes what is
    already fetched in chunks of FETCH_CHUNK, yielding between them. aiokafka unpacks the
    records of one getmany without yielding (~6 us a record): in one piece, a full batch
    would hold the write in flight ~30 ms before each of its round trips, and PostgreSQL
    would sit idle instead of writing while this batch is read."""
    first = await consumer.getmany(timeout_ms=wait_ms, max_records=min(most, FETCH_CHUNK))
    fetched: Fetched = {tp: list(msgs) for tp, msgs in first.items()}
    taken = sum(len(msgs) for msgs in first.values())
    while first and taken < most:
        await asyncio.sleep(0)
        more = await consumer.getmany(timeout_ms=0, max_records=min(most - taken, FETCH_CHUNK))
        if not more:
            break
        for tp, msgs in more.items():
            fetched.setdefault(tp, []).extend(msgs)
            taken += len(msgs)
    return fetched


def joined(first: Prepared, then: Prepared) -> Prepared:
    """`first`, then `then` (the next offsets of the same partitions), as one batch."""
    batch = {tp: [*recs, *then.batch.get(tp, ())] for tp, recs in first.batch.items()}
    batch.update({tp: list(recs) for tp, recs in then.batch.items() if tp not in batch})
    reduced, dead = [*first.reduced, *then.reduced], [*first.dead, *then.dead]
    return Prepared(batch, reduced, dead, cut=first.cut or then.cut)


def take(
    fetched: Mapping[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]],
    next_offsets: dict[TopicPartition, int | None],
) -> dict[TopicPartition, list[Record]]:
    """The records of `fetched` at or after each partition's next offset to take (all of
    them where it is None), as Records; advances `next_offsets` past them. Partitions no
    longer in `next_offsets` were revoked while the fetch was in flight: skipped."""
    batch: dict[TopicPartition, list[Record]] = {}
    for tp, msgs in fetched.items():
        if tp not in next_offsets:
            continue
        start = next_offsets[tp]
        records = [to_record(m) for m in msgs if start is None or m.offset >= start]
        if records:
            batch[tp] = records
            next_offsets[tp] = records[-1].offset + 1
    return batch
