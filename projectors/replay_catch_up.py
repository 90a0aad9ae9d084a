"""A replay's rebuild: the log applied to the shadow tables with the rebuild's own
positions, up to the log end (see `replay.py`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from deploy.settings import Settings
from projectors import offsets
from projectors.base import to_record
from projectors.batch import BatchApplier
from projectors.failures import is_transient
from projectors.progress import Progress, report_progress
from projectors.replay_lock import ReplayLock
from projectors.replay_start import ReplayError

log = structlog.get_logger("lattice.replay")
MAX_BACKOFF_S = 10.0


@dataclass
class CatchUp:
    """Applies the log to the shadow with the rebuild's own positions."""

    consumer: AIOKafkaConsumer
    applier: BatchApplier
    settings: Settings
    lock: ReplayLock
    stop: asyncio.Event
    on_progress: Callable[[Progress], None] | None
    started: float

    async def run(self, positions: dict[TopicPartition, int], *, to_the_end: bool = False) -> int:
        """Apply batches until every partition reached the log end: with `to_the_end`, the
        end as it is when called; without, an end that keeps moving, to less than a batch
        from it. Returns records done. The log end counts Kafka's transaction markers,
        which no fetch returns: a partition is read to where the consumer got past
        (`read`), its position stays after its last record."""
        consumer, settings = self.consumer, self.settings
        for tp, offset in positions.items():
            consumer.seek(tp, offset)
        first = dict(positions)
        ends: Mapping[TopicPartition, int] = await consumer.end_offsets(list(positions))
        read = dict(positions)
        backoff, last_report = 0.5, 0.0
        unsure: list[TopicPartition] = []  # a commit cut off: maybe done, its answer lost
        while True:
            if unsure:
                try:
                    stored = await self._stored(unsure)
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    if self.stop.is_set():
                        raise ReplayError(
                            "replay interrupted; the live tables are unchanged"
                        ) from exc
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
                    continue
                for tp in unsure:
                    positions[tp] = stored[tp]
                    consumer.seek(tp, positions[tp])
                    read[tp] = positions[tp]
                unsure = []
            behind = [tp for tp in positions if read[tp] < ends[tp]]
            if not behind and to_the_end:
                return sum(positions[tp] - first[tp] for tp in positions)
            if not behind:
                fresh = await consumer.end_offsets(list(positions))
                # Less than a batch left: each swap round first reads to the end as it is.
                left = sum(fresh[tp] - read[tp] for tp in positions)
                if left <= settings.projector_batch_size:
                    report_progress(
                        self.on_progress, positions, first, ends, self.started, force=True
                    )
                    return sum(positions[tp] - first[tp] for tp in positions)
                ends = fresh
                continue
            if self.stop.is_set():
                raise ReplayError("replay interrupted; the live tables are unchanged")
            fetched = await consumer.getmany(
                *behind,
                timeout_ms=settings.projector_batch_wait_ms,
                max_records=settings.projector_batch_size,
            )
            batch = {
                tp: [to_record(m) for m in msgs if m.offset >= positions[tp]]
                for tp, msgs in fetched.items()
            }
            batch = {tp: recs for tp, recs in batch.items() if recs}
            if not batch:
                for tp in behind:  # nothing but markers left, or nothing fetched yet
                    read[tp] = max(read[tp], await consumer.position(tp))
                continue
            try:
                await self.lock.session()  # still ours (a lost session: taken again)
                await self.applier.commit(batch, {tp: positions[tp] for tp in batch})
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("database unavailable during replay; retrying", error=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                unsure = list(batch)  # go on from what is stored, which says whether it did
                continue
            backoff = 0.5
            for tp, recs in batch.items():
                positions[tp] = recs[-1].offset + 1
                read[tp] = max(read[tp], positions[tp])
            if time.monotonic() - last_report >= 1.0:
                last_report = time.monotonic()
                report_progress(self.on_progress, positions, first, ends, self.started)

    async def _stored(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The rebuild's stored positions of `partitions` (every one was seeded)."""
        conn = await self.lock.session()
        stored = await offsets.load(conn, self.applier.key, partitions)
        missing = [f"{tp.topic}/{tp.partition}" for tp, at in stored.items() if at is None]
        if missing:
            raise ReplayError(f"the rebuild's positions of {', '.join(missing)} are gone")
        return {tp: at for tp, at in stored.items() if at is not None}
