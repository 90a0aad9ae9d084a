"""The thin envelope in `schemas/`: what a destination delivers and what the API answers."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from pydantic import ValidationError

from schemas.envelope import ThinEvent, validate_event
from tests.support.thin_events import meter_error_report


def test_thin_and_full_meter_error_reports_validate() -> None:
    thin, full = meter_error_report(context="acct_1Nv0FGQ9RKHgCVdK")
    delivered = validate_event(orjson.dumps(thin))
    fetched = validate_event(orjson.dumps(full))
    assert isinstance(delivered, ThinEvent)
    assert isinstance(fetched, ThinEvent)
    assert delivered.data is None
    assert delivered.reason is not None
    assert delivered.reason.type == "request"
    assert delivered.reason.request is not None
    assert delivered.reason.request.id == "req_v2Xz3TMiT0hD"
    assert delivered.context == "acct_1Nv0FGQ9RKHgCVdK"
    assert delivered.created == datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    assert fetched.data is not None
    assert fetched.data["reason"]["error_types"][0]["sample_errors"][0]["request"] == {
        "identifier": "usage-0001"
    }


def test_a_reason_needs_its_type() -> None:
    thin, _ = meter_error_report()
    with pytest.raises(ValidationError, match=r"reason\.type"):
        ThinEvent.model_validate({**thin, "reason": {"request": None}})
