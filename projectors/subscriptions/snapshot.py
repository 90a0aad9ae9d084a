"""Reading snapshot events, and the one rule that orders snapshots of an object (pure).

Every event about a subscription, customer or invoice carries a full snapshot of it. Which
snapshot a row shows is decided by `version`: a string the reducer computes per snapshot and
the store compares in SQL (`WHERE t.version < excluded.version`, `COLLATE "C"`). Since it
is a total order, the row ends as the maximum over every snapshot seen, whatever the order
of arrival and however often each event came: permutation- and duplicate-proof by
construction. Both projections (subscriptions, invoices) use it; nothing else decides.

    version = phase | created (Unix s, 12 digits) | lifecycle rank | progress | event id
              | API version

- phase 1 (terminal: canceled subscription, deleted customer, deleted draft invoice ...)
  beats phase 0, so a late update never resurrects it;
- then the newer `created` wins;
- within one second, the later lifecycle state wins (draft < open < paid ...);
- within one second and state, the one further along: a `*.created` event (always an
  object's first snapshot) loses to any other, and an invoice with more payment attempts
  wins (`attempt_count` never goes down);
- then the event id, only so that two same-second snapshots resolve the same way
  everywhere;
- last, the API version: one event delivered in two shapes (two endpoints on different
  API versions during an upgrade) keeps the newer shape, whichever copy came first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

from ingest.record import HEADER_EVENT_TYPE
from projectors.base import PoisonRecord, Record

LIVE = 0
TERMINAL = 1
MAX_PROGRESS = 9999


def version(
    phase: int, created: int, rank: int, progress: int, event_id: str, api_version: str
) -> str:
    """The ordering key of one snapshot; compare as plain (C-collated) strings."""
    if not 0 <= phase <= 9 or not 0 <= rank <= 9 or not 0 <= created < 10**12:
        raise ValueError(f"out of range: phase={phase} created={created} rank={rank}")
    steps = min(max(progress, 0), MAX_PROGRESS)
    return f"{phase}:{created:012d}:{rank}:{steps:04d}:{event_id}:{api_version}"


class Versioned(Protocol):
    """A snapshot change: an object id and the version that orders its snapshots."""

    @property
    def id(self) -> str: ...

    @property
    def version(self) -> str: ...


V = TypeVar("V", bound=Versioned)


def newest(changes: Iterable[V]) -> list[V]:
    """The winning snapshot per id among `changes` (a batch collapses to one row per id)."""
    best: dict[str, V] = {}
    for change in changes:
        held = best.get(change.id)
        if held is None or supersedes(change.version, held.version):
            best[change.id] = change
    return list(best.values())


@dataclass(frozen=True, slots=True)
class Event:
    """The parts of a snapshot event every reducer needs."""

    id: str
    type: str
    created: int
    account: str | None
    livemode: bool
    object: dict[str, Any]
    api_version: str


def progress(event: Event, steps: int = 0) -> int:
    """How far along its object a snapshot is within one second and state: first by
    `steps` (a count that never goes down, such as an invoice's `attempt_count`), then the
    object's first snapshot (`*.created`) before any other."""
    return 2 * steps + (0 if event.type.endswith(".created") else 1)


def supersedes(candidate: str, current: str | None) -> bool:
    """The guard the store applies in SQL, for models and tests: newer version wins."""
    return current is None or candidate > current


def declared_elsewhere(record: Record, handled: frozenset[str]) -> bool:
    """True when the record's `stripe-event-type` header names a type not in `handled`.

    The receiver copies the type into a header, so most records a projection does not
    read are skipped without parsing their body; a record without the header is parsed.
    """
    declared = record.headers.get(HEADER_EVENT_TYPE)
    return declared is not None and declared.decode("utf-8", "replace") not in handled


def read_event(record: Record) -> Event | None:
    """The snapshot event in `record`, or None for thin events (no `data.object`)."""
    body = record.json()
    data = body.get("data")
    obj = data.get("object") if type(data) is dict else None
    if not isinstance(obj, dict):
        return None
    event_id, event_type, created = body.get("id"), body.get("type"), body.get("created")
    if not isinstance(event_id, str) or not isinstance(event_type, str):
        raise PoisonRecord("snapshot event without a string `id` and `type`")
    if type(created) is not int or not 0 <= created < 10**12:
        raise PoisonRecord(f"{event_id}: `created` is not Unix seconds: {created!r}")
    account = body.get("account")
    api_version = body.get("api_version")
    return Event(
        id=event_id,
        type=event_type,
        created=created,
        # The Connect account alone. An Organization's endpoint names in `context` the
        # account each event came from (the events index keeps it): read as `account`, the
        # whole organization's subscriptions would drop out of MRR (`account IS NULL`).
        account=account if isinstance(account, str) and account else None,
        livemode=body.get("livemode") is True,
        object=obj,
        api_version=api_version if type(api_version) is str else "",
    )


def object_id(event: Event, prefix: str) -> str:
    """The snapshot's id; PoisonRecord when a snapshot of this type has none."""
    value = event.object.get("id")
    if not isinstance(value, str) or not value.startswith(prefix):
        raise PoisonRecord(f"{event.id} ({event.type}): object has no `{prefix}...` id")
    return value


def line_id(line: Mapping[str, Any]) -> str | None:
    """An invoice line's id. Before 2019-12-03 a subscription line's `id` (`sub_`, `sli_`) was
    not unique: the same one came back on every invoice of a subscription. Such payloads
    carry the line's globally unique `il_` id in `unique_id`: read that first."""
    for field in ("unique_id", "id"):
        value = line.get(field)
        if type(value) is str and value:
            return value
    return None


def ref(value: Any) -> str | None:
    """An id from a field that is either an id or an expanded object."""
    # Exact type checks: parsed JSON holds only dicts and lists, and an ABC isinstance
    # check costs more than all the rest of reading a snapshot.
    kind = type(value)
    if kind is str:
        return value or None
    if kind is dict:
        inner = value.get("id")
        return inner if type(inner) is str else None
    return None


def integer(value: Any) -> int | None:
    """An integer field (Unix seconds, amounts, counts), else None (bools are not ints)."""
    return value if type(value) is int else None


def exact_decimal(value: Any, whole: int | None) -> Decimal | None:
    """Stripe's decimal string of a number (`"0.5"` in `unit_amount_decimal`,
    `quantity_decimal`), else the whole number beside it."""
    if type(value) is str:
        try:
            exact = Decimal(value)
        except InvalidOperation:
            exact = None
        if exact is not None and exact.is_finite():
            return exact
    return None if whole is None else Decimal(whole)


def text(value: Any) -> str | None:
    """A string field, else None."""
    return value if type(value) is str else None


EMPTY: Mapping[str, Any] = MappingProxyType({})


def mapping(value: Any) -> Mapping[str, Any]:
    """A nested object, or an empty one when absent or null."""
    return value if type(value) is dict else EMPTY


def list_data(value: Any) -> list[Any]:
    """The items of an embedded list object (`{"object": "list", "data": [...]}`); none
    when it is absent, null or not that shape."""
    data = mapping(value).get("data")
    return data if type(data) is list else []
