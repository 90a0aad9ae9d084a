"""Idempotent provisioning of Lattice's topics: the event log, its dead letters, usage facts."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

# Kept forever: the log is the source of truth every table is rebuilt from.
FOREVER = {"retention.ms": "-1", "retention.bytes": "-1"}


async def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    *,
    partitions: int,
    replication_factor: int = 1,
    extra_config: dict[str, str] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet; return the names that were created."""
    config = {**FOREVER, **(extra_config or {})}
    if replication_factor > 1:
        config.setdefault("min.insync.replicas", str(min(2, replication_factor)))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in dict.fromkeys(names) if name not in existing]
        if missing:
            await admin.create_topics(
                [
                    NewTopic(name, partitions, replication_factor, topic_configs=config)
                    for name in missing
                ]
            )
        return missing
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, names: Iterable[str]) -> None:
    """Delete topics (tests use this to clean up after themselves)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [name for name in names if name in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()
