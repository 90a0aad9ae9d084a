"""What the projector scenarios share: one stream covering every projection, its own topics
per scenario, a clean reference run, and the comparison of every projection table.

Each scenario produces the same records in the same order to topics of its own, so its
partitions and offsets equal the reference's; tables are compared row for row with the
topic names (which differ) replaced by a placeholder.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from pydantic import SecretStr

from deploy.settings import Settings
from deploy.stack.topics import ensure_topics
from ingest.record import LogRecord
from projectors.catalog import discover
from tests.fixtures.connect_streams import volume
from tests.fixtures.records import log_record
from tests.fixtures.stripe_objects import MONTH, T0, credit_note, credit_note_line, event
from tests.support.meter_scenario import Scenario, billing_month
from tests.support.projectors import log_ends
from tests.support.stripe_stream import produce, records, stream
from tests.support.wait import eventually

PARTITIONS = 3
# Small batches: a kill lands between many commits, not before one big one.
SMALL_BATCHES = {"LATTICE_PROJECTOR_BATCH_SIZE": "10", "LATTICE_PROJECTOR_BATCH_WAIT_MS": "20"}
# A killed process leaves its group member behind until this expires (10 s by default):
# the next process's join waits for that, every kill.
SHORT_SESSION = {"LATTICE_PROJECTOR_SESSION_TIMEOUT_MS": "2000"}
POISON = [b"not json at all", b'{"id": 5}', b"\xff\xfe"]
# Given to every projector process; no output of theirs may ever contain it.
API_KEY = "sk_test_" + secrets.token_hex(16)
# The fake Stripe API serving the thin events' bodies, set by the suite's fixture
# (`stripe_api` in conftest.py) before any projector starts.
STRIPE_API = {"base": "http://127.0.0.1:9"}


@dataclass(frozen=True)
class Stream:
    """The records of one run: the event log's and the usage topic's."""

    events: list[LogRecord | bytes]
    usage: list[LogRecord]


@dataclass(frozen=True)
class Topics:
    """A scenario's own topics."""

    events: str
    usage: str

    @property
    def dlq(self) -> str:
        return f"{self.events}.dlq"


