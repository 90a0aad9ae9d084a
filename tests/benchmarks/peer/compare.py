"""Lattice's receiver against Supabase's stripe-sync-engine, same machine, same load.

    python -m tests.benchmarks e2e --peer            # after the end-to-end run
    python -m tests.benchmarks.peer.compare --peer-seconds 20

Closed loop, 32 keep-alive connections, each request a signed ~4 KB `invoice.paid` for a
new invoice. The peer (node:http + `StripeSync.processWebhook`, upserting into its own
PostgreSQL schema) and the receiver (`lattice serve`, one worker, appending to Kafka with
acks=all) run one after the other, each alone with the load, each as one process.
`npm install` runs here on first use (node_modules is git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from deploy.stack.topics import delete_topics, ensure_topics
from tests.benchmarks import _e2e_load as load
from tests.benchmarks._e2e_watch import Sampler
from tests.faults.services import Service, receiver, wait_http_ready
from tests.support.ports import free_port
from tests.support.projectors import extra_database

PEER_DIR = Path(__file__).resolve().parent
SECRET = "whsec_" + uuid.uuid4().hex


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


async def measure(
    port: int, path: str, pids: dict[str, int], seconds: float, conns: int
) -> dict[str, float]:
    """Run the closed-loop load once; events/s, latencies, CPU of the server."""
    plan = load.Plan(port, SECRET, None, seconds, conns, path=path, bodies="invoice_paid")
    with Sampler(pids, interval=1.0) as sampler:
        began = time.perf_counter()
        worker, pipe = load.start(plan)
        sent = await asyncio.to_thread(load.finish, worker, pipe)
        elapsed = time.perf_counter() - began
    ok = sorted(x.answer_s for x in sent if x.status == 200)
    cpu = next(iter(sampler.usage.values())).cpu or [0.0]

    def pick(q: float) -> float:
        return ok[min(len(ok) - 1, int(q * len(ok)))] * 1000 if ok else float("nan")

    return {
        "rate": len(ok) / min(elapsed, seconds),
        "p50": pick(0.5),
        "p99": pick(0.99),
        "errors": float(len(sent) - len(ok)),
        "cpu": sum(cpu) / len(cpu),
    }


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, dict[str, float]]:
    bootstrap = os.environ.get("LATTICE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    admin_url = os.environ["LATTICE_DATABASE_URL"]
    name = f"peer{uuid.uuid4().hex[:8]}"
    results: dict[str, dict[str, float]] = {}
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
            results["stripe-sync-engine (peer)"] = await measure(
                port, "/webhooks", {"peer": peer.proc.pid}, args.peer_seconds, args.peer_connections
            )
            conn = await asyncpg.connect(url)
            try:
                stored = await conn.fetchval("SELECT count(*) FROM stripe.invoices")
            finally:
                await conn.close()
            print(f"peer: {stored} invoices upserted into stripe.invoices")
        finally:
            peer.stop()
    topic = f"{name}.stripe.events"
    await ensure_topics(bootstrap, [topic], partitions=6)
    try:
        port = free_port()
        env = {
            "LATTICE_KAFKA_BOOTSTRAP": bootstrap,
            "LATTICE_TOPIC": topic,
            "LATTICE_WEBHOOK_SECRETS": f"platform={SECRET}",
        }
        rx: Service = receiver(env, workdir / "receiver.log", port)
        rx.start()
        try:
            await wait_http_ready(f"http://127.0.0.1:{port}", rx)
            assert rx.proc is not None
            results["Lattice receiver"] = await measure(
                port,
                "/webhooks/platform",
                {"receiver": rx.proc.pid},
                args.peer_seconds,
                args.peer_connections,
            )
        finally:
            rx.stop()
    finally:
        await delete_topics(bootstrap, [topic])
    return results


def report(results: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    print(
        f"\n### Peer comparison: closed loop, {args.peer_connections} connections, "
        f"{args.peer_seconds:.0f} s each, ~4 KB invoice.paid (each a new invoice)\n"
    )
    print("| server | events/s | p50 (ms) | p99 (ms) | not 200 | CPU (% of a core) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(
            f"| {name} | {r['rate']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} "
            f"| {r['errors']:.0f} | {r['cpu']:.0f} |"
        )
    peer, ours = results.get("stripe-sync-engine (peer)"), results.get("Lattice receiver")
    if peer and ours and peer["rate"]:
        print(
            f"\nLattice / peer: {ours['rate'] / peer['rate']:.2f}x the events/s, "
            f"p99 {ours['p99']:.1f} ms vs {peer['p99']:.1f} ms (target: >= 5x at a lower p99)"
        )


def main(argv: list[str]) -> int:
    """Install the peer if needed, run both, print the table; 1 with the reason if the peer
    cannot run here."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.peer.compare", allow_abbrev=False
    )
    parser.add_argument("--peer-seconds", type=float, default=15.0)
    parser.add_argument("--peer-connections", type=int, default=32)
    args, _ = parser.parse_known_args(argv)
    try:
        install()
    except PeerUnavailable as exc:
        print(f"peer comparison skipped: {exc}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="lattice-peer-") as folder:
        try:
            results = asyncio.run(run(args, Path(folder)))
        except PeerUnavailable as exc:
            print(f"peer comparison failed: {exc}", file=sys.stderr)
            return 1
    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
