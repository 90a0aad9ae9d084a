"""Thin events made whole: GET /v2/core/events/{id}, cached in `lattice.hydrated_events`;
and the lines of invoices and credit notes a webhook cut short (`lines.py`).

The runner calls a `Hydrator` for each thin event (`"object": "v2.core.event"`, no `data`)
of a projection that sets `hydrate_thin_events = True`, and hands the result to `reduce`.
The cache is read first, so a replay never calls Stripe again; the value served is the
cached JSON either way, so a live run and a replay see the same bytes.

Outcomes: Stripe says 404, 403 in a connected account's context, or another 4xx (but a
400 for a well-formed id and account), or the event's mode is not the key's ->
`PoisonRecord` (the runner dead-letters it with the reason; a replay after the fix
fetches it again). Stripe refusing the key (401, or 403 for the platform's own events) or
the request (400 for a well-formed id and account: the API version, say),
unreachable, failing, redirecting or the circuit open, the cache's database unreachable,
or no API key configured -> `HydrationUnavailable` (the runner waits and tries again; it
never skips).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import asyncpg
import orjson
import structlog
from pydantic import ValidationError

from deploy.settings import Settings
from projectors.base import HydrationUnavailable, PoisonRecord, Record
from projectors.migrate import ensure_runtime
from projectors.stopping import unless_stopped
from projectors.stripe_api.cache import EVENTS, LINES, Cache, compact, storable
from projectors.stripe_api.client import StripeClient
from projectors.stripe_api.errors import (
    StripeAPIError,
    StripeAuthError,
    StripeNotFound,
    StripeUnavailable,
)
from projectors.stripe_api.lines import MAX_PAGES, PAGE_SIZE, cut_short, lines_path, with_lines
from schemas.envelope import THIN, ThinEvent

log = structlog.get_logger("lattice.stripe_api")

_DB_ERRORS = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)
_EVENT_ID = re.compile(r"evt_[A-Za-z0-9_]+")
_ACCOUNT = re.compile(r"acct_[A-Za-z0-9]+")
_MODES = {True: "live-mode", False: "test-mode"}


class Hydrator:
    """`await hydrator(record)`: the record with its value replaced by the full event."""

    def __init__(self, pool: asyncpg.Pool, client: StripeClient | None) -> None:
        self.pool = pool
        self.client = client
        self.fetched = 0
        self.cache_hits = 0
        self._said_no_key = False
        # The pages of one object fetched before Stripe stopped answering (429, 5xx): its
        # next try goes on from there instead of asking for them again (Stripe's rate limit
        # is the account's, shared with the merchant's own application).
        self._partial: _Partial | None = None

    async def __call__(self, record: Record) -> Record:
        """The record carrying the full event, or its invoice's or credit note's every
        line (unchanged if it is neither a thin event nor one whose lines were cut short)."""
        event = record.json()
        if event.get("object") != THIN or "data" in event:
            return await self.complete_lines(record)
        event_id = event.get("id")
        if not isinstance(event_id, str) or not event_id.startswith("evt_"):
            raise PoisonRecord("thin event without a valid `id`: cannot fetch its body")
        context = event.get("context") if isinstance(event.get("context"), str) else None
        livemode = event.get("livemode") if isinstance(event.get("livemode"), bool) else None
        body = await self.full_event(event_id, context=context, livemode=livemode)
        return dataclasses.replace(record, value=body)

    async def full_event(
        self, event_id: str, *, context: str | None = None, livemode: bool | None = None
    ) -> bytes:
        """The full event as JSON bytes, from the cache or (once) from Stripe."""
        cached = await self._cached(EVENTS, event_id)
        if cached is not None:
            self.cache_hits += 1
            return compact(cached)
        fetched = await self._fetch(event_id, context, livemode)
        stored = await self._store(
            EVENTS, event_id, str(fetched.get("type", "")), context, body=storable(fetched)
        )
        log.info("thin event hydrated", event_id=event_id, type=fetched.get("type"))
        return compact(stored)

    async def _cached(self, cache: Cache, key: str) -> str | None:
        try:
            async with self.pool.acquire() as conn:
                found: str | None = await conn.fetchval(cache.read, key)
                return found
        except _DB_ERRORS as exc:
            raise HydrationUnavailable(f"cache of {cache.what} unreachable: {exc}") from exc

    async def _store(self, cache: Cache, key: str, *values: str | None, body: bytes) -> str:
        try:
            async with self.pool.acquire() as conn:
                stored: str | None = await conn.fetchval(cache.store, key, *values, body.decode())
                if stored is None:
                    # Another process stored it meanwhile: our INSERT waited for its
                    # commit, but the statement's snapshot predates it; a new one sees it.
                    stored = await conn.fetchval(cache.read, key)
        except _DB_ERRORS as exc:
            raise HydrationUnavailable(f"cache of {cache.what} unreachable: {exc}") from exc
        if stored is None:  # deleted by hand between the two statements: try again
            raise HydrationUnavailable(f"cache of {cache.what}: {key} vanished while stored")
        return stored

    async def _fetch(
        self, event_id: str, context: str | None, livemode: bool | None
    ) -> dict[str, Any]:
        if self.client is None:
            raise HydrationUnavailable(
                f"thin event {event_id} needs its full body from Stripe, but "
                "LATTICE_STRIPE_API_KEY is not set: set it and the projector goes on"
            )
        if livemode is not None and self.client.livemode not in (None, livemode):
            # Stripe would answer 404: say why, without spending the account's rate limit.
            raise PoisonRecord(
                f"thin event {event_id} is a {_MODES[livemode]} event, but "
                f"LATTICE_STRIPE_API_KEY is a {_MODES[not livemode]} key: it cannot fetch it"
            )
        try:
            fetched = await self.client.get(
                f"/v2/core/events/{quote(event_id, safe='')}", context=context
            )
        except StripeUnavailable as exc:
            raise HydrationUnavailable(str(exc), retry_after=exc.retry_after) from exc
        except StripeAuthError as exc:
            if exc.status == 401 or context is None:
                # The key, not the record (revoked, mistyped, or a restricted key without
                # read access to events): every thin event would be dead-lettered until it
                # is fixed, and nothing sends dead letters again. Wait, saying why.
                raise HydrationUnavailable(
                    f"Stripe refuses LATTICE_STRIPE_API_KEY ({exc}): fix the key (it needs "
                    "read access to events) and the projector goes on"
                ) from exc
            # 403 in an account's context: this account no longer lets us in (access
            # revoked); its other events fare the same, the platform's are unaffected.
            raise PoisonRecord(f"cannot hydrate thin event {event_id}: {exc}") from exc
        except StripeAPIError as exc:
            well_formed = context is None or _ACCOUNT.fullmatch(context)
            if exc.status == 400 and well_formed and _EVENT_ID.fullmatch(event_id):
                # A GET without parameters of a well-formed id, in no account's context or
                # a well-formed one (both come from the record): the request as every one
                # is sent is refused (an API version Stripe does not know, say), not this
                # record. Wait, saying why.
                raise HydrationUnavailable(
                    f"Stripe refuses the request for thin event {event_id} ({exc}): check "
                    "LATTICE_STRIPE_API_VERSION and LATTICE_STRIPE_API_BASE"
                ) from exc
            raise PoisonRecord(f"cannot hydrate thin event {event_id}: {exc}") from exc
        self.fetched += 1
        try:
            full = ThinEvent.model_validate(fetched)
        except ValidationError as exc:
            raise PoisonRecord(
                f"GET /v2/core/events/{event_id} answered something that is not a v2 event: "
                f"{exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}"
            ) from None
        if full.id != event_id:
            raise PoisonRecord(f"GET /v2/core/events/{event_id} answered event {full.id}")
        return fetched

    async def complete_lines(self, record: Record) -> Record:
        """The record with its finalized invoice's or issued credit note's every line, from
        the cache or (once) from Stripe; as it came when they cannot be had (see lines.py)."""
        found = cut_short(record)
        if found is None:
            return record
        kind, object_id, account, context, event = found
        cached = await self._cached(LINES, object_id)
        if cached is not None:
            self.cache_hits += 1
            return _as_cached(record, event, cached)
        if self.client is None:
            if not self._said_no_key:
                self._said_no_key = True
                log.warning(
                    "lines beyond the webhook's first page not fetched: "
                    "LATTICE_STRIPE_API_KEY is not set",
                    object_id=object_id,
                )
            return record
        lines, final = await self._fetch_lines(kind, object_id, account, context)
        if not final:
            return record
        # None (Stripe has no such object, or too many lines) is kept as JSON null.
        stored = await self._store(LINES, object_id, kind, account or context, body=storable(lines))
        if lines is not None:
            log.info("lines fetched", object_id=object_id, lines=len(lines))
        return _as_cached(record, event, stored)

    async def _fetch_lines(
        self, kind: str, object_id: str, account: str | None, context: str | None
    ) -> tuple[list[dict[str, Any]] | None, bool]:
        """Every line, page after page, and whether that answer is final (to cache); None
        (logged) when Stripe will not give them."""
        assert self.client is not None
        path = lines_path(kind, object_id)
        lines: list[dict[str, Any]] = []
        after: str | None = None
        key = (path, account, context)
        done = 0
        if self._partial is not None and self._partial.key == key:
            lines, after, done = self._partial.lines, self._partial.after, self._partial.pages
        self._partial = None
        for pages in range(done, MAX_PAGES):
            params: dict[str, str | int | list[str]] = {"limit": PAGE_SIZE}
            if after is not None:
                params["starting_after"] = after
            try:
                page = await self.client.get(path, params, account=account, context=context)
            except StripeUnavailable as exc:
                if after is not None:
                    self._partial = _Partial(key, lines, after, pages)
                raise HydrationUnavailable(str(exc), retry_after=exc.retry_after) from exc
            except StripeAuthError as exc:
                if exc.status == 401 or (account is None and context is None):
                    # The key, not the object (revoked, mistyped, or a restricted key
                    # without read access to invoices or credit notes): wait, saying why.
                    raise HydrationUnavailable(
                        f"Stripe refuses LATTICE_STRIPE_API_KEY ({exc}): fix the key (it "
                        "needs read access to invoices and credit notes) and the projector "
                        "goes on"
                    ) from exc
                log.warning("lines not fetched", object_id=object_id, error=str(exc))
                return None, False
            except StripeNotFound as exc:
                log.warning("lines not fetched", object_id=object_id, error=str(exc))
                return None, True
            except StripeAPIError as exc:
                log.warning("lines not fetched", object_id=object_id, error=str(exc))
                return None, False
            self.fetched += 1
            data = [line for line in page.get("data") or [] if isinstance(line, dict)]
            lines.extend(data)
            if page.get("has_more") is not True or not data:
                return lines, True
            after = str(data[-1].get("id"))
        log.warning("lines not fetched: too many pages", object_id=object_id, pages=MAX_PAGES)
        return None, True


@dataclasses.dataclass(frozen=True, slots=True)
class _Partial:
    """The pages of one object's lines had before Stripe stopped answering."""

    key: tuple[str, str | None, str | None]  # path, account, context
    lines: list[dict[str, Any]]
    after: str  # the last line had: the next page starts after it
    pages: int  # pages had


def _as_cached(record: Record, event: dict[str, Any], cached: str) -> Record:
    """The record with the cached lines, or as it came when the cache says Stripe would
    not give them (JSON null)."""
    lines = orjson.loads(cached)
    if lines is None:
        return record
    return dataclasses.replace(record, value=with_lines(event, lines))


@asynccontextmanager
async def open_hydrator(
    settings: Settings, stop: asyncio.Event | None = None
) -> AsyncIterator[Hydrator]:
    """A Hydrator with its own small pool; without an API key it serves the cache only.
    Abandoned when `stop` is set while it waits for another process's migrations."""
    url = settings.require_database_url()
    conn = await asyncpg.connect(url)
    try:
        # Creates lattice.hydrated_events if missing; can wait long for another process's.
        creating = ensure_runtime(conn)
        if stop is None:
            await creating
        else:
            await unless_stopped(creating, stop, "stopped while the migrations waited")
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        client = None
        key = settings.stripe_api_key
        if key is not None and key.get_secret_value():
            client = StripeClient.from_settings(settings)
        try:
            yield Hydrator(pool, client)
        finally:
            if client is not None:
                await client.aclose()
    finally:
        await pool.close()
