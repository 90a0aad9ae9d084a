"""The runner's answer to a rebalance: finish the batch in flight, then seek to the
positions stored in PostgreSQL (Kafka's committed offsets are never used)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from aiokafka import ConsumerRebalanceListener, TopicPartition

if TYPE_CHECKING:
    from projectors.runner import ProjectionRunner


class SeekToStored(ConsumerRebalanceListener):  # type: ignore[misc]
    """Finish the batch in flight before a rebalance; seek to the stored positions after."""

    def __init__(self, runner: ProjectionRunner) -> None:
        self.runner = runner

    # aiokafka only logs what a listener raises. Swallowed, a failed drain would leave the
    # revoked partitions' positions held (the next batch written from before the failed
    # one, skipping it), and a failed seek would leave partitions that are never taken
    # from again. So every error is handed to the runner, whose main loop raises it.

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        try:
            await self.runner.drain()
        except Exception as exc:
            self.runner.fail(exc)
        finally:
            for tp in revoked:
                self.runner.positions.pop(tp, None)
                self.runner.fetched.pop(tp, None)
            self.runner.epoch += 1

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        try:
            await self.runner.drain()
            self.runner.metrics.assigned(self.runner.name, assigned)
            await self.runner.seek_to_stored(list(assigned))
        except Exception as exc:
            self.runner.fail(exc)
