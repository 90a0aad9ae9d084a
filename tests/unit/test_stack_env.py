"""The env files a shell sources (stack.env, the demo's env) say exactly what was meant."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from deploy.stack import write_env


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
