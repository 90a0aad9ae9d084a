"""Both projections have the runtime's interface and are found by the catalog."""

from __future__ import annotations

from deploy.settings import Settings
from projectors import catalog
from projectors.base import Projection
from projectors.invoices import projection as invoices
from projectors.invoices.reducer import Change as InvoiceChange
from projectors.migrate import migrations_in
from projectors.subscriptions import projection as subscriptions
from projectors.subscriptions.reducer import Change as SubscriptionChange


def test_they_satisfy_the_projection_protocol_and_read_the_event_log() -> None:
    subs: Projection[SubscriptionChange] = subscriptions
    invs: Projection[InvoiceChange] = invoices
    settings = Settings(topic="billing.events")

    assert list(subs.topics(settings)) == ["billing.events"]
    assert list(invs.topics(settings)) == ["billing.events"]


def test_the_catalog_finds_both_by_name() -> None:
    found = catalog.select(["subscriptions", "invoices"])

    assert found == [subscriptions, invoices]


def test_their_migrations_are_numbered_and_they_have_views() -> None:
    for projection in (subscriptions, invoices):
        versions = [m.version for m in migrations_in(projection.sql_dir)]
        assert versions == list(range(1, len(versions) + 1))
        assert (projection.sql_dir / "views.sql").exists()
