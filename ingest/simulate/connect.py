"""Connected accounts' month: destination charges, separate transfers, fees, payouts."""

from __future__ import annotations

from ingest.simulate.shapes import Json
from ingest.simulate.story import DAY, MONTH_START, Story, Transfer


def _charge(
    story: Story,
    at: int,
    amount: int,
    *,
    destination: str | None = None,
    group: str | None = None,
    fee: str | None = None,
    fee_amount: int | None = None,
    customer: str | None = None,
) -> Json:
    cid = story.ids.new("ch")
    return {
        "id": cid,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": 0,
        "application": None,
        "application_fee": fee,
        "application_fee_amount": fee_amount,
        "balance_transaction": story.ids.new("txn"),
        "captured": True,
        "created": at,
        "currency": "usd",
        "customer": customer,
        "description": None,
        "disputed": False,
        "failure_code": None,
        "failure_message": None,
        "livemode": False,
        "metadata": {},
        "on_behalf_of": None,
        "paid": True,
        "payment_intent": story.ids.new("pi"),
        "refunded": False,
        "refunds": {
            "object": "list",
            "data": [],
            "has_more": False,
            "url": f"/v1/charges/{cid}/refunds",
        },
        "status": "succeeded",
        "transfer_data": None
        if destination is None
        else {"amount": None, "destination": destination},
        "transfer_group": group,
    }


def _transfer_json(t: Transfer) -> Json:
    reversed_amount = sum(amount for _, amount, _ in t.reversals)
    return {
        "id": t.id,
        "object": "transfer",
        "amount": t.amount,
        "amount_reversed": reversed_amount,
        "balance_transaction": f"txn_{t.id[3:]}",
        "created": t.created,
        "currency": t.currency,
        "description": None,
        "destination": t.destination,
        "destination_payment": f"py_{t.id[3:]}",
        "livemode": False,
        "metadata": {},
        "reversals": {
            "object": "list",
            "has_more": False,
            "url": f"/v1/transfers/{t.id}/reversals",
            "data": [
                {
                    "id": rid,
                    "object": "transfer_reversal",
                    "amount": amount,
                    "balance_transaction": None,
                    "created": created,
                    "currency": t.currency,
                    "destination_payment_refund": None,
                    "metadata": {},
                    "source_refund": None,
                    "transfer": t.id,
                }
                for rid, amount, created in t.reversals
            ],
        },
        "reversed": reversed_amount == t.amount,
        "source_transaction": t.source_transaction,
        "source_type": "card",
        "transfer_group": t.transfer_group,
    }


def _account(acct: str, at: int) -> Json:
    return {
        "id": acct,
        "object": "account",
        "business_type": "company",
        "charges_enabled": True,
        "country": "US",
        "created": at,
        "default_currency": "usd",
        "details_submitted": True,
        "email": f"owner@{acct[5:13].lower()}.example",
        "metadata": {},
        "payouts_enabled": True,
        "type": "express",
        "requirements": {
            "currently_due": [],
            "disabled_reason": None,
            "eventually_due": [],
            "past_due": [],
            "pending_verification": [],
        },
    }


def _transfer(
    story: Story,
    at: int,
    destination: str,
    amount: int,
    api: str,
    source: str | None,
    group: str | None,
) -> Transfer:
    transfer = Transfer(story.ids.new("tr"), destination, amount, "usd", at, source, group)
    story.transfers.append(transfer)
    story.emit(at, "transfer.created", _transfer_json(transfer), api)
    return transfer


