"""`lattice backfill`: append to the log every event Stripe has and the log lacks.

Stripe retries a webhook for up to three days; a receiver unreachable for longer loses
events. Stripe keeps them listable for 30 days (`listing.py`: snapshot and thin events).
Backfill lists them since a time, drops those the log's index
(`projections.events`) or an earlier backfill (`lattice.backfilled_events`) already has,
and appends the rest, oldest first, in the receiver's record format with the header
`lattice-source: backfill`.

Safe to interrupt and run again: each batch is marked `sending` in the ledger before the
producer is asked and `appended` once the broker acknowledged it; a later run settles
rows left `sending` by reading the log since then, so nothing is appended twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import structlog
from aiokafka import AIOKafkaProducer

from deploy import kafka_options
from deploy.settings import Settings
from ingest.publisher import COMPRESSION
from ingest.record import LogRecord, build_record
from projectors.migrate import ensure_runtime
from projectors.stripe_api import ledger, logtail
from projectors.stripe_api.client import StripeClient
from projectors.stripe_api.errors import StripeAPIError
from projectors.stripe_api.ledger import BackfillError
from projectors.stripe_api.listing import created_seconds, listings
from projectors.stripe_api.missing import MissingEvents

SOURCE = "backfill"
REQUEST_HEADROOM = 64 * 1024  # a record's key, headers and framing beyond its value
# Records stamped within this margin before a ledger row may belong to it (clock skew).
SETTLE_MARGIN = timedelta(minutes=5)
LAG_POLL_SECONDS = 0.5
log = structlog.get_logger("lattice.backfill")


@dataclass
class Progress:
    """Where a backfill is; passed to the progress callback after each step."""

    pages: int = 0
    listed: int = 0
    in_log: int = 0
    earlier_backfill: int = 0
    missing: int = 0
    appended: int = 0
    settled: int = 0
    oldest: int | None = None
    # Connected accounts Stripe would not list (no access any more): why, per account.
    refused: dict[str, str] = field(default_factory=dict)
    # Thin events Stripe would not list where it listed the snapshot events (a restricted
    # key without access to v2 events, say): why, per account ("platform" for ours).
    thin_refused: dict[str, str] = field(default_factory=dict)
    # Records the events projector has still to index before the run can compare.
    behind: int = 0
    # Connected accounts the log has events of that were not listed (not in --account).
    unlisted_accounts: list[str] = field(default_factory=list)
    # Events over LATTICE_MAX_BODY_BYTES, not appended: id -> bytes (the receiver would
    # have refused them too; appending one would fail every later run on it).
    too_large: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BackfillOptions:
    """What to backfill."""

    since: datetime
    types: Sequence[str] = ()
    accounts: Sequence[str] = ()
    endpoint: str = "backfill"
    dry_run: bool = False
    allow_lag: bool = False
    # How long to wait for the events projector to index what the log holds at the start.
    lag_wait: float = 60.0
    page_size: int = 100
    batch_size: int = 500


async def backfill(
    settings: Settings,
    client: StripeClient,
    options: BackfillOptions,
    progress: Callable[[Progress], None] | None = None,
) -> Progress:
    """Run one backfill; the returned Progress says what was missing and appended."""
    report = progress or (lambda _: None)
    state = Progress()
    conn = await asyncpg.connect(settings.require_database_url())
    try:
        await ensure_runtime(conn)
        await ledger.require_index(conn)
        if not await ledger.try_lock(conn):
            raise BackfillError("another `lattice backfill` is running against this database")
        try:
            await _wait_for_index(conn, settings, options, state, report)
            state.settled = await _settle(conn, settings)
            missing = MissingEvents()
            try:
                await _find_missing(conn, client, settings.topic, options, state, report, missing)
                seen = await ledger.accounts_in_log(conn, options.since)
                state.unlisted_accounts = [a for a in seen if a not in options.accounts]
                if not options.dry_run:
                    await _append(conn, settings, missing, options, state, report)
            finally:
                missing.close()
        finally:
            # Best effort: with the connection lost, its session (and lock) is gone anyway,
            # and the error that lost it is the one worth reporting.
            with contextlib.suppress(asyncpg.InterfaceError, asyncpg.PostgresError, OSError):
                await ledger.unlock(conn)
    finally:
        with contextlib.suppress(asyncpg.InterfaceError, OSError):
            await conn.close()
    log.info(
        "backfill done",
        missing=state.missing,
        appended=state.appended,
        listed=state.listed,
        settled=state.settled,
    )
    return state


async def _wait_for_index(
    conn: asyncpg.Connection,
    settings: Settings,
    opts: BackfillOptions,
    state: Progress,
    report: Callable[[Progress], None],
) -> None:
    """Wait (at most `lag_wait`) until the events projector has indexed what the log held
    when the run began: a live system always has a few records in flight, and Stripe's
    retries after an outage many more; only an index that stays behind is refused."""
    try:  # also with --allow-lag: a missing topic is said here, in one line
        ends = await logtail.end_offsets(settings.kafka_bootstrap, settings.topic)
    except LookupError as exc:
        raise BackfillError(str(exc)) from None
    if opts.allow_lag:
        return
    deadline = asyncio.get_running_loop().time() + opts.lag_wait
    while True:
        state.behind = await ledger.events_lag(conn, settings.topic, ends)
        if not state.behind:
            return
        if asyncio.get_running_loop().time() >= deadline:
            break
        report(state)
        await asyncio.sleep(LAG_POLL_SECONDS)
    raise BackfillError(
        f"the events projector is {state.behind} records behind {settings.topic} after "
        f"{opts.lag_wait:g} s, so the log's index is incomplete: check that `lattice project "
        "events` runs (`lattice status`) and run again, or pass --allow-lag (events not "
        "indexed yet may then be appended twice; projectors ignore the duplicate)"
    )


async def _settle(conn: asyncpg.Connection, settings: Settings) -> int:
    """Resolve rows a killed run left `sending`: on the log -> appended; else forgotten."""
    pending = await ledger.pending(conn, settings.topic)
    if not pending:
        return 0
    since = min(p.since for p in pending) - SETTLE_MARGIN
    on_log = await logtail.backfilled_since(
        settings.kafka_bootstrap, settings.topic, int(since.timestamp() * 1000)
    )
    landed = [p.id for p in pending if p.id in on_log]
    lost = [p.id for p in pending if p.id not in on_log]
    await ledger.mark_appended(conn, settings.topic, landed)
    await ledger.forget(conn, settings.topic, lost)
    log.info("settled an interrupted backfill", on_log=len(landed), to_append=len(lost))
    return len(landed)


async def _find_missing(
    conn: asyncpg.Connection,
    client: StripeClient,
    topic: str,
    opts: BackfillOptions,
    state: Progress,
    report: Callable[[Progress], None],
    missing: MissingEvents,
) -> None:
    for account in (None, *opts.accounts):
        pages = listings(
            client, opts.since, types=opts.types, account=account, page_size=opts.page_size
        )
        for n, (what, listing) in enumerate(pages):
            try:
                await _add_missing(conn, topic, listing, account, missing, state, report)
            except StripeAPIError as exc:
                if n == 0:
                    if account is None:
                        raise  # the platform's first listing: the key itself
                    # The platform listed with this key, so the refusal is this account's
                    # (access revoked): the others' missing events are still worth appending.
                    state.refused[account] = str(exc)
                    log.warning("account not listed", account=account, error=str(exc))
                    break
                # A listing after one Stripe gave (a restricted key without access to v2
                # events, say): the events listed are still appended.
                state.thin_refused[account or "platform"] = str(exc)
                log.warning("not listed", listing=what, account=account, error=str(exc))


async def _add_missing(
    conn: asyncpg.Connection,
    topic: str,
    pages: AsyncIterator[list[dict[str, Any]]],
    account: str | None,
    missing: MissingEvents,
    state: Progress,
    report: Callable[[Progress], None],
) -> None:
    async for page in pages:
        ids = [str(e["id"]) for e in page]
        indexed, backfilled = await ledger.known(conn, topic, ids)
        state.pages += 1
        state.listed += len(page)
        state.in_log += len(indexed)
        state.earlier_backfill += len(backfilled - indexed)
        for event in page:
            if event["id"] not in indexed and event["id"] not in backfilled:
                missing.add(event, account)
        state.missing = len(missing)
        created = [created_seconds(e) for e in page]
        if created:
            oldest = min(created)
            state.oldest = oldest if state.oldest is None else min(state.oldest, oldest)
        report(state)


def _record(event: dict[str, Any], account: str | None, endpoint: str) -> LogRecord:
    if account is not None and event.get("object") == "event":
        event.setdefault("account", account)  # listed with Stripe-Account: it is theirs
    return build_record(
        orjson.dumps(event), event, endpoint=endpoint, received_at=datetime.now(UTC), source=SOURCE
    )


async def _append(
    conn: asyncpg.Connection,
    settings: Settings,
    missing: MissingEvents,
    opts: BackfillOptions,
    state: Progress,
    report: Callable[[Progress], None],
) -> None:
    if not missing:
        return
    producer = AIOKafkaProducer(
        **kafka_options.options(),
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        client_id="lattice-backfill",
        request_timeout_ms=int(settings.kafka_timeout * 1000),
        # As the receiver sends: compressed, and a record as large as it takes fits.
        compression_type=COMPRESSION,
        max_request_size=settings.max_body_bytes + REQUEST_HEADROOM,
    )
    try:
        await producer.start()
        in_order = missing.oldest_first()
        for start in range(0, len(in_order), opts.batch_size):
            chunk = in_order[start : start + opts.batch_size]
            # Listing a month can take minutes, while Stripe keeps retrying deliveries the
            # receiver logs and the events projector indexes: ask the index again now.
            indexed, _ = await ledger.known(conn, settings.topic, [m.id for m in chunk])
            chunk = [m for m in chunk if m.id not in indexed]
            state.missing -= len(indexed)
            state.in_log += len(indexed)
            if not chunk:
                continue
            ready: list[tuple[dict[str, Any], LogRecord]] = []
            for event, account in missing.bodies(chunk):
                record = _record(event, account, opts.endpoint)
                if len(record.value) > settings.max_body_bytes:
                    state.too_large[str(event["id"])] = len(record.value)
                    state.missing -= 1
                else:
                    ready.append((event, record))
            if not ready:
                continue
            ids = [str(event["id"]) for event, _ in ready]
            await ledger.mark_sending(
                conn, settings.topic, ids, [created_seconds(event) for event, _ in ready]
            )
            sends = [
                await producer.send(
                    settings.topic,
                    value=r.value,
                    key=r.key,
                    headers=r.headers,
                    timestamp_ms=r.timestamp_ms,
                )
                for _, r in ready
            ]
            await asyncio.gather(*sends)
            await ledger.mark_appended(conn, settings.topic, ids)
            state.appended += len(ready)
            report(state)
    finally:
        await producer.stop()
