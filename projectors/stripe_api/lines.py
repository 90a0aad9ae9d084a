"""Line lists a webhook cut short, made whole: GET /v1/invoices/{id}/lines (or a credit
note's), cached in `lattice.hydrated_lines`.

A webhook's invoice or credit note carries only the first page of its `lines` (ten, with
`has_more: true` when there are more). For a projection that sets `complete_lines`, the
runner hands such an event to the hydrator, which replaces the page with every line, read
once from Stripe and then from the cache, so a replay sees the same lines without calling
Stripe again. Only lists that can no longer change are completed: a finalized invoice's
(`open`, `paid`, `uncollectible`, `void`) and an issued or void credit note's; a draft's
lines stay as the webhook showed them.

Outcomes: no API key configured -> the event as it came (its lines stay a first page: the
projection says what it cannot judge). Stripe unreachable, failing, the circuit open, or
the key refused (401, or 403 for the platform's own object: a restricted key without read
access to invoices or credit notes) -> `HydrationUnavailable` (the runner waits and tries
again). Stripe knows no such object (404), or more than `MAX_PAGES` pages -> the event as
it came, logged, and that outcome cached too (as JSON `null`), so a replay reads what the
live run read and asks Stripe nothing. A connected account's 403 or another 4xx -> the
event as it came, logged, not cached (the next event of that object asks again).
An Organization's event names its account in `context`: the request carries it as
`Stripe-Context`, as the thin-event fetch does.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson

from projectors.base import Record
from schemas.record import HEADER_EVENT_TYPE

# The object types whose lists are completed: the path of their lines, and the statuses
# in which those lines are final.
LISTS: dict[str, tuple[str, frozenset[str]]] = {
    "invoice": ("/v1/invoices/{}/lines", frozenset({"open", "paid", "uncollectible", "void"})),
    "credit_note": ("/v1/credit_notes/{}/lines", frozenset({"issued", "void"})),
}
PAGE_SIZE = 100  # Stripe's largest page
# How many pages one object may take (100 x 100 lines); past that, the event as it came.
MAX_PAGES = 100
# Stripe's webhook JSON is indented; a compact body (a test's, a replayed one) has no space.
_HAS_MORE = (b'"has_more": true', b'"has_more":true')


def may_be_cut_short(record: Record) -> bool:
    """Cheap, for every record: an invoice or credit note event (by the receiver's header;
    a record without one, an app's usage fact or an event sent again by hand without its
    headers, is left to `cut_short`, which reads the body) whose body says `has_more`
    somewhere."""
    kind = record.headers.get(HEADER_EVENT_TYPE)
    if kind is not None and not kind.startswith((b"invoice.", b"credit_note.")):
        return False
    value = record.value
    return _HAS_MORE[0] in value or _HAS_MORE[1] in value


def cut_short(record: Record) -> tuple[str, str, str | None, str | None, dict[str, Any]] | None:
    """For an event whose finalized invoice or issued credit note carries only the first
    page of its lines: (object type, object id, the Connect account, the Organization's
    context, the event); else None."""
    try:
        event = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        return None  # the reducer says why
    data = event.get("data") if type(event) is dict else None
    obj = data.get("object") if type(data) is dict else None
    if type(obj) is not dict:
        return None
    kind, object_id, lines = obj.get("object"), obj.get("id"), obj.get("lines")
    if type(kind) is not str or kind not in LISTS or type(object_id) is not str or not object_id:
        return None
    if type(lines) is not dict or lines.get("has_more") is not True:
        return None
    if obj.get("status") not in LISTS[kind][1]:
        return None
    account, context = event.get("account"), event.get("context")
    return (
        kind,
        object_id,
        account if type(account) is str and account else None,
        context if type(context) is str and context and not account else None,
        event,
    )


def lines_path(kind: str, object_id: str) -> str:
    """Where Stripe lists the lines of this invoice or credit note."""
    return LISTS[kind][0].format(quote(object_id, safe=""))


def with_lines(event: dict[str, Any], lines: list[Any]) -> bytes:
    """The event's JSON with its object's `lines` replaced by every line."""
    obj = event["data"]["object"]
    obj["lines"] = dict(obj["lines"], data=lines, has_more=False)
    return orjson.dumps(event)