def connect_month(story: Story, accounts: int, api: str) -> None:
    """Play the month of `accounts` connected accounts (one reversal, one failed payout)."""
    rng = story.rng
    ids = [story.ids.new("acct") for _ in range(accounts)]
    for index, acct in enumerate(ids):
        at = MONTH_START + index * 3600
        story.emit(at, "account.updated", _account(acct, at), api, account=acct)
        received = 0
        for _ in range(rng.randint(2, 4)):  # destination charges: the whole amount moves
            at += rng.randint(DAY // 2, 3 * DAY)
            amount = rng.randint(20, 400) * 100
            charge = _charge(story, at, amount, destination=acct)
            story.emit(at, "charge.succeeded", charge, api)
            _transfer(story, at + 1, acct, amount, api, str(charge["id"]), None)
            received += amount
        # A direct charge on the account, with the platform's application fee.
        at += rng.randint(DAY // 2, 2 * DAY)
        amount, fee_id = rng.randint(50, 300) * 100, story.ids.new("fee")
        fee_amount = amount // 10
        charge = _charge(story, at, amount, fee=fee_id, fee_amount=fee_amount)
        story.emit(at, "charge.succeeded", charge, api, account=acct)
        fee: Json = {
            "id": fee_id,
            "object": "application_fee",
            "account": acct,
            "amount": fee_amount,
            "amount_refunded": 0,
            "application": "ca_lattice_demo",
            "balance_transaction": story.ids.new("txn"),
            "charge": charge["id"],
            "created": at,
            "currency": "usd",
            "fee_source": {"charge": charge["id"], "type": "charge"},
            "livemode": False,
            "originating_transaction": None,
            "refunded": False,
            "refunds": {
                "object": "list",
                "data": [],
                "has_more": False,
                "url": f"/v1/application_fees/{fee_id}/refunds",
            },
        }
        story.emit(at + 1, "application_fee.created", fee, api)
        refunded = 0
        if index == 0:  # one partial fee refund
            refunded = fee_amount // 2
            fee = dict(
                fee,
                amount_refunded=refunded,
                refunds=dict(
                    fee["refunds"],
                    data=[
                        {
                            "id": story.ids.new("fr"),
                            "object": "fee_refund",
                            "amount": refunded,
                            "balance_transaction": None,
                            "created": at + DAY,
                            "currency": "usd",
                            "fee": fee_id,
                            "metadata": {},
                        }
                    ],
                ),
            )
            story.emit(
                at + DAY, "application_fee.refunded", fee, api, previous={"amount_refunded": 0}
            )
        story.fees.append((acct, "usd", fee_amount, refunded))
        _payout(
            story,
            acct,
            at + 2 * DAY,
            received // 2,
            api,
            failed=index == accounts - 1 and accounts > 1,
        )
    if ids:
        _separate_transfers(story, ids, api)


def _separate_transfers(story: Story, ids: list[str], api: str) -> None:
    """One order paid to the platform, split between two accounts; one transfer reversed."""
    at = MONTH_START + 12 * DAY
    group = f"ORDER_{story.ids.new('grp')[5:13]}"
    total = story.rng.randint(100, 500) * 100
    story.emit(at, "charge.succeeded", _charge(story, at, total, group=group), api)
    first = _transfer(story, at + 60, ids[0], total * 6 // 10, api, None, group)
    _transfer(story, at + 61, ids[-1], total * 3 // 10, api, None, group)
    # The customer returned part of the order: a partial reversal of the first transfer.
    first.reversals.append((story.ids.new("trr"), first.amount // 4, at + 5 * DAY))
    story.emit(
        at + 5 * DAY,
        "transfer.reversed",
        _transfer_json(first),
        api,
        previous={"amount_reversed": 0},
    )


def _payout(story: Story, acct: str, at: int, amount: int, api: str, *, failed: bool) -> None:
    pid = story.ids.new("po")
    payout: Json = {
        "id": pid,
        "object": "payout",
        "amount": amount,
        "application_fee": None,
        "application_fee_amount": None,
        "arrival_date": at + 2 * DAY,
        "automatic": True,
        "balance_transaction": story.ids.new("txn"),
        "created": at,
        "currency": "usd",
        "description": "STRIPE PAYOUT",
        "destination": story.ids.new("ba"),
        "failure_balance_transaction": None,
        "failure_code": None,
        "failure_message": None,
        "livemode": False,
        "metadata": {},
        "method": "standard",
        "original_payout": None,
        "reconciliation_status": "not_applicable",
        "reversed_by": None,
        "source_type": "card",
        "statement_descriptor": None,
        "status": "pending",
        "type": "bank_account",
    }
    story.emit(at, "payout.created", dict(payout), api, account=acct)
    story.emit(at + 2 * DAY, "payout.paid", dict(payout, status="paid"), api, account=acct)
    if failed:  # the bank returned it: the money is back on the account's balance
        story.emit(
            at + 3 * DAY,
            "payout.failed",
            dict(
                payout,
                status="failed",
                failure_code="account_closed",
                failure_message="The bank account has been closed.",
                failure_balance_transaction=story.ids.new("txn"),
            ),
            api,
            account=acct,
        )
    story.payouts.append((acct, "usd", amount, "failed" if failed else "paid"))
