"""The simulator is deterministic and its expected totals agree with what it sends (pure)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter, defaultdict
from typing import Any

import pytest
import stripe

from ingest.simulate.deliver import sign
from ingest.simulate.generator import BROKEN, DELIVER, FORGED, Simulation, generate
from ingest.simulate.shapes import NEW_API, OLD_API

# Stripe's clock has one-second resolution: for equal `created`, the lifecycle decides.
_LIFECYCLE = {
    "draft": 0,
    "incomplete": 0,
    "open": 1,
    "trialing": 1,
    "active": 1,
    "past_due": 2,
    "paid": 3,
    "uncollectible": 3,
    "canceled": 3,
}


def _final_snapshots(sim: Any, prefix: str) -> dict[str, dict[str, Any]]:
    """The newest snapshot of every object whose id starts with `prefix`."""
    newest: dict[str, tuple[int, int, dict[str, Any]]] = {}
    for delivery in sim.deliveries:
        if delivery.kind != DELIVER:
            continue
        body = json.loads(delivery.body)
        obj = body.get("data", {}).get("object", {})
        if not str(obj.get("id", "")).startswith(prefix):
            continue
        rank = (body["created"], _LIFECYCLE.get(obj.get("status"), 0))
        if obj["id"] not in newest or rank > newest[obj["id"]][:2]:
            newest[obj["id"]] = (*rank, obj)
    return {key: value[2] for key, value in newest.items()}


def test_same_seed_gives_the_same_bytes() -> None:
    first, second = generate(40, 3, seed=11), generate(40, 3, seed=11)
    assert first.digest() == second.digest()
    assert [d.body for d in first.deliveries] == [d.body for d in second.deliveries]
    assert first.expected == second.expected
    assert generate(40, 3, seed=12).digest() != first.digest()


def test_same_seed_gives_the_same_bytes_in_another_process() -> None:
    # Another interpreter with another hash seed: no set or hash order leaks into the output.
    code = "from ingest.simulate.generator import generate; print(generate(40, 3, 11).digest())"
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            check=True,
            capture_output=True,
            text=True,
            env={"PYTHONHASHSEED": hash_seed, "PATH": ""},
        ).stdout.strip()
        for hash_seed in ("1", "2")
    }
    assert digests == {generate(40, 3, seed=11).digest()}


def test_every_event_is_delivered_and_some_twice_out_of_order_or_after_a_retry() -> None:
    sim = generate(120, 4, seed=3)
    delivered = Counter(d.event_id for d in sim.deliveries if d.kind == DELIVER)
    assert len(delivered) == sim.expected.events
    assert any(count > 1 for count in delivered.values())
    assert any(d.kind == BROKEN for d in sim.deliveries)
    assert sim.expected.rejected == sum(1 for d in sim.deliveries if d.kind == FORGED) >= 1
    created = [
        json.loads(d.body)["created"]
        for d in sim.deliveries
        if d.kind == DELIVER and json.loads(d.body)["object"] == "event"
    ]
    assert created != sorted(created)
    endpoints = {d.endpoint for d in sim.deliveries}
    assert endpoints == {"platform", "connect"}


def test_mixed_api_versions_use_both_shapes() -> None:
    subs = _final_snapshots(generate(60, 0, seed=5), "sub_")
    old = [s for s in subs.values() if "current_period_start" in s]
    new = [s for s in subs.values() if "current_period_start" in s["items"]["data"][0]]
    assert old
    assert new
    assert len(old) + len(new) == len(subs)
    only_new = generate(10, 0, seed=5, api_version=NEW_API)
    versions = {json.loads(d.body).get("api_version") for d in only_new.deliveries}
    assert versions - {None} == {NEW_API}
    assert OLD_API not in versions


def test_expected_totals_equal_the_final_snapshots() -> None:
    sim = generate(150, 3, seed=9)
    subs, invoices = _final_snapshots(sim, "sub_"), _final_snapshots(sim, "in_")
    assert Counter(s["status"] for s in subs.values()) == sim.expected.subscriptions
    by_status: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for invoice in invoices.values():
        row = by_status[(invoice["status"], invoice["currency"])]
        for index, field in enumerate(("total", "amount_paid", "amount_remaining"), start=1):
            row[index] += invoice[field]
        row[0] += 1
    assert {k: tuple(v) for k, v in by_status.items()} == {
        k: (t.count, t.total, t.amount_paid, t.amount_remaining)
        for k, t in sim.expected.invoices.items()
    }
    assert {"active", "past_due", "canceled", "trialing"} <= set(sim.expected.subscriptions)
    assert {"paid", "open", "uncollectible"} <= {status for status, _ in sim.expected.invoices}


def test_mrr_counts_active_and_past_due_licensed_items_only() -> None:
    sim = generate(150, 0, seed=9)
    mrr: dict[str, int] = defaultdict(int)
    for sub in _final_snapshots(sim, "sub_").values():
        if sub["status"] not in ("active", "past_due"):
            continue
        for item in sub["items"]["data"]:
            price = item["price"]
            if price["unit_amount"] is None:
                continue
            monthly = price["unit_amount"] * item["quantity"]
            mrr[sub["currency"]] += (
                monthly // 12 if price["recurring"]["interval"] == "year" else monthly
            )
    assert dict(mrr) == sim.expected.mrr


def test_usage_rows_add_up() -> None:
    sim = generate(200, 0, seed=4)
    rows = sim.expected.reconciliation
    assert rows
    for row in rows:
        billed = row.billed_quantity - row.credited_quantity
        assert row.delta == row.reported_value - row.rejected_value - billed
    statuses = Counter(row.status for row in rows)
    assert statuses["pending"]
    assert statuses["matched"]
    assert statuses["under_billed"]
    assert statuses["credited"]
    listed = Counter(r.status for r in sim.expected.discrepancies)
    assert set(listed) <= {"under_billed", "over_billed", "unbilled"}
    # A subscription canceled mid-period without a final invoice: its usage is unbilled.
    canceled = {
        sub["customer"]: sub["ended_at"]
        for sub in _final_snapshots(sim, "sub_").values()
        if sub["status"] == "canceled" and len(sub["items"]["data"]) == 2
    }
    unbilled = {
        r.customer: r.period_end for r in sim.expected.discrepancies if r.status == "unbilled"
    }
    assert unbilled
    assert unbilled.items() <= canceled.items()
    deltas = [abs(r.delta) for r in sim.expected.discrepancies]
    assert deltas == sorted(deltas, reverse=True)
    facts = [json.loads(value) for _, value in sim.facts]
    assert any(f.get("action") == "cancel" for f in facts)
    assert len({f["identifier"] for f in facts}) < len(facts)  # some reported twice
    assert sim.hydrated
    for body in sim.hydrated.values():
        full = json.loads(body)
        assert full["object"] == "v2.core.event"
        assert full["data"]["reason"]["error_count"] > 0


def test_connect_balances_add_up() -> None:
    sim = generate(0, 4, seed=2)
    balances = sim.expected.balances
    assert len(balances) == 4
    for b in balances.values():
        assert (
            b.net == b.transferred - b.reversed - b.application_fees + b.refunded_fees - b.paid_out
        )
    assert sum(b.reversed for b in balances.values()) > 0
    assert sum(b.refunded_fees for b in balances.values()) > 0
    assert sum(1 for b in balances.values() if b.paid_out == 0) == 1  # the failed payout


def test_signature_matches_stripes_library() -> None:
    body, secret = b'{"id": "evt_1"}', "whsec_test"
    header = sign(body, ["whsec_other", secret], 1_790_000_000)
    assert stripe.WebhookSignature.verify_header(body.decode(), header, secret, tolerance=None)


def test_unknown_api_version_is_refused() -> None:
    with pytest.raises(ValueError, match="api version"):
        generate(1, 0, seed=1, api_version="2019-01-01")


def test_a_subscriptions_period_is_as_long_as_its_prices_interval() -> None:
    """A yearly price bills for a year: 30-day periods on it (and renewals every month)
    are not what Stripe would send."""
    sim = generate(150, 0, seed=9)
    lengths: Counter[tuple[str, int]] = Counter()
    for sub in _final_snapshots(sim, "sub_").values():
        if sub["status"] != "active" or sub.get("trial_end"):
            continue
        item = sub["items"]["data"][0]
        holder = item if "current_period_end" in item else sub  # per item from 2025-03-31
        days = (holder["current_period_end"] - holder["current_period_start"]) // 86_400
        lengths[(item["price"]["recurring"]["interval"], days)] += 1
    assert set(lengths) == {("month", 30), ("year", 365)}, lengths


def test_previous_attributes_name_only_fields_the_object_has() -> None:
    """From basil on the period sits on the subscription's items: a renewal's
    `previous_attributes` naming a top-level `current_period_end` is a field that era's
    subscription does not have."""
    sim = generate(80, 0, seed=5)
    checked = 0
    for delivery in sim.deliveries:
        if delivery.kind != DELIVER:
            continue
        data = json.loads(delivery.body).get("data") or {}
        previous = data.get("previous_attributes")
        if previous:
            checked += 1
            assert set(previous) <= set(data["object"]), (data["object"]["id"], previous)
    assert checked > 10


def test_anchors_stay_put_and_a_first_invoice_covers_no_earlier_period() -> None:
    """As Stripe has them: `billing_cycle_anchor` is fixed when the subscription starts
    (renewals never move it), and a `subscription_create` invoice's period is its own
    creation at both ends."""
    sim = generate(80, 0, seed=5)
    anchors: dict[str, set[int]] = defaultdict(set)
    first_invoices = 0
    for delivery in sim.deliveries:
        if delivery.kind != DELIVER:
            continue
        obj = (json.loads(delivery.body).get("data") or {}).get("object") or {}
        if obj.get("object") == "subscription":
            anchors[obj["id"]].add(obj["billing_cycle_anchor"])
        if obj.get("object") == "invoice" and obj.get("billing_reason") == "subscription_create":
            first_invoices += 1
            assert obj["period_start"] == obj["period_end"] == obj["created"], obj["id"]
    assert anchors
    assert first_invoices > 10
    assert all(len(seen) == 1 for seen in anchors.values())


def test_a_new_era_invoice_line_has_the_fields_of_stripes_own_example() -> None:
    """The simulator's lines in the basil-and-later shape carry every field of the line in
    Stripe's fixtures for that era (shared/stripe/fixtures-latest.json), no fewer."""
    example = {
        "amount", "currency", "description", "discount_amounts", "discountable", "discounts",
        "id", "invoice", "livemode", "metadata", "object", "parent", "period",
        "pretax_credit_amounts", "pricing", "quantity", "quantity_decimal", "subscription",
        "subtotal", "taxes",
    }  # fmt: skip
    sim = generate(40, 0, seed=5, api_version=NEW_API)
    lines = [line for obj in _objects(sim, "invoice") for line in obj["lines"]["data"]]
    assert lines
    assert all(set(line) == example for line in lines), set(lines[0]) ^ example