@functools.cache
def the_stream() -> Stream:
    """Built once per session (fixture ids come from a counter): every scenario gets the
    same records. Subscriptions, invoices (with duplicates), Connect money movements,
    a billing month of meters and usage facts, and a few poison records."""
    stripe = records(stream(500, seed=11, thin_every=10**9))
    connect = [log_record(e) for e in volume(orders=90, accounts=8, seed=3)]
    month = _month()
    # The meters' error reports as Stripe delivers them, thin: the projector fetches their
    # bodies (`thin_event_bodies`) from the fake API, so kills land mid-hydration too.
    meters = [log_record(_delivered(e)) for e in month.stripe_events]
    at = datetime(2025, 11, 24, 16, 0, tzinfo=UTC)
    usage = [
        LogRecord(
            key=str(fact["stripe_customer_id"]).encode(),
            value=orjson.dumps(fact),
            headers=[],
            timestamp_ms=int(at.timestamp() * 1000),
        )
        for fact in month.facts
    ]
    events: list[LogRecord | bytes] = [*meters, *stripe, *connect]
    for n, poison in enumerate(POISON):
        events.insert((n + 1) * len(events) // (len(POISON) + 1), poison)
    return Stream(events, usage)


def _delivered(event: dict[str, Any]) -> dict[str, Any]:
    if event.get("object") != "v2.core.event":
        return event
    return {name: value for name, value in event.items() if name != "data"}


@functools.cache
def _month() -> Scenario:
    """The meters' month, built once (its ids come from a counter), with a credit note
    that gives units of the basil customer's usage back (a row that would change if the
    note were applied twice or lost)."""
    month = billing_month("_faults")
    invoice = next(
        e["data"]["object"]
        for e in month.stripe_events
        if e["type"] == "invoice.finalized"
        and e["data"]["object"]["customer"] == "cus_basil_faults"
    )
    usage = invoice["lines"]["data"][0]
    note = credit_note(
        invoice=invoice["id"],
        customer=invoice["customer"],
        lines=[credit_note_line(invoice_line_item=usage["id"], quantity=1)],
    )
    month.stripe_events.append(event("credit_note.created", note, created=T0 + MONTH + 300))
    return month


def thin_event_bodies() -> list[dict[str, Any]]:
    """The full bodies of the stream's thin events, as GET /v2/core/events/{id} gives them."""
    return [e for e in _month().stripe_events if e.get("object") == "v2.core.event"]


async def create_topics(bootstrap: str, prefix: str) -> Topics:
    """Fresh topics for one scenario."""
    topics = Topics(f"{prefix}.stripe.events", f"{prefix}.usage.reported")
    # The usage topic keeps the producer's (fixed) time here, not the broker's as in
    # production: `usage_facts.received_at` is then the same in every run it is compared to.
    await ensure_topics(bootstrap, [topics.events, topics.dlq, topics.usage], partitions=PARTITIONS)
    return topics


async def produce_stream(bootstrap: str, topics: Topics, part: int = 0, parts: int = 1) -> None:
    """Append part `part` of `parts` of the stream to the scenario's topics, in order."""
    the = the_stream()
    for topic, items in ((topics.events, the.events), (topics.usage, the.usage)):
        size = len(items)
        await produce(bootstrap, topic, items[part * size // parts : (part + 1) * size // parts])


def projector_env(bootstrap: str, url: str, topics: Topics, group_prefix: str) -> dict[str, str]:
    """The environment of a `lattice project` process of one scenario."""
    return {
        "LATTICE_KAFKA_BOOTSTRAP": bootstrap,
        "LATTICE_DATABASE_URL": url,
        "LATTICE_TOPIC": topics.events,
        "LATTICE_USAGE_TOPIC": topics.usage,
        "LATTICE_GROUP_PREFIX": group_prefix,
        "LATTICE_STRIPE_API_KEY": API_KEY,
        "LATTICE_STRIPE_API_BASE": STRIPE_API["base"],
        **SMALL_BATCHES,
        **SHORT_SESSION,
    }


def settings_for(bootstrap: str, url: str, topics: Topics, group_prefix: str) -> Settings:
    """The same configuration as `projector_env`, as a Settings object."""
    return Settings(
        kafka_bootstrap=bootstrap,
        database_url=url,
        topic=topics.events,
        usage_topic=topics.usage,
        group_prefix=group_prefix,
        partitions=PARTITIONS,
        stripe_api_key=SecretStr(API_KEY),
        stripe_api_base=STRIPE_API["base"],
    )


async def log_end_positions(bootstrap: str, topics: Topics) -> dict[tuple[str, int], int]:
    """The end offset of every non-empty partition of both topics."""
    ends: dict[tuple[str, int], int] = {}
    for topic in (topics.events, topics.usage):
        for partition, end in (await log_ends(bootstrap, topic)).items():
            if end:
                ends[(topic, partition)] = end
    return ends


async def stored_positions(url: str) -> dict[str, dict[tuple[str, int], int]]:
    """Every projector's stored next offsets (empty while the tables do not exist)."""
    try:
        conn = await asyncpg.connect(url, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return {}
    try:
        found = await conn.fetch(
            "SELECT projector, topic, partition, next_offset FROM lattice.offsets"
        )
    except asyncpg.UndefinedTableError:
        return {}
    finally:
        await conn.close()
    positions: dict[str, dict[tuple[str, int], int]] = {}
    for row in found:
        positions.setdefault(row["projector"], {})[(row["topic"], row["partition"])] = int(
            row["next_offset"]
        )
    return positions


async def progress(url: str) -> int:
    """How many records all projectors have committed, together (0 if unreachable)."""
    try:
        return sum(sum(p.values()) for p in (await stored_positions(url)).values())
    except (OSError, asyncpg.PostgresError):
        return 0


def expected_positions(
    settings: Settings, ends: Mapping[tuple[str, int], int]
) -> dict[str, dict[tuple[str, int], int]]:
    """Where every projector must stand once it has read the whole log."""
    wanted: dict[str, dict[tuple[str, int], int]] = {}
    for name, projection in discover().items():
        topics = set(projection.topics(settings))
        wanted[name] = {tp: end for tp, end in ends.items() if tp[0] in topics}
    return wanted


def caught_up(wanted: dict[str, dict[tuple[str, int], int]]) -> Any:
    """A predicate: every projector's positions include the log ends."""

    def check(stored: dict[str, dict[tuple[str, int], int]]) -> bool:
        return all(
            {tp: stored.get(name, {}).get(tp) for tp in ends} == ends
            for name, ends in wanted.items()
        )

    return check


async def snapshot(url: str, topics: Topics) -> dict[str, list[tuple[Any, ...]]]:
    """Every projection table and view (sorted rows), topic names replaced by a placeholder, plus
    the dead letters recorded (which records each projector gave up on)."""
    rename = {topics.events: "<events>", topics.usage: "<usage>", topics.dlq: "<dlq>"}
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'projections' ORDER BY 1"
        )
        found: dict[str, list[tuple[Any, ...]]] = {}
        for (table,) in tables:
            rows = await conn.fetch(f'SELECT * FROM projections."{table}"')
            found[table] = _sorted(rows, rename)
        dead = await conn.fetch(
            "SELECT projector, topic, partition, kafka_offset FROM lattice.dead_letters"
        )
        found["lattice.dead_letters"] = _sorted(dead, rename)
        return found
    finally:
        await conn.close()


def _sorted(rows: Sequence[asyncpg.Record], rename: Mapping[str, str]) -> list[tuple[Any, ...]]:
    cleaned = [tuple(rename.get(v, v) if isinstance(v, str) else v for v in r) for r in rows]
    return sorted(cleaned, key=repr)


def differences(
    got: dict[str, list[tuple[Any, ...]]], reference: dict[str, list[tuple[Any, ...]]]
) -> dict[str, str]:
    """Per table, a short description of how `got` differs from the reference."""
    diffs: dict[str, str] = {}
    for table in sorted(set(got) | set(reference)):
        mine, theirs = got.get(table, []), reference.get(table, [])
        if mine != theirs:
            extra = [r for r in mine if r not in theirs][:2]
            missing = [r for r in theirs if r not in mine][:2]
            diffs[table] = f"{len(mine)} rows vs {len(theirs)}; extra {extra}; missing {missing}"
    return diffs


async def finish_and_compare(
    bootstrap: str,
    url: str,
    topics_prefix: str,
    group_prefix: str,
    reference: dict[str, list[tuple[Any, ...]]],
    alive: Callable[[], None] = lambda: None,
) -> None:
    """Wait for every projector at the log end (`alive` raising if a process died), then
    compare every table and view with the reference run's."""
    topics = await create_topics(bootstrap, topics_prefix)  # idempotent: exists
    settings = settings_for(bootstrap, url, topics, group_prefix)
    wanted = expected_positions(settings, await log_end_positions(bootstrap, topics))

    async def positions() -> dict[str, dict[tuple[str, int], int]]:
        alive()
        return await stored_positions(url)

    await eventually(
        positions, caught_up(wanted), timeout=120, what="every projector at the log end"
    )
    diffs = differences(await snapshot(url, topics), reference)
    # A string, so that pytest prints every table's difference in full.
    assert not diffs, "\n".join(f"{table}: {diff}" for table, diff in diffs.items())
