"""The env files a shell sources (stack.env, the demo's env) say exactly what was meant."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from deploy.settings import load_settings
from deploy.stack import _kafka_is_external, write_env


def test_a_sourced_env_file_gives_back_every_value_and_only_its_owner_reads_it(
    tmp_path: Path,
) -> None:
    values = {
        "LATTICE_DATABASE_URL": "postgresql://me:p%40ss@db:5432/lattice"
        "?sslmode=verify-full&sslrootcert=/etc/ssl/ca.pem",
        "LATTICE_WEBHOOK_SECRETS": "platform=whsec_a b,connect=whsec_'$x`",
    }
    env = tmp_path / "stack.env"
    write_env(env, values)

    script = f'. "{env}"; printf "%s\\0" "$LATTICE_DATABASE_URL" "$LATTICE_WEBHOOK_SECRETS"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, check=True).stdout
    assert out.decode().split("\0")[:2] == list(values.values())
    assert stat.S_IMODE(env.stat().st_mode) == 0o600


def test_localhost_names_the_local_broker_and_any_other_host_an_external_one() -> None:
    """`localhost:9092` is what people type: taken for another broker, `make stack` would
    start none and wait 30 s for one that is not there."""
    external = {
        bootstrap: _kafka_is_external(load_settings({"kafka_bootstrap": bootstrap}))
        for bootstrap in ("127.0.0.1:9092", "localhost:9092", "kafka:9092", "10.0.0.5:9092")
    }
    assert external == {
        "127.0.0.1:9092": False,
        "localhost:9092": False,
        "kafka:9092": True,
        "10.0.0.5:9092": True,
    }
