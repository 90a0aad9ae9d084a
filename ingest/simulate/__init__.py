"""`lattice simulate`: a realistic billing month, signed and delivered like Stripe does.

`generator` is pure (same seed, same bytes) and also computes what the tables must say;
`deliver` signs and posts the events and produces the usage facts; `fake_stripe` serves
the full bodies of thin events; `report` reads the tables back and compares.
"""
