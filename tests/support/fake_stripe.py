"""A fake of Stripe's API for the tests: a small Starlette app served by uvicorn on a free
loopback port. It answers the calls Lattice makes (GET /v2/core/events/{id}, GET
/v1/events, GET /v1/invoices/{id}/lines and /v1/credit_notes/{id}/lines) the way Stripe
does, and on request fails: 429 with `Retry-After`, 500, slow answers, 404. It records
every request it saw (without the key).

    async with serve(FakeStripe(api_key="sk_test_x")) as fake:
        fake.add_v2_event(full_event)
        fake.fail_next(2, status=500)
        ... StripeClient(base_url=fake.url, ...)
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.asgi_server import serving


@dataclass(frozen=True)
class Seen:
    """One request the fake received."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]


@dataclass(frozen=True)
class Fault:
    """How to answer the next request instead of the real answer."""

    status: int | None  # None: answer normally, but only after `delay`
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


class FakeStripe:
    """The state behind the fake: events, queued faults, requests seen."""

    def __init__(self, *, api_key: str = "sk_test_fake_51Lattice") -> None:
        self.api_key = api_key
        self.v2_events: dict[str, dict[str, Any]] = {}
        self.v1_events: list[dict[str, Any]] = []
        # Invoice or credit note id -> (the Connect account it belongs to, its lines).
        self.lines: dict[str, tuple[str | None, list[dict[str, Any]]]] = {}
        self.faults: deque[Fault] = deque()
        self.seen: list[Seen] = []
        # Connected accounts the key has no access to (disconnected, or never connected).
        self.inaccessible: set[str] = set()
        # A restricted key without access to v2 events: the v2 listing answers 403.
        self.v2_listing_forbidden = False
        self.url = ""
        self._request_ids = itertools.count(1)

    def add_v2_event(self, full: dict[str, Any]) -> None:
        """Serve `full` at GET /v2/core/events/{its id}."""
        self.v2_events[full["id"]] = full

    def add_v1_events(self, events: list[dict[str, Any]]) -> None:
        """Serve these snapshot events from GET /v1/events."""
        self.v1_events.extend(events)

    def add_lines(
        self, object_id: str, lines: list[dict[str, Any]], *, account: str | None = None
    ) -> None:
        """Serve `lines` at GET /v1/invoices/{object_id}/lines (or the credit note's), in
        `account`'s context (Stripe-Account) or the platform's."""
        self.lines[object_id] = (account, lines)

    def fail_next(
        self,
        count: int,
        *,
        status: int | None,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer the next `count` requests with `status` (after `delay` seconds)."""
        for _ in range(count):
            self.faults.append(Fault(status, dict(headers or {}), delay))

    def requests_to(self, prefix: str) -> list[Seen]:
        """The requests seen whose path starts with `prefix`."""
        return [seen for seen in self.seen if seen.path.startswith(prefix)]

    def app(self) -> Starlette:
        """The Starlette app serving this state."""
        return Starlette(
            routes=[
                Route("/v2/core/events", self._v2_events),
                Route("/v2/core/events/{event_id}", self._v2_event),
                Route("/v1/events", self._v1_events),
                Route("/v1/invoices/{object_id}/lines", self._lines),
                Route("/v1/credit_notes/{object_id}/lines", self._lines),
            ]
        )

    async def _guard(self, request: Request) -> Response | None:
        headers = {k.lower(): v for k, v in request.headers.items() if k.lower() != "authorization"}
        self.seen.append(
            Seen(
                request.method, request.url.path, list(request.query_params.multi_items()), headers
            )
        )
        if self.faults:
            fault = self.faults.popleft()
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status is not None:
                return self._error(fault.status, "api_error", "injected failure", fault.headers)
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            given = request.headers.get("authorization", "")[-4:]
            return self._error(
                401, "invalid_request_error", f"Invalid API Key provided: sk_test_****{given}"
            )
        return None

    def _error(
        self, status: int, kind: str, message: str, headers: Mapping[str, str] | None = None
    ) -> Response:
        answer = {"error": {"type": kind, "message": message}}
        return JSONResponse(answer, status_code=status, headers=self._headers(headers))

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {"Request-Id": f"req_fake{next(self._request_ids):08d}", **(extra or {})}

    async def _v2_event(self, request: Request) -> Response:
        refused = await self._guard(request)
        if refused is not None:
            return refused
        event = self.v2_events.get(request.path_params["event_id"])
        # Stripe answers 404 for a Connect account's event fetched without its context.
        if event is None or event.get("context") != request.headers.get("stripe-context"):
            return self._error(
                404, "not_found", f"No such event: {request.path_params['event_id']}"
            )
        return JSONResponse(event, headers=self._headers())

    async def _v2_events(self, request: Request) -> Response:
        """The v2 listing: newest first, an account's own with its Stripe-Context, paged
        by a `next_page_url` that carries the filters and the page."""
        refused = await self._guard(request)
        if refused is not None:
            return refused
        if self.v2_listing_forbidden:
            return self._error(
                403,
                "invalid_request_error",
                f"The provided key 'rk_test_****{self.api_key[-4:]}' does not have the required "
                "permissions for this endpoint. Having the 'rak_event_read' permission would "
                "allow this request to continue.",
            )
        query = request.query_params
        # Only the parameters every version of Stripe's SDKs names alike: the time filter's
        # name has changed (`created[gte]`, `created_gte`, `gte`), and Stripe refuses a
        # parameter it does not know.
        unknown = sorted(set(query) - {"limit", "page"})
        if unknown:
            return self._error(
                400, "invalid_request_error", f"Received unknown parameter: {unknown[0]}"
            )
        context = request.headers.get("stripe-context")
        matching = [
            e
            for e in sorted(self.v2_events.values(), key=lambda e: e["created"], reverse=True)
            if e.get("context") == context
        ]
        limit = min(100, max(1, int(query.get("limit", "20"))))
        start = int(query.get("page", "0"))
        following = None
        if start + limit < len(matching):
            rest = {"limit": str(limit), "page": str(start + limit)}
            following = "/v2/core/events?" + urlencode(rest)
        body = {"data": matching[start : start + limit], "next_page_url": following}
        return JSONResponse(body, headers=self._headers())

    async def _lines(self, request: Request) -> Response:
        """An invoice's or credit note's lines, paged with `limit` and `starting_after`."""
        refused = await self._guard(request)
        if refused is not None:
            return refused
        object_id = request.path_params["object_id"]
        account, lines = self.lines.get(object_id, (None, None))
        if lines is None or account != request.headers.get("stripe-account"):
            return self._error(404, "invalid_request_error", f"No such object: '{object_id}'")
        query = request.query_params
        limit = min(100, max(1, int(query.get("limit", "10"))))
        after = query.get("starting_after")
        start = 0
        if after is not None:
            ids = [line["id"] for line in lines]
            if after not in ids:
                return self._error(400, "invalid_request_error", f"No such line: {after}")
            start = ids.index(after) + 1
        page = lines[start : start + limit]
        body = {
            "object": "list",
            "url": request.url.path,
            "data": page,
            "has_more": start + limit < len(lines),
        }
        return JSONResponse(body, headers=self._headers())

    async def _v1_events(self, request: Request) -> Response:
        refused = await self._guard(request)
        if refused is not None:
            return refused
        query = request.query_params
        types = set(query.getlist("types[]"))
        since = int(query.get("created[gte]", "0"))
        limit = min(100, max(1, int(query.get("limit", "10"))))
        # Newest first, as Stripe lists; among equal `created`, the later-added first.
        ordered = [
            e
            for _, e in sorted(
                enumerate(self.v1_events), key=lambda p: (p[1]["created"], p[0]), reverse=True
            )
        ]
        # Without Stripe-Account: the platform's own events; with it, that account's.
        account = request.headers.get("stripe-account")
        if account in self.inaccessible:
            return self._error(
                403,
                "invalid_request_error",
                f"The provided key 'sk_test_****{self.api_key[-4:]}' does not have access to "
                f"account '{account}' (or that account does not exist). Application access "
                "may have been revoked.",
            )
        matching = [
            e
            for e in ordered
            if e["created"] >= since
            and (not types or e["type"] in types)
            and e.get("account") == account
        ]
        after = query.get("starting_after")
        if after is not None:
            ids = [e["id"] for e in matching]
            if after not in ids:
                return self._error(
                    400, "invalid_request_error", f"starting_after: no such event {after}"
                )
            matching = matching[ids.index(after) + 1 :]
        page = matching[:limit]
        return JSONResponse(
            {
                "object": "list",
                "url": "/v1/events",
                "data": page,
                "has_more": len(matching) > limit,
            },
            headers=self._headers(),
        )


@asynccontextmanager
async def serve(fake: FakeStripe) -> AsyncIterator[FakeStripe]:
    """Serve `fake` on a free loopback port (sets `fake.url`) until the block ends."""
    async with serving(fake.app(), what="fake Stripe API") as port:
        fake.url = f"http://127.0.0.1:{port}"
        yield fake
