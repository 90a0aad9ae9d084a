"""Prometheus metrics of the projector runtime: events, batches, lag, dead letters.

Built per process (`lattice project` passes one instance to every runner) against a
registry given to it, so tests that start many runners never collide on the global one.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class RuntimeMetrics:
    """The runtime's metrics, labelled by projector."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.registry = registry
        self.events = Counter(
            "lattice_projector_events_applied",
            "Records applied (committed).",
            ["projector"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "lattice_projector_batch_records",
            "Records per committed batch.",
            ["projector"],
            buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000),
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "lattice_projector_batch_seconds",
            "Time to reduce, apply and commit a batch.",
            ["projector"],
            registry=registry,
        )
        self.lag = Gauge(
            "lattice_projector_lag",
            "Records between the stored position and the log end.",
            ["projector", "topic", "partition"],
            registry=registry,
        )
        self._lag_of: dict[str, set[TopicPartition]] = {}  # the partitions given a lag
        self.dead_letters = Counter(
            "lattice_projector_dead_letters",
            "Records sent to the dead-letter topic.",
            ["projector"],
            registry=registry,
        )
        self.conflicts = Counter(
            "lattice_projector_position_conflicts",
            "Batches rolled back because the stored positions moved (zombie or replay).",
            ["projector"],
            registry=registry,
        )
        self.database_errors = Counter(
            "lattice_projector_database_errors",
            "Batches abandoned because the database was unreachable (retried, never skipped).",
            ["projector"],
            registry=registry,
        )

    def committed(
        self,
        projector: str,
        records: int,
        dead: int,
        seconds: float,
        lag: Mapping[TopicPartition, tuple[int | None, int | None]],
    ) -> None:
        """One batch committed: `lag` is each partition's (log end, stored position)."""
        self.events.labels(projector).inc(records)
        self.batch_size.labels(projector).observe(records)
        self.batch_seconds.labels(projector).observe(seconds)
        if dead:
            self.dead_letters.labels(projector).inc(dead)
        for tp, (end, position) in lag.items():
            if end is not None and position is not None:
                self.lag.labels(projector, tp.topic, str(tp.partition)).set(end - position)
                self._lag_of.setdefault(projector, set()).add(tp)

    def assigned(self, projector: str, partitions: Collection[TopicPartition]) -> None:
        """After a rebalance: the lag of a partition now another process's is no longer
        ours to say (left behind, it would be summed with the new owner's, or keep an alert
        firing); those kept keep theirs until their next batch."""
        held, kept = self._lag_of.get(projector, set()), set(partitions)
        for tp in held - kept:
            self.lag.remove(projector, tp.topic, str(tp.partition))
        held &= kept
