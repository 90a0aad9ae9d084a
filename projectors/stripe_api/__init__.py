"""Stripe's API, for the two things webhooks alone cannot give: the full body of thin
events (`hydrate.py`) and the events Stripe sent while the receiver was unreachable
(`backfill.py`). Both go through one resilient client (`client.py`).

Not a projection: it has no `projection` attribute, so `projectors.catalog` skips it.
"""
