"""Prometheus metrics of the projector runtime: events, batches, lag, dead letters.

Built per process (`lattice project` passes one instance to every runner) against a
registry given to it, so tests that start many runners never collide on the global one.
"""

from __future__ import annotations

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
