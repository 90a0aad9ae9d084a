"""Each coverage-guided target of `tests/fuzz/guided.py` (atheris) for a bounded run.

The targets run in a child process: libFuzzer owns the process it fuzzes and ends it
itself. A fixed seed keeps a run repeatable; `LATTICE_FUZZ_SEED` picks another and
`LATTICE_FUZZ_SCALE` multiplies the inputs (nightly runs). A failure shows libFuzzer's
report, the input that broke the invariant (saved in the test's temporary folder) and
the command that replays the search.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.fuzz.conftest import SCALE

if sys.platform == "linux" and platform.machine() == "x86_64":
    # Declared for this platform: a broken install must fail here, never pass as a skip.
    import atheris  # noqa: F401
else:
    pytest.skip("atheris has wheels for Linux x86-64 only", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("LATTICE_FUZZ_SEED", "20261126"))
RUNS = {"signature": 50_000, "envelope": 50_000, "reducers": 30_000}


@pytest.mark.parametrize("target", list(RUNS))
def test_guided_target_keeps_its_invariant(
    target: str, tmp_path: Path, cases: Counter[str]
) -> None:
    runs = RUNS[target] * SCALE
    command = [
        sys.executable,
        "-m",
        "tests.fuzz.guided",
        target,
        f"-runs={runs}",
        f"-seed={SEED}",
        f"-artifact_prefix={tmp_path}/",
    ]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False
    )
    output = result.stdout + result.stderr
    done = re.search(r"^Done (\d+) runs", output, re.MULTILINE)
    replay = " ".join(command[1:4] + command[5:6])
    failure = f"{target} broke its invariant (replay: python {replay}; inputs in {tmp_path})"
    assert result.returncode == 0, f"{failure}:\n{output[-4000:]}"
    assert done is not None, f"{failure}:\n{output[-4000:]}"
    assert int(done.group(1)) == runs
    cases[f"guided {target} (atheris, libFuzzer)"] += runs
