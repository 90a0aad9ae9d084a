"""End to end: signed deliveries at a steady rate through the receiver into every projector.

    python -m tests.benchmarks e2e                          # 500 events/s for 60 s
    python -m tests.benchmarks e2e --rate 300 --seconds 30
    python -m tests.benchmarks e2e --soak                   # 10 min, RSS every 10 s
    python -m tests.benchmarks e2e --peer                   # + Supabase's stripe-sync-engine
    python -m tests.benchmarks e2e --peer --load python     # ... driven by our client, not wrk

The receiver (`lattice serve`, one worker) and `lattice project` (all projections, one process)
run as in production against the local stack, on topics, a database and consumer groups
of their own. An open-loop client in its own process sends each event at its scheduled
time. Latency "POST -> row visible" runs from that scheduled time to the first poll of
`lattice.offsets` (every 10 ms) that shows a projector committed past the event's offset
(rows and positions share one transaction, so that is when its rows became visible).
Also reported: the receiver's answer time, and CPU (% of one core) and RSS of each process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from deploy.stack.topics import delete_topics, ensure_topics
from projectors.catalog import discover
from tests.benchmarks import _e2e_load as load
from tests.benchmarks._e2e_watch import Commits, Sampler, watch_commits
from tests.benchmarks.peer import compare
from tests.faults.services import Service, projector, receiver, wait_http_ready
from tests.support.ports import free_port
from tests.support.projectors import extra_database, log_ends

SECRET = "whsec_" + uuid.uuid4().hex
TARGET_P99_MS = 250.0


def ms(values: list[float], q: float) -> float:
    """The q-quantile of `values` (seconds) in milliseconds."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def row(name: str, values: list[float]) -> str:
    return (
        f"| {name} | {len(values)} | {ms(values, 0.5):.0f} | {ms(values, 0.99):.0f} "
        f"| {max(values, default=float('nan')) * 1000:.0f} |"
    )


async def caught_up(url: str, bootstrap: str, topic: str, names: set[str], timeout: float) -> float:
    """Wait until every projector's position is at the log end; seconds it took."""
    began = time.monotonic()
    ends = {p: e for p, e in (await log_ends(bootstrap, topic)).items() if e}
    conn = await asyncpg.connect(url)
    try:
        while time.monotonic() - began < timeout:
            rows = await conn.fetch(
                "SELECT projector, partition, next_offset FROM lattice.offsets WHERE topic = $1",
                topic,
            )
            stored = {(r["projector"], r["partition"]): r["next_offset"] for r in rows}
            if all(stored.get((n, p)) == e for n in names for p, e in ends.items()):
                return time.monotonic() - began
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    raise RuntimeError(f"projectors did not reach the log end {ends} within {timeout} s")


