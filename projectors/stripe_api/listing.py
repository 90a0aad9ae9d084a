"""Stripe's 30 days of events, listed newest first: snapshot events at `GET /v1/events`
(paged with `starting_after`), thin events at `GET /v2/core/events` (paged with
`next_page_url`). What `lattice backfill` compares with the log."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from projectors.stripe_api.client import StripeClient
from schemas.envelope import rfc3339_moment


async def list_events(
    client: StripeClient,
    since: datetime,
    *,
    types: Sequence[str] = (),
    account: str | None = None,
    page_size: int = 100,
) -> AsyncIterator[list[dict[str, Any]]]:
    """Pages of `GET /v1/events` created at `since` or later, newest first."""
    after: str | None = None
    while True:
        params: dict[str, str | int | list[str]] = {
            "limit": page_size,
            "created[gte]": int(since.timestamp()),
        }
        if types:
            params["types"] = list(types)
        if after is not None:
            params["starting_after"] = after
        page = await client.get("/v1/events", params, account=account)
        data = [e for e in page.get("data") or [] if isinstance(e, dict) and "id" in e]
        if data:
            yield data
        if not page.get("has_more") or not data:
            return
        after = str(data[-1]["id"])


async def list_thin_events(
    client: StripeClient,
    since: datetime,
    *,
    account: str | None = None,
    page_size: int = 100,
) -> AsyncIterator[list[dict[str, Any]]]:
    """Pages of `GET /v2/core/events` (thin events, such as a meter's error reports)
    created at `since` or later, newest first, each page naming the next
    (`next_page_url`); an account's own with its `Stripe-Context`.

    The listing is asked for no time range: Stripe's SDKs have named that filter three
    ways (`created[gte]`, `created_gte`, `gte`) over the v2 API's life, and one it does
    not know would refuse the whole listing. Newest first, the first event older than
    `since` ends it instead (an event whose `created` cannot be read is kept)."""
    path = "/v2/core/events"
    params: dict[str, str | int | list[str]] | None = {"limit": page_size}
    while True:
        page = await client.get(path, params, context=account)
        data = [e for e in page.get("data") or [] if isinstance(e, dict) and "id" in e]
        recent = [e for e in data if not _older(e, since)]
        if recent:
            yield recent
        following = page.get("next_page_url")
        ended = not data or len(recent) < len(data)  # nothing more, or older than `since`
        if ended or not isinstance(following, str) or not following:
            return
        path, params = following, None  # the URL carries the page


def _older(event: dict[str, Any], since: datetime) -> bool:
    """Created before `since`; an event whose `created` cannot be read is not."""
    created = event.get("created")
    if isinstance(created, str):
        moment = rfc3339_moment(created)
        return moment is not None and moment < since
    if isinstance(created, int) and not isinstance(created, bool):
        return 0 < created < since.timestamp()
    return False


THIN_PREFIXES = ("v1.", "v2.")  # thin events' types: `v1.billing.meter.no_meter_found`


def listings(
    client: StripeClient,
    since: datetime,
    *,
    types: Sequence[str] = (),
    account: str | None = None,
    page_size: int = 100,
) -> list[tuple[str, AsyncIterator[list[dict[str, Any]]]]]:
    """The listings of `account` (the platform's when None) since `since` that can hold
    events of `types` (every type when empty), each named: the snapshot events', then
    the thin events' (Stripe filters the first on `types`; this filters the second)."""
    thin_types = [t for t in types if t.startswith(THIN_PREFIXES)]
    snapshot_types = [t for t in types if not t.startswith(THIN_PREFIXES)]
    found: list[tuple[str, AsyncIterator[list[dict[str, Any]]]]] = []
    if not types or snapshot_types:
        pages = list_events(
            client, since, types=snapshot_types, account=account, page_size=page_size
        )
        found.append(("events (GET /v1/events)", pages))
    if not types or thin_types:
        thin = list_thin_events(client, since, account=account, page_size=page_size)
        found.append(("thin events (GET /v2/core/events)", _of_types(thin, thin_types)))
    return found


async def _of_types(
    pages: AsyncIterator[list[dict[str, Any]]], types: Sequence[str]
) -> AsyncIterator[list[dict[str, Any]]]:
    async for page in pages:
        kept = [e for e in page if not types or e.get("type") in types]
        if kept:
            yield kept


def created_seconds(event: dict[str, Any]) -> int:
    """`created` in Unix seconds: an integer on snapshot events, RFC 3339 on thin ones."""
    created = event.get("created")
    if isinstance(created, int) and not isinstance(created, bool):
        return created
    moment = rfc3339_moment(created) if isinstance(created, str) else None
    return 0 if moment is None else int(moment.timestamp())
