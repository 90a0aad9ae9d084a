"""Lattice's receiver against Supabase's stripe-sync-engine, same machine, same load.

    . .lattice/stack.env
    python -m tests.benchmarks.peer.compare --peer-seconds 15          # wrk (the default)
    python -m tests.benchmarks.peer.compare --load python               # our Python client
    python -m tests.benchmarks.peer.compare --lattice-workers 1,2,3 --pool 20000
    python -m tests.benchmarks e2e --peer                               # after the e2e run

The load, as in issue 11: wrk, 1 thread, `--peer-connections` (32) keep-alive connections,
closed loop, each request a validly signed ~4 KB `invoice.paid` for a new invoice. wrk
replays a pool of `--pool` (30,000, ~125 MB) requests signed in Python just before each
server's run (inside the 300 s signature tolerance), cycling through it: the peer at
~2k/s sees each invoice once; Lattice may see repeats, which cost an append-only
receiver the same as new ones. wrk is installed with apt-get when missing (as root).
`--load python` drives the servers with tests/benchmarks/_e2e_load.py instead (its
client shares the 2 cores with the server, so it understates the faster server).

The peer (node:http + `StripeSync.processWebhook`, upserting into its own PostgreSQL
schema) and the receiver (`lattice serve` with 1 worker, then 2 workers, appending to
Kafka with acks=all) run one after the other, each alone with the load. Server CPU is the
CPU time of the server's processes (workers included) over the load's duration; the
client's is wrk's own (its loading of the pool left out). `npm install` runs here on
first use (node_modules is git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from deploy.stack.topics import delete_topics, ensure_topics
from tests.benchmarks import _e2e_load as load
from tests.benchmarks.peer import wrk
from tests.benchmarks.peer.cpu import CpuMeter
from tests.faults.services import Service, receiver, wait_http_ready
from tests.support.ports import free_port
from tests.support.projectors import extra_database

PEER_DIR = Path(__file__).resolve().parent
SECRET = "whsec_" + uuid.uuid4().hex
PEER = "stripe-sync-engine (peer)"
TARGET_RATIO = 5.0


class PeerUnavailable(Exception):
    """The peer cannot be installed or started here; the message says why."""


def install() -> None:
    """`npm install` in this folder unless the package is already there."""
    if (PEER_DIR / "node_modules" / "@supabase" / "stripe-sync-engine").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise PeerUnavailable("npm is not on PATH: install Node.js 20 or newer")
    result = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund"],
        cwd=PEER_DIR,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if result.returncode != 0:
        raise PeerUnavailable(f"npm install failed: {result.stderr.strip()[-400:]}")


@dataclass(frozen=True)
class Row:
    """One server under one load: 2xx answers/s, latencies, failures, CPU."""

    server: str
    rate: float
    p50_ms: float
    p99_ms: float
    ok: int
    not_ok: int
    socket_errors: int
    server_cpu: float
    client_cpu: float


async def measure(
    server: str, port: int, path: str, pid: int, args: argparse.Namespace, workdir: Path
) -> Row:
    """Run the chosen load once against the server at `port`."""
    if args.load == "python":
        return await _measure_python(server, port, path, pid, args)
    pool = wrk.write_pool(workdir, path, SECRET, args.pool)
    script = wrk.write_script(workdir, pool)
    with CpuMeter(pid) as meter:
        proc = wrk.run(
            args.wrk,
            f"http://127.0.0.1:{port}{path}",
            script,
            args.peer_seconds,
            args.peer_connections,
        )
        got = await asyncio.to_thread(wrk.result, proc)
    pool.bodies.unlink()
    return Row(
        server,
        rate=got.ok / got.duration_s,
        p50_ms=got.p50_us / 1000,
        p99_ms=got.p99_us / 1000,
        ok=got.ok,
        not_ok=got.status_errors,
        socket_errors=got.socket_errors,
        server_cpu=meter.over(got.duration_s),
        client_cpu=got.cpu_percent,
    )


async def _measure_python(
    server: str, port: int, path: str, pid: int, args: argparse.Namespace
) -> Row:
    plan = load.Plan(
        port,
        SECRET,
        None,
        args.peer_seconds,
        args.peer_connections,
        path=path,
        bodies="invoice_paid",
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with CpuMeter(pid) as meter:
        began = time.perf_counter()
        worker, pipe = load.start(plan)
        sent = await asyncio.to_thread(load.finish, worker, pipe)
        elapsed = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    ok = sorted(x.answer_s for x in sent if x.status == 200)

    def pick(q: float) -> float:
        return ok[min(len(ok) - 1, int(q * len(ok)))] * 1000 if ok else float("nan")

    return Row(
        server,
        rate=len(ok) / min(elapsed, args.peer_seconds),
        p50_ms=pick(0.5),
        p99_ms=pick(0.99),
        ok=len(ok),
        not_ok=len(sent) - len(ok),
        socket_errors=0,
        server_cpu=meter.percent,
        client_cpu=100 * client_s / elapsed,  # start-up and body building included
    )


async def run(args: argparse.Namespace, workdir: Path) -> list[Row]:
    bootstrap = os.environ.get("LATTICE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    admin_url = os.environ["LATTICE_DATABASE_URL"]
    name = f"peer{uuid.uuid4().hex[:8]}"
    rows: list[Row] = []
    async with extra_database(admin_url, name) as url:
        port = free_port()
        node = shutil.which("node") or "node"
        env = {"PEER_DATABASE_URL": url, "PEER_PORT": str(port), "PEER_WEBHOOK_SECRET": SECRET}
        peer = Service("peer", [node, str(PEER_DIR / "server.cjs")], env, workdir / "peer.log")
        peer.start()
        try:
            await wait_http_ready(f"http://127.0.0.1:{port}", peer)
            if "Error running migrations" in peer.output():
                raise PeerUnavailable(f"the peer's migrations failed:\n{peer.output()[-1500:]}")
            assert peer.proc is not None
            rows.append(await measure(PEER, port, "/webhooks", peer.proc.pid, args, workdir))
            conn = await asyncpg.connect(url)
            try:
                stored = await conn.fetchval("SELECT count(*) FROM stripe.invoices")
            finally:
                await conn.close()
            print(f"peer: {stored} invoices upserted into stripe.invoices", flush=True)
        finally:
            peer.stop()
    topic = f"{name}.stripe.events"
    await ensure_topics(bootstrap, [topic], partitions=6)
    try:
        if args.warm_broker > 0:
            print(f"warming the broker up: {args.warm_broker:g} s of deliveries, not measured")
            warm = argparse.Namespace(**{**vars(args), "peer_seconds": args.warm_broker})
            await _lattice(bootstrap, topic, max(args.lattice_workers), warm, workdir)
        for workers in args.lattice_workers:
            rows.append(await _lattice(bootstrap, topic, workers, args, workdir))
    finally:
        await delete_topics(bootstrap, [topic])
    return rows


async def _lattice(
    bootstrap: str, topic: str, workers: int, args: argparse.Namespace, workdir: Path
) -> Row:
    """`lattice serve --workers N` alone with the load."""
    port = free_port()
    env = {
        "LATTICE_KAFKA_BOOTSTRAP": bootstrap,
        "LATTICE_TOPIC": topic,
        "LATTICE_WEBHOOK_SECRETS": f"platform={SECRET}",
    }
    rx: Service = receiver(env, workdir / f"receiver-{workers}.log", port)
    rx.argv += ["--workers", str(workers)]
    rx.start()
    try:
        await wait_http_ready(f"http://127.0.0.1:{port}", rx)
        assert rx.proc is not None
        label = f"Lattice receiver ({workers} worker{'s' if workers > 1 else ''})"
        return await measure(label, port, "/webhooks/platform", rx.proc.pid, args, workdir)
    finally:
        rx.stop()


def report(rows: list[Row], args: argparse.Namespace) -> None:
    if args.load == "wrk":
        how = (
            f"wrk, 1 thread, {args.peer_connections} connections, {args.peer_seconds:.0f} s each;"
            f" a pool of {args.pool:,} distinct signed events (each a new invoice), replayed"
            " in a cycle"
        )
    else:
        how = (
            f"Python client (tests/benchmarks/_e2e_load.py), closed loop, "
            f"{args.peer_connections} connections, {args.peer_seconds:.0f} s each; every event new"
        )
    print(f"\n### Peer comparison: ~4 KB invoice.paid, {how}\n")
    print(
        "| server | events/s | p50 (ms) | p99 (ms) | 2xx | not 2xx | socket errors "
        "| server CPU (% of a core) | client CPU |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r.server} | {r.rate:,.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.ok:,} "
            f"| {r.not_ok:,} | {r.socket_errors:,} | {r.server_cpu:.0f} | {r.client_cpu:.0f} |"
        )
    peer = next((r for r in rows if r.server == PEER), None)
    ours = max((r for r in rows if r.server != PEER), key=lambda r: r.rate, default=None)
    if peer and ours and peer.rate:
        ratio = ours.rate / peer.rate
        # Both sides answered every request 2xx: a fast refusal shortens p99 (wrk counts
        # every answer) and would make either side look better than it is.
        clean = all(r.not_ok == 0 and r.socket_errors == 0 for r in (peer, ours))
        met = ratio >= TARGET_RATIO and ours.p99_ms < peer.p99_ms and clean
        print(
            f"\n{ours.server} / peer: {ratio:.2f}x the events/s, p99 {ours.p99_ms:.1f} ms vs "
            f"{peer.p99_ms:.1f} ms (target: >= {TARGET_RATIO:.0f}x at a lower p99, every answer "
            f"2xx: {'met' if met else 'NOT met'}{'' if clean else '; NOT every answer 2xx'})"
        )


def _counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("worker counts: e.g. 1,2 (each at least 1)")
    return counts


def main(argv: list[str]) -> int:
    """Install the peer if needed, run both, print the table; 1 with the reason if the peer
    cannot run here."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.peer.compare", allow_abbrev=False
    )
    parser.add_argument("--peer-seconds", type=float, default=15.0)
    parser.add_argument("--peer-connections", type=int, default=32)
    parser.add_argument("--load", choices=("wrk", "python"), default="wrk")
    parser.add_argument("--pool", type=int, default=30_000, help="signed requests wrk replays")
    parser.add_argument(
        "--lattice-workers", type=_counts, default=[1, 2], help="receiver runs, e.g. 1,2"
    )
    parser.add_argument(
        "--warm-broker",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a receiver run before Lattice's, not measured (0: none): a broker just started "
        "spends more CPU per record for minutes (see `python -m tests.benchmarks receiver`)",
    )
    args, _ = parser.parse_known_args(argv)
    try:
        install()
        if args.load == "wrk":
            args.wrk = wrk.ensure_wrk()
    except (PeerUnavailable, wrk.WrkUnavailable) as exc:
        print(f"peer comparison skipped: {exc}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="lattice-peer-") as folder:
        try:
            rows = asyncio.run(run(args, Path(folder)))
        except PeerUnavailable as exc:
            print(f"peer comparison failed: {exc}", file=sys.stderr)
            return 1
    report(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
