"""A month of a SaaS platform, deterministic from its seed (pure: no clock, no I/O).

`generate()` plays every customer's and connected account's month, then schedules the
deliveries the way Stripe makes them: mostly in order, some twice, some swapped with a
neighbour, some only after a first attempt that broke off. A few forged requests (signed
with a wrong secret) show the receiver turning them away.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field, replace

from ingest.simulate.billing import CustomerMonth
from ingest.simulate.catalogue import catalogue
from ingest.simulate.connect import connect_month
from ingest.simulate.expected import Expected, expected_totals
from ingest.simulate.shapes import API_VERSIONS, MIXED, NEW_API, Ids, meter, version_at
from ingest.simulate.story import (
    DAY,
    MONTH_START,
    PLATFORM,
    UPGRADED_AT,
    Emitted,
    Story,
    UsageTruth,
)
from ingest.simulate.usage import EVENT_NAME

# An object's last event, when one of these, ended it: a paid invoice's is `payment_succeeded`
# (with `paid`, in the same second).
FINAL_TYPES = (
    ".deleted",
    ".paid",
    ".payment_succeeded",
    ".voided",
    ".marked_uncollectible",
    ".reversed",
    ".failed",
)

# Delivery kinds: a normal delivery, a first attempt that breaks off mid-body (Stripe
# retries it later), and a forged request signed with a secret nobody configured.
DELIVER, BROKEN, FORGED = "deliver", "broken", "forged"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One HTTP request to make: to which endpoint, which bytes, and how."""

    endpoint: str
    event_id: str
    body: bytes
    kind: str = DELIVER


@dataclass(frozen=True, slots=True)
class Simulation:
    """Everything `lattice simulate` sends, and what the tables must say afterwards."""

    deliveries: list[Delivery]
    facts: list[tuple[bytes, bytes]]  # (key, value) for `usage.reported`, in order
    hydrated: dict[str, bytes]  # thin event id -> full body from GET /v2/core/events/{id}
    expected: Expected
    # (customer, meter, period start) -> what happened to its usage: a check of the meters
    # projection that shares none of its rules (the expected totals restate them).
    truth: dict[tuple[str, str, int], UsageTruth] = field(default_factory=dict)

    def digest(self) -> str:
        """SHA-256 over every byte the simulation sends (same seed, same digest)."""
        h = hashlib.sha256()
        for delivery in self.deliveries:
            h.update(f"{delivery.endpoint}|{delivery.kind}|".encode() + delivery.body)
        for key, value in self.facts:
            h.update(key + b"|" + value)
        for event_id in sorted(self.hydrated):
            h.update(self.hydrated[event_id])
        return h.hexdigest()


def _arriving_last(ordered: list[Emitted], rng: random.Random) -> dict[str, float]:
    """For some objects (half of those whose last event ends them, one in ten of the
    others): the last event but one, delivered after the last (a subscription's final
    update after its deletion, an invoice's `payment_failed` or `finalized` after its
    `paid`): Stripe promises no order within one object either. The latest event of a
    second before the last one's, which is what a projection can order them by. Event id
    -> the position it is delivered at."""
    events: dict[str, list[tuple[int, Emitted]]] = {}
    for position, emitted in enumerate(ordered):
        data = emitted.body.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        if isinstance(obj, dict) and isinstance(obj.get("id"), str):
            events.setdefault(obj["id"], []).append((position, emitted))
    late = {}
    for history in events.values():
        if len(history) < 2:
            continue
        last_at, newest = history[-1]
        # The latest event of an earlier second: an invoice's `paid` and
        # `payment_succeeded` share one, and the stale `open` before them is the harm.
        older = next((e for _, e in reversed(history[:-1]) if e.created < newest.created), None)
        # An object's end (deleted, paid, voided...) is where a late update does harm.
        final = str(newest.body["type"]).endswith(FINAL_TYPES)
        if rng.random() < (0.5 if final else 0.1) and older is not None:
            late[str(older.body["id"])] = last_at + 0.75
    return late


def _encode(body: object) -> bytes:
    # Stripe sends pretty-printed JSON; the log keeps these bytes as they are.
    return json.dumps(body, indent=2).encode()


def generate(customers: int, accounts: int, seed: int, api_version: str = MIXED) -> Simulation:
    """Play the month for `customers` customers and `accounts` connected accounts."""
    if api_version != MIXED and api_version not in API_VERSIONS:
        raise ValueError(f"api version must be one of {', '.join((MIXED, *API_VERSIONS))}")
    rng = random.Random(seed)
    story = Story(rng, Ids(rng))
    story.meter_id = story.ids.new("mtr")
    story.emit(
        MONTH_START - DAY,
        "billing.meter.created",
        meter(story.meter_id, MONTH_START - DAY, EVENT_NAME, "API requests"),
        version_at(api_version, MONTH_START - DAY, UPGRADED_AT),
    )
    prices = catalogue(story)
    for index in range(customers):
        if api_version == MIXED:
            # Mixed months once drew each customer's version here; the draw stays, so
            # that a seed's month keeps its customers (the endpoint's upgrade shapes them).
            rng.choice(API_VERSIONS)
        CustomerMonth(story, prices, api_version, index).run()
    connect_month(story, accounts, NEW_API if api_version == MIXED else api_version)
    deliveries = _schedule(story, rng)
    facts = [
        (fact.customer.encode(), json.dumps(fact.value).encode())
        for fact in sorted(story.facts, key=lambda f: (f.reported_at, f.seq))
    ]
    expected = expected_totals(
        story,
        events=len(story.events),
        accepted=sum(1 for d in deliveries if d.kind == DELIVER),
        rejected=sum(1 for d in deliveries if d.kind == FORGED),
    )
    hydrated = {key: _encode(body) for key, body in story.hydrated.items()}
    truth = {
        key: replace(found, credited=story.usage[key][5]) for key, found in story.truth.items()
    }
    return Simulation(deliveries, facts, hydrated, expected, truth)


def _schedule(story: Story, rng: random.Random) -> list[Delivery]:
    """Stripe's delivery order: at least once, no order promised, retried on failure."""
    ordered = sorted(story.events, key=lambda e: (e.created, e.seq))
    late = _arriving_last(ordered, rng)
    slots: list[tuple[float, Delivery]] = []
    for position, emitted in enumerate(ordered):
        event_id = str(emitted.body["id"])
        delivery = Delivery(emitted.endpoint, event_id, _encode(emitted.body))
        at = late.get(event_id, float(position))
        roll = rng.random()
        if roll < 0.08:
            at += 1.5  # overtaken by the next event
        elif roll < 0.11:  # the first attempt breaks off; Stripe retries a while later
            slots.append((at, Delivery(delivery.endpoint, event_id, delivery.body, BROKEN)))
            at += rng.randint(5, 60) + 0.5
        slots.append((at, delivery))
        if rng.random() < 0.05:  # delivered twice
            slots.append((at + rng.randint(1, 40) + 0.25, delivery))
    for _ in range(max(1, len(ordered) // 250)):
        victim = ordered[rng.randrange(len(ordered))]
        slots.append(
            (
                rng.uniform(0, len(ordered)),
                Delivery(PLATFORM, str(victim.body["id"]), _encode(victim.body), FORGED),
            )
        )
    return [delivery for _, delivery in sorted(slots, key=lambda slot: slot[0])]