def _objects(sim: Simulation, kind: str) -> list[dict[str, Any]]:
    """The `data.object` of every delivered snapshot event whose object is a `kind`."""
    objects = []
    for delivery in sim.deliveries:
        if delivery.kind != DELIVER:
            continue
        obj = (json.loads(delivery.body).get("data") or {}).get("object") or {}
        if obj.get("object") == kind:
            objects.append(obj)
    return objects


# The fields of the credit note and its line in Stripe's fixtures of each era
# (shared/stripe/fixtures-*.json).
CREDIT_NOTE_FIELDS = {
    "amount", "amount_shipping", "created", "currency", "customer",
    "customer_balance_transaction", "discount_amount", "discount_amounts", "effective_at",
    "id", "invoice", "lines", "livemode", "memo", "metadata", "number", "object",
    "out_of_band_amount", "pdf", "pretax_credit_amounts", "reason", "shipping_cost", "status",
    "subtotal", "subtotal_excluding_tax", "total", "total_excluding_tax", "type", "voided_at",
}  # fmt: skip
CREDIT_NOTE_ERA_FIELDS = {
    "legacy": {"refund", "tax_amounts"},
    "basil": {"customer_account", "post_payment_amount", "pre_payment_amount", "refunds",
              "total_taxes"},
}  # fmt: skip
CREDIT_LINE_FIELDS = {
    "amount", "description", "discount_amount", "discount_amounts", "id", "invoice_line_item",
    "livemode", "object", "pretax_credit_amounts", "quantity", "tax_rates", "type",
    "unit_amount", "unit_amount_decimal",
}  # fmt: skip
CREDIT_LINE_ERA_FIELDS = {
    "legacy": {"amount_excluding_tax", "tax_amounts", "unit_amount_excluding_tax"},
    "basil": {"metadata", "taxes"},
}


