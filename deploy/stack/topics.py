"""Idempotent provisioning of Lattice's topics: the event log, its dead letters, usage facts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import structlog
from aiokafka import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code

from deploy import kafka_options
from deploy.stack.errors import StackError

log = structlog.get_logger("deploy.stack")

# How long provisioning waits for the broker to list the topics it just created.
LISTED_WITHIN_SECONDS = 30.0

# Kept forever: the log is the source of truth every table is rebuilt from.
FOREVER = {"retention.ms": "-1", "retention.bytes": "-1"}

# A dead letter is its record with headers added (the error, the origin's topic, partition
# and offset), so it must fit where the record did not quite: a record the log took at its
# limit (Kafka's default `message.max.bytes` is 1 MiB), incompressible, would otherwise be
# refused as a letter, and its projector would stop on it at every start. Topic names
# ending in `.dlq` are dead-letter topics (`<topic>.dlq`, DESIGN.md).
DEAD_LETTER_SUFFIX = ".dlq"
DEAD_LETTER_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# What a record adds to its body, at most: its key and headers (~300 bytes), the batch's
# own header, and what compression adds to a value it cannot shrink. The event log takes
# a body of `LATTICE_MAX_BODY_BYTES` with this much to spare, compressible or not.
RECORD_HEADROOM = 64 * 1024
MAX_MESSAGE_BYTES = "max.message.bytes"

# The usage-fact topic stamps each record with the broker's clock, not the app's: the meters
# projection takes a fact's time as no later than its record's (a fact stamped days ahead by
# a wrong clock must not move `usage_discrepancies`' "now"), which only the broker can vouch
# for. The event log keeps the receiver's own stamp (its time of receipt).
APPEND_TIME = {"message.timestamp.type": "LogAppendTime"}


async def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    *,
    partitions: int,
    replication_factor: int = 1,
    extra_config: dict[str, str] | None = None,
    append_time: Iterable[str] = (),
    record_limits: Mapping[str, int] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet; return the names that were created.

    Raises `StackError` when the broker refuses to create one (too few brokers for the
    replication factor, a policy) — the broker answers per topic rather than failing the
    request — and when a topic that exists already would not keep its records forever:
    a receiver started before provisioning may have had it auto-created with the broker's
    defaults (seven days), and the log is the source of truth. Topics named in
    `append_time` are created with the broker's time on each record (`APPEND_TIME`);
    those in `record_limits` with that `max.message.bytes` (`record_limits_for`), and an
    existing one that takes less gets a warning saying how to raise it."""
    wanted = list(dict.fromkeys(names))
    stamped = set(append_time)
    limits = dict(record_limits or {})
    config = {**FOREVER, **(extra_config or {})}
    if replication_factor > 1:
        config.setdefault("min.insync.replicas", str(min(2, replication_factor)))
    admin = AIOKafkaAdminClient(**kafka_options.options(), bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        name,
                        partitions,
                        replication_factor,
                        topic_configs=_config(
                            name,
                            {**config, **APPEND_TIME} if name in stamped else config,
                            limits.get(name),
                        ),
                    )
                    for name in missing
                ]
            )
            _raise_refusals(response.topic_errors)
            await _until_listed(bootstrap, missing)
        kept = [name for name in wanted if name in existing]
        await _check_existing(admin, kept, stamped, limits, bootstrap)
        return missing
    finally:
        await admin.close()


async def _until_listed(bootstrap: str, names: list[str]) -> None:
    """Wait until the broker's metadata lists the topics just created. The controller
    answers CreateTopics once it has recorded them, and a broker's metadata follows a
    moment later (longer on a busy machine): a command run right after provisioning
    (`lattice replay`, a receiver's start) would otherwise be told they do not exist."""
    deadline = asyncio.get_running_loop().time() + LISTED_WITHIN_SECONDS
    while unlisted := await missing_topics(bootstrap, names):
        if asyncio.get_running_loop().time() >= deadline:
            log.warning(
                "topics created but not listed yet by the broker",
                topics=unlisted,
                seconds=LISTED_WITHIN_SECONDS,
            )
            return
        await asyncio.sleep(0.05)


def record_limits_for(topic: str, max_body_bytes: int) -> dict[str, int]:
    """The `max.message.bytes` of the event log `topic` and of its dead letters, for a
    receiver that takes bodies up to `max_body_bytes`: the log takes any of them even
    uncompressed (a broker's default, 1 MiB, would refuse the record of a body near that
    limit that barely compresses: a 503 at each of Stripe's retries), and a letter adds
    its headers to the largest."""
    largest = max_body_bytes + RECORD_HEADROOM
    letters = max(DEAD_LETTER_MAX_MESSAGE_BYTES, largest + RECORD_HEADROOM)
    return {topic: largest, f"{topic}{DEAD_LETTER_SUFFIX}": letters}


def _config(name: str, config: dict[str, str], limit: int | None) -> dict[str, str]:
    if limit is not None:
        return {MAX_MESSAGE_BYTES: str(limit), **config}
    if not name.endswith(DEAD_LETTER_SUFFIX):
        return config
    return {MAX_MESSAGE_BYTES: str(DEAD_LETTER_MAX_MESSAGE_BYTES), **config}