async def run(args: argparse.Namespace, workdir: Path) -> int:
    bootstrap = os.environ.get("LATTICE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    admin_url = os.environ["LATTICE_DATABASE_URL"]
    name = f"e2e{uuid.uuid4().hex[:8]}"
    topic, usage = f"{name}.stripe.events", f"{name}.usage.reported"
    await ensure_topics(bootstrap, [topic, f"{topic}.dlq", usage], partitions=args.partitions)
    services: list[Service] = []
    try:
        async with extra_database(admin_url, name) as url:
            env = {
                "LATTICE_KAFKA_BOOTSTRAP": bootstrap,
                "LATTICE_DATABASE_URL": url,
                "LATTICE_TOPIC": topic,
                "LATTICE_USAGE_TOPIC": usage,
                "LATTICE_GROUP_PREFIX": name,
                "LATTICE_WEBHOOK_SECRETS": f"platform={SECRET}",
            }
            port = free_port()
            rx = receiver(env, workdir / "receiver.log", port)
            proj = projector(env, workdir / "projector.log")
            services += [rx, proj]
            rx.start()
            proj.start()
            await wait_http_ready(f"http://127.0.0.1:{port}", rx)
            names = await _warm_up(port, url, bootstrap, topic)
            seconds = args.soak_seconds if args.soak else args.seconds
            rate = args.soak_rate if args.soak else args.rate
            plan = load.Plan(port, SECRET, rate, seconds, args.connections)
            commits, stop = Commits(), asyncio.Event()
            watcher = asyncio.create_task(watch_commits(url, topic, commits, stop))
            interval = 10.0 if args.soak else 1.0
            with Sampler({"receiver": rx.proc.pid, "projectors": proj.proc.pid}, interval) as s:  # type: ignore[union-attr]
                worker, pipe = load.start(plan)
                sent = await asyncio.to_thread(load.finish, worker, pipe)
                drain = await caught_up(url, bootstrap, topic, names, timeout=300)
            stop.set()
            await watcher
            where = await _positions(url, [x.event_id for x in sent if x.status == 200])
            dead = await _dead_letters(url)
            _report(args, plan, sent, where, commits, names, s, drain, dead)
    finally:
        for service in services:
            service.stop()
        await delete_topics(bootstrap, [topic, f"{topic}.dlq", usage])
    return 0


async def _warm_up(port: int, url: str, bootstrap: str, topic: str) -> set[str]:
    """A few deliveries, until every projector has committed them: the projector names."""
    plan = load.Plan(port, SECRET, rate=50, seconds=1, connections=4)
    sent = await load.drive(plan)
    assert all(x.status == 200 for x in sent), "warm-up deliveries were refused"
    names = set(discover())
    await caught_up(url, bootstrap, topic, names, timeout=120)
    return names


async def _dead_letters(url: str) -> int:
    """Records a projector gave up on: they moved its position without making a row."""
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM lattice.dead_letters"))
    finally:
        await conn.close()


async def _positions(url: str, ids: list[str]) -> dict[str, tuple[int, int]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT id, partition, kafka_offset FROM projections.events WHERE id = ANY($1)", ids
        )
    finally:
        await conn.close()
    return {r["id"]: (r["partition"], r["kafka_offset"]) for r in rows}


def _report(
    args: argparse.Namespace,
    plan: load.Plan,
    sent: list[load.Sent],
    where: dict[str, tuple[int, int]],
    commits: Commits,
    names: set[str],
    sampler: Sampler,
    drain: float,
    dead: int,
) -> None:
    accepted = [x for x in sent if x.status == 200]
    visible: dict[str, list[float]] = {n: [] for n in sorted(names)}
    everywhere: list[float] = []
    for item in accepted:
        if item.event_id not in where:
            continue  # not in `events`: counted below as never visible everywhere
        partition, offset = where[item.event_id]
        times = [commits.visible_at(n, partition, offset) for n in sorted(names)]
        for n, at in zip(sorted(names), times, strict=True):
            if at is not None:
                visible[n].append(at - item.scheduled_at)
        if all(at is not None for at in times):
            everywhere.append(max(t for t in times if t is not None) - item.scheduled_at)
    print(
        f"\n### End to end: {plan.rate:.0f} events/s for {plan.seconds:.0f} s "
        f"({plan.connections} connections, {len(sent)} deliveries, "
        f"{len(sent) - len(accepted)} not 200; drained {drain:.1f} s after the last)"
    )
    print("\n| latency (ms) | events | p50 | p99 | max |\n| --- | --- | --- | --- | --- |")
    print(row("POST -> 200 (receiver)", [x.answer_s for x in accepted]))
    for n, values in visible.items():
        print(row(f"POST -> row visible: {n}", values))
    print(row("POST -> visible in every projection", everywhere))
    p99 = ms(everywhere, 0.99)
    unseen = len(accepted) - len(everywhere)
    refused = len(sent) - len(accepted)
    sound = unseen == 0 and refused == 0 and dead == 0
    print(
        f"\naccepted but never seen in every projection: {unseen}; not 200: {refused}; "
        f"dead letters: {dead}"
    )
    print(
        f"p99 POST -> visible everywhere: {p99:.0f} ms (target < {TARGET_P99_MS:.0f} ms, every "
        f"delivery accepted and visible: {'met' if p99 < TARGET_P99_MS and sound else 'NOT met'})"
    )
    print("\n| process | CPU mean (% of a core) | CPU max | RSS start (MiB) | RSS max | RSS end |")
    print("| --- | --- | --- | --- | --- | --- |")
    for who, usage in sampler.usage.items():
        rss = [r for _, r in usage.rss] or [float("nan")]
        cpu = usage.cpu or [float("nan")]
        print(
            f"| {who} | {statistics.fmean(cpu):.0f} | {max(cpu):.0f} | {rss[0]:.0f} "
            f"| {max(rss):.0f} | {rss[-1]:.0f} |"
        )
    if args.soak:
        print("\n| t (s) | " + " | ".join(f"{w} RSS (MiB)" for w in sampler.usage) + " |")
        print("| --- |" + " --- |" * len(sampler.usage))
        series = list(zip(*(u.rss for u in sampler.usage.values()), strict=False))
        for samples in series:
            print(f"| {samples[0][0]:.0f} | " + " | ".join(f"{r:.0f}" for _, r in samples) + " |")
        for who, usage in sampler.usage.items():
            print(soak_verdict(who, [r for _, r in usage.rss]))


def soak_verdict(who: str, rss: list[float]) -> str:
    """Growth beyond noise: the last third's mean RSS above the first third's by more than
    10 % and 10 MiB (a process that keeps what it handled grows through the whole run)."""
    third = len(rss) // 3
    if third < 2:
        return f"{who}: too few RSS samples ({len(rss)}) to judge growth"
    first, last = statistics.fmean(rss[:third]), statistics.fmean(rss[-third:])
    grown = last - first
    verdict = "GROWING" if grown > max(0.1 * first, 10.0) else "flat (within noise)"
    return f"{who}: RSS {first:.0f} MiB (first third) -> {last:.0f} MiB (last third): {verdict}"


def main(argv: list[str]) -> int:
    """Parse options (others' options are ignored: the dispatcher passes them to all)."""
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks e2e", allow_abbrev=False)
    parser.add_argument("--rate", type=float, default=500.0, help="events/s (steady run)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--soak", action="store_true", help="10 minutes, RSS every 10 s")
    parser.add_argument("--soak-seconds", type=float, default=600.0)
    parser.add_argument("--soak-rate", type=float, default=200.0)
    parser.add_argument("--peer", action="store_true", help="then the peer comparison")
    args, _ = parser.parse_known_args(argv)

    with tempfile.TemporaryDirectory(prefix="lattice-e2e-") as folder:
        status = asyncio.run(run(args, Path(folder)))
    if args.peer:
        status = max(status, compare.main(argv))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
