"""A receiver worker makes the cyclic garbage collector cheap at start (`ingest.app.tune_gc`):
what start-up built is frozen, and young collections come less often."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = (
    "import gc\n"
    "from ingest.app import app_from_env\n"
    "before = gc.get_freeze_count()\n"
    "app_from_env()\n"
    "print(before, gc.get_freeze_count(), gc.get_threshold()[0])\n"
)


def test_a_receiver_worker_freezes_what_start_up_built() -> None:
    # In a process of its own: freezing the test process's objects would change its GC.
    env = {**os.environ, "LATTICE_WEBHOOK_SECRETS": "platform=whsec_gc_probe"}
    answer = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert answer.returncode == 0, answer.stderr[-2000:]
    before, frozen, young = (int(n) for n in answer.stdout.split()[-3:])
    assert before == 0
    assert frozen > 10_000  # the modules and the app: tens of thousands of objects
    assert young == 10_000
