"""The receiver's Prometheus metrics, in a registry of its own (one per app, no globals).

Under `lattice serve --workers N` a scrape reaches whichever worker the kernel picks, so
the workers keep their values in files in one directory (prometheus_client's
multiprocess mode, `PROMETHEUS_MULTIPROC_DIR`, set by the supervisor) and every worker's
/metrics answers with the sum over all of them, including workers that have died since.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class ReceiverMetrics:
    """Counters by endpoint, event type and outcome; request latency; producer errors."""

    registry: CollectorRegistry
    deliveries: Counter
    latency: Histogram
    producer_errors: Counter
    # `.labels()` takes a lock and builds a tuple per call (~3 us); the label sets are few
    # (configured endpoints or "unknown", verified event types, a dozen outcomes), so the
    # children are looked up once per set. Same cardinality as the metrics themselves.
    _children: dict[tuple[str, str, str], tuple[Any, Any]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def delivery(self, endpoint: str, event_type: str, outcome: str, seconds: float) -> None:
        """Count one answered delivery and observe how long it took."""
        key = (endpoint, event_type, outcome)
        children = self._children.get(key)
        if children is None:
            children = (
                self.deliveries.labels(endpoint, event_type, outcome),
                self.latency.labels(endpoint, outcome),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def producer_error(self, reason: str) -> None:
        """Count one failed or timed-out append to Kafka."""
        self.producer_errors.labels(reason=reason).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition: this process's values, or all workers' summed."""
        shared = os.environ.get(MULTIPROCESS_DIR)
        if not shared:
            return bytes(generate_latest(self.registry))
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=shared)  # type: ignore[no-untyped-call]
        return bytes(generate_latest(registry))


def create_metrics() -> ReceiverMetrics:
    """Fresh metrics in a fresh registry."""
    registry = CollectorRegistry(auto_describe=True)
    return ReceiverMetrics(
        registry=registry,
        deliveries=Counter(
            "lattice_webhook_deliveries",
            "Webhook deliveries by endpoint, event type (empty until verified) and outcome.",
            ["endpoint", "event_type", "outcome"],
            registry=registry,
        ),
        latency=Histogram(
            "lattice_webhook_duration_seconds",
            "Time from request to answer, including the wait for Kafka's acknowledgement.",
            ["endpoint", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        producer_errors=Counter(
            "lattice_kafka_producer_errors",
            "Appends to the event log that failed or were not acknowledged in time.",
            ["reason"],
            registry=registry,
        ),
    )
