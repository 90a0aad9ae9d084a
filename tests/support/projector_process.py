"""A projector process for the crash and failover tests: `events` plus the audit projection,
run by the same code as `lattice project` (settings from LATTICE_* variables)."""

from __future__ import annotations

import asyncio

from deploy.logs import configure_logging
from deploy.settings import load_settings
from projectors.events import projection as events
from projectors.service import run_projections, tune_gc
from tests.support.audit_projection import AuditProjection


def main() -> None:
    """Run until SIGTERM (or SIGKILL, which is the point of the crash test)."""
    configure_logging(json=True)
    tune_gc()
    asyncio.run(run_projections(load_settings(), [events, AuditProjection()]))


if __name__ == "__main__":
    main()