@pytest.mark.parametrize("era", ["legacy", "basil"])
def test_a_credit_note_has_the_fields_of_stripes_own_example(era: str) -> None:
    """Usage credited back arrives as `credit_note.created` in the era's shape, naming the
    metered line it credits, by a quantity of units."""
    sim = generate(100, 0, seed=2, api_version=NEW_API if era == "basil" else OLD_API)
    notes = _objects(sim, "credit_note")
    assert notes
    invoice_lines = {
        line["id"] for obj in _objects(sim, "invoice") for line in obj["lines"]["data"]
    }
    for note in notes:
        assert set(note) == CREDIT_NOTE_FIELDS | CREDIT_NOTE_ERA_FIELDS[era]
        for line in note["lines"]["data"]:
            assert set(line) == CREDIT_LINE_FIELDS | CREDIT_LINE_ERA_FIELDS[era]
            assert line["invoice_line_item"] in invoice_lines
            assert line["quantity"] >= 1


def test_some_objects_get_an_older_event_after_the_one_that_ended_them() -> None:
    """Stripe promises no order within one object either: the month delivers some
    subscriptions' last update after their deletion and some invoices' events after the
    one that settled them, so the e2e check covers "an old snapshot never resurrects"."""
    sim = generate(120, 4, seed=3)
    newest: dict[str, dict[str, Any]] = {}
    after_the_end: Counter[str] = Counter()
    paid: set[str] = set()
    for delivery in sim.deliveries:
        if delivery.kind != DELIVER:
            continue
        event = json.loads(delivery.body)
        obj = (event.get("data") or {}).get("object") or {}
        if event["type"] == "invoice.payment_succeeded":
            paid.add(obj["id"])
        seen = newest.get(obj.get("id", ""))
        if seen is not None and seen["created"] > event["created"]:
            after_the_end[seen["type"]] += 1
        if seen is None or event["created"] >= seen["created"]:
            newest[obj.get("id", "")] = event
    assert after_the_end["customer.subscription.deleted"] >= 3, after_the_end
    # A paid invoice's last event is `payment_succeeded` (with `paid`, in one second):
    # half of them, as of every object an event ended, not one in ten.
    settled_late = after_the_end["invoice.paid"] + after_the_end["invoice.payment_succeeded"]
    assert settled_late >= len(paid) / 3, (settled_late, len(paid))
    assert after_the_end["invoice.marked_uncollectible"] >= 1, after_the_end


def test_a_mixed_month_upgrades_the_endpoint_so_objects_change_shape() -> None:
    """Stripe renders an endpoint's events in its one version; versions mix where the
    endpoint was upgraded: a subscription or customer made under the old version gets its
    later events in the new shape, and events never go back to the old one."""
    sim = generate(60, 0, seed=5)
    versions: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for delivery in sim.deliveries:
        event = json.loads(delivery.body)
        obj = (event.get("data") or {}).get("object") or {}
        if delivery.kind == DELIVER and event.get("api_version"):
            versions[obj.get("id", "")].append((event["created"], event["api_version"]))
    both = [oid for oid, seen in versions.items() if {v for _, v in seen} == {OLD_API, NEW_API}]
    assert any(oid.startswith("sub_") for oid in both)
    assert any(oid.startswith("cus_") for oid in both)
    every = sorted(pair for seen in versions.values() for pair in seen)
    upgraded = next(at for at, version in every if version == NEW_API)
    assert all(version == NEW_API for at, version in every if at >= upgraded)
