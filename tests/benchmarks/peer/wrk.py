"""The peer comparison's load generator: wrk (1 thread, N keep-alive connections) replaying
a pool of pre-signed deliveries.

wrk's LuaJIT cannot compute an HMAC fast enough, so the signed requests are built here in
Python (each a ~4 KB `invoice.paid` for a new invoice) into a file; a Lua script loads them
in `init`, hands out one per `request()` (cycling through the pool when it runs out) and
prints its counts and latency percentiles in `done` as `lattice-wrk NAME VALUE` lines.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ingest.signature import sign_header
from tests.benchmarks._e2e_load import invoice_template, new_invoice_paid

MARK = "lattice-wrk"
INSTALL_HINT = (
    "install it with `sudo apt-get install wrk` (Debian/Ubuntu) or from github.com/wg/wrk"
)

LUA = """-- Written by tests/benchmarks/peer/wrk.py: replays pre-signed deliveries, one per request.
local pool, count, at = {}, 0, 0

function init(args)
  local file = assert(io.open(%(bodies)s, "rb"))
  local data = file:read("*a")
  file:close()
  local pos = 1
  for line in io.lines(%(sizes)s) do
    local size = tonumber(line)
    count = count + 1
    pool[count] = data:sub(pos, pos + size - 1)
    pos = pos + size
  end
  data = nil
  collectgarbage()
  -- os.clock() is the process's CPU time: what loading cost, to subtract from the total.
  io.write(string.format("%(mark)s init_cpu_s %%.6f\\n", os.clock()))
end

function request()
  at = at %% count + 1
  return pool[at]
end

function done(summary, latency, requests)
  local e = summary.errors
  local lines = {
    {"requests", summary.requests}, {"duration_us", summary.duration},
    {"status_errors", e.status}, {"connect_errors", e.connect}, {"read_errors", e.read},
    {"write_errors", e.write}, {"timeouts", e.timeout},
    {"p50_us", latency:percentile(50)}, {"p99_us", latency:percentile(99)},
    {"max_us", latency.max},
  }
  for _, pair in ipairs(lines) do
    io.write(string.format("%(mark)s %%s %%d\\n", pair[1], pair[2]))
  end
  io.write(string.format("%(mark)s cpu_s %%.6f\\n", os.clock()))
end
"""


class WrkUnavailable(Exception):
    """wrk is not installed and cannot be installed here; the message says how."""


@dataclass(frozen=True)
class Pool:
    """Signed requests on disk: `bodies` (concatenated raw HTTP requests), `sizes` (one
    length a line), how many, and their total size."""

    bodies: Path
    sizes: Path
    count: int
    total_bytes: int


@dataclass(frozen=True)
class WrkResult:
    """What wrk's `done` hook reported (latencies in µs) and its CPU while loading."""

    requests: int
    duration_s: float
    status_errors: int
    socket_errors: int
    p50_us: int
    p99_us: int
    max_us: int
    cpu_percent: float

    @property
    def ok(self) -> int:
        """Answers in 2xx/3xx (wrk counts every other status in errors.status)."""
        return self.requests - self.status_errors


def ensure_wrk() -> str:
    """The path of wrk; installs the Debian package when missing and running as root."""
    found = shutil.which("wrk")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise WrkUnavailable(f"wrk is not on PATH: {INSTALL_HINT}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-q", "--no-install-recommends", "wrk"]
    result = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:  # the package lists may be missing or stale: refresh once
        subprocess.run([apt, "update", "-q"], env=env, capture_output=True, check=False)
        result = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    found = shutil.which("wrk")
    if result.returncode != 0 or found is None:
        raise WrkUnavailable(
            f"`apt-get install wrk` failed ({result.stderr.strip()[-300:]}): {INSTALL_HINT}"
        )
    return found


def write_pool(folder: Path, path: str, secret: str, count: int) -> Pool:
    """`count` signed deliveries to `path`, each a new invoice, signed now (the server
    accepts them for its signature tolerance, 300 s by default)."""
    template, prefix, now = invoice_template(), secrets.token_hex(4), int(time.time())
    bodies, sizes = folder / "requests.bin", folder / "requests.sizes"
    total = 0
    with bodies.open("wb") as out, sizes.open("w") as lengths:
        for n in range(count):
            body = new_invoice_paid(template, n, prefix)
            request = (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: application/json; charset=utf-8\r\nUser-Agent: Stripe/1.0\r\n"
                f"Stripe-Signature: {sign_header(body, secret, now)}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            out.write(request)
            lengths.write(f"{len(request)}\n")
            total += len(request)
    return Pool(bodies, sizes, count, total)


def write_script(folder: Path, pool: Pool) -> Path:
    """The Lua script that replays `pool` (paths quoted as JSON strings, valid in Lua)."""
    script = folder / "replay.lua"
    fields = {"bodies": json.dumps(str(pool.bodies)), "sizes": json.dumps(str(pool.sizes))}
    script.write_text(LUA % {**fields, "mark": MARK})
    return script


def run(
    wrk: str, url: str, script: Path, seconds: float, connections: int
) -> subprocess.Popen[str]:
    """Start wrk (1 thread); `result` waits for it and reads what it reported."""
    argv = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
    return subprocess.Popen(
        [*argv, "-s", str(script), url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def result(proc: subprocess.Popen[str]) -> WrkResult:
    """Wait for wrk and parse its `lattice-wrk` lines; raises with its output if it failed."""
    output, _ = proc.communicate(timeout=600)
    values: dict[str, float] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == MARK:
            values[parts[1]] = float(parts[2])
    if proc.returncode != 0 or "p99_us" not in values:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}):\n{output[-2000:]}")
    duration = values["duration_us"] / 1e6
    sockets = ("connect_errors", "read_errors", "write_errors", "timeouts")
    return WrkResult(
        requests=int(values["requests"]),
        duration_s=duration,
        status_errors=int(values["status_errors"]),
        socket_errors=int(sum(values[k] for k in sockets)),
        p50_us=int(values["p50_us"]),
        p99_us=int(values["p99_us"]),
        max_us=int(values["max_us"]),
        cpu_percent=100 * (values["cpu_s"] - values["init_cpu_s"]) / duration,
    )
