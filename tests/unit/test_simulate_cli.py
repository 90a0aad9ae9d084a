"""`lattice simulate` as a command, and the fake Stripe API it serves (no network)."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from deploy.cli import main
from ingest.simulate.fake_stripe import build_app
from ingest.simulate.generator import generate


def test_dry_run_prints_the_expected_totals(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", "--customers", "12", "--accounts", "2", "--seed", "4", "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0
    assert json.loads(out) == generate(12, 2, seed=4).expected.to_json()
    assert "12 customers" in err


def test_missing_secrets_are_one_clear_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LATTICE_WEBHOOK_SECRETS", raising=False)
    code = main(["simulate", "--customers", "2", "--url", "http://127.0.0.1:9"])
    _, err = capsys.readouterr()
    assert code == 1
    assert "LATTICE_WEBHOOK_SECRETS" in err.splitlines()[-1]


def test_a_taken_fake_stripe_port_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LATTICE_WEBHOOK_SECRETS", "platform=whsec_a,connect=whsec_b")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["simulate", "--customers", "2", "--fake-stripe-port", str(port)])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.splitlines()[-1] == (
        f"lattice: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


async def test_fake_stripe_serves_full_bodies_of_thin_events() -> None:
    simulation = generate(60, 0, seed=4)
    event_id, body = next(iter(simulation.hydrated.items()))
    transport = httpx.ASGITransport(app=build_app(simulation.hydrated))
    async with httpx.AsyncClient(transport=transport, base_url="http://stripe") as client:
        auth = {"Authorization": "Bearer sk_test_x"}
        found = await client.get(f"/v2/core/events/{event_id}", headers=auth)
        missing = await client.get("/v2/core/events/evt_missing", headers=auth)
        anonymous = await client.get(f"/v2/core/events/{event_id}")
    assert found.status_code == 200
    assert found.content == body
    assert found.json()["data"]["reason"]["error_types"][0]["sample_errors"]
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "resource_missing"
    assert anonymous.status_code == 401