def _raise_refusals(topic_errors: Iterable[tuple[Any, ...]]) -> None:
    refused = []
    for topic, code, *message in topic_errors:
        if code in (0, TopicAlreadyExistsError.errno):  # created, or by a racing provisioner
            continue
        detail = f": {message[0]}" if message and message[0] else ""
        refused.append(f"{topic} ({for_code(code).__name__}{detail})")
    if refused:
        raise StackError(f"the broker did not create {'; '.join(refused)}")


async def _check_existing(
    admin: AIOKafkaAdminClient,
    names: list[str],
    stamped: set[str],
    limits: dict[str, int],
    bootstrap: str,
) -> None:
    """Raise when an existing topic would not keep its records forever; warn when one that
    should take the broker's time keeps the producer's, or takes smaller records than
    `limits` asks (made by an earlier version, or by hand: not changed here, since altering
    a topic's config through the admin API replaces it whole)."""
    if not names:
        return
    wanted = {**FOREVER, **APPEND_TIME, MAX_MESSAGE_BYTES: ""}
    resources = [ConfigResource(ConfigResourceType.TOPIC, name, dict(wanted)) for name in names]
    short: dict[str, list[str]] = {}
    for response in await admin.describe_configs(resources):
        for _code, _message, _kind, topic, entries in response.resources:
            for key, value, *_ in entries:
                if key in FOREVER and value != FOREVER[key]:
                    short.setdefault(topic, []).append(f"{key}={value}")
                elif key in APPEND_TIME and topic in stamped and value != APPEND_TIME[key]:
                    log.warning(
                        f"{topic} keeps the producer's time ({key}={value}): a usage fact's "
                        "time is then bounded by the app's own clock; change it with "
                        f"{_alter(bootstrap, topic)} {key}=LogAppendTime",
                        topic=topic,
                    )
                elif key == MAX_MESSAGE_BYTES and _smaller(value, limits.get(topic)):
                    log.warning(
                        f"{topic} takes records up to {value} bytes, less than the "
                        f"{limits[topic]} that LATTICE_MAX_BODY_BYTES asks of it; raise it "
                        f"with {_alter(bootstrap, topic)} {key}={limits[topic]}",
                        topic=topic,
                    )
    if short:
        has = "; ".join(f"{topic} has {', '.join(found)}" for topic, found in short.items())
        fixes = "; ".join(
            f"{_alter(bootstrap, topic)} retention.ms=-1,retention.bytes=-1" for topic in short
        )
        raise StackError(
            f"{has}: Lattice's topics must keep their records forever (-1); change it with {fixes}"
        )


def _smaller(value: str | None, wanted: int | None) -> bool:
    return wanted is not None and value is not None and value.isdigit() and int(value) < wanted


def _alter(bootstrap: str, topic: str) -> str:
    """The start of the kafka-configs.sh command that changes `topic`'s config."""
    first = bootstrap.split(",")[0].strip()
    return (
        f"kafka-configs.sh --bootstrap-server {first} --alter --entity-type topics "
        f"--entity-name {topic} --add-config"
    )


async def missing_topics(
    bootstrap: str, names: Iterable[str], *, timeout: float = 40.0
) -> list[str]:
    """Which of `names` the broker does not have, sorted. Reads every topic's metadata:
    asking for topics by name lets a broker with `auto.create.topics.enable` (Kafka's
    default) create them with its defaults (seven days' retention). `timeout` bounds each
    request (aiokafka's default, 40 s, unless given)."""
    client = AIOKafkaClient(
        **kafka_options.options(),
        bootstrap_servers=bootstrap,
        request_timeout_ms=max(int(timeout * 1000), 1000),
    )
    try:
        await client.bootstrap()
        cluster = await client.fetch_all_metadata()
    finally:
        await client.close()
    return sorted(set(names) - cluster.topics())


async def record_limit(bootstrap: str, topic: str, *, timeout: float = 40.0) -> int | None:
    """The largest record batch `topic` takes (its `max.message.bytes`, or the broker's
    `message.max.bytes` it inherits), in bytes after compression; None when the answer
    does not say. A refusal (ACLs without DescribeConfigs on the topic, say) is raised as
    the broker's error, as is a broker that cannot be reached."""
    admin = AIOKafkaAdminClient(
        **kafka_options.options(),
        bootstrap_servers=bootstrap,
        request_timeout_ms=max(int(timeout * 1000), 1000),
    )
    try:
        await admin.start()
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, {MAX_MESSAGE_BYTES: ""})
        for response in await admin.describe_configs([resource]):
            for code, message, _kind, _topic, entries in response.resources:
                if code != 0:
                    raise for_code(code)(message or topic)
                for key, value, *_ in entries:
                    if key == MAX_MESSAGE_BYTES and value is not None and value.isdigit():
                        return int(value)
    finally:
        await admin.close()
    return None


async def delete_topics(bootstrap: str, names: Iterable[str]) -> None:
    """Delete topics (tests use this to clean up after themselves)."""
    admin = AIOKafkaAdminClient(**kafka_options.options(), bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [name for name in names if name in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()
