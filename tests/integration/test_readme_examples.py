"""The README's Python examples, copied out of the README and run as a reader would run
them: in a shell pointed at the stack (here: at this test's topics), against the broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import orjson
from aiokafka import AIOKafkaProducer

from deploy import kafka_options
from ingest.record import HEADER_EVENT_TYPE, build_received
from schemas.usage import parse_usage_fact
from tests.conftest import Stack, Topics
from tests.fixtures.stripe_objects import event, invoice
from tests.support.kafka import read_all
from tests.support.readme import readme_section

# How long the consumer example (it reads until stopped) may take to print its record.
CONSUMER_SECONDS = 60


def indented_block_after(text: str, lead: str) -> str:
    """The indented (4 spaces) code block that follows the paragraph holding `lead`."""
    lines = text[text.index(lead) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("    "))
    block: list[str] = []
    for line in lines[start:]:
        if line and not line.startswith("    "):
            break
        block.append(line[4:])
    return "\n".join(block).strip() + "\n"


def pointed_at(stack: Stack, topics: Topics) -> dict[str, str]:
    """The environment of a shell after `. .lattice/stack.env`, with this test's topics."""
    return {
        **os.environ,
        "LATTICE_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        "LATTICE_TOPIC": topics.events,
        "LATTICE_USAGE_TOPIC": topics.usage,
    }


async def test_the_readme_usage_fact_example_writes_a_fact_the_meters_projector_accepts(
    stack: Stack, topics: Topics
) -> None:
    code = readme_section("meters").split("```python\n")[1].split("```")[0]
    run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", code],
        env=pointed_at(stack, topics),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    [record] = await read_all(stack.kafka_bootstrap, topics.usage)
    assert record.key == b"cus_123"
    assert record.value is not None
    fact = parse_usage_fact(record.value)  # what the meters projector reads, or dead-letters
    assert (fact.stripe_customer_id, str(fact.value)) == ("cus_123", "0.1")
    assert abs(fact.timestamp - time.time()) < 300


async def test_the_readme_consumer_example_prints_each_record_of_the_log(
    stack: Stack, topics: Topics
) -> None:
    evt = event("invoice.paid", invoice(status="paid"))
    body = orjson.dumps(evt)
    record = build_received(body, evt, endpoint="platform", received_ms=int(time.time() * 1000))
    producer = AIOKafkaProducer(**kafka_options.options(), bootstrap_servers=stack.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topics.events, body, key=record.key, headers=record.headers)
    finally:
        await producer.stop()
    code = indented_block_after(readme_section("log"), "Reading it from Python")
    env = {**pointed_at(stack, topics), "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, env=env, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), CONSUMER_SECONDS)
    finally:
        proc.kill()
        await proc.wait()
    expected = (
        f"{record.key.decode()} {dict(record.headers)[HEADER_EVENT_TYPE].decode()} {evt['id']}"
    )
    assert line.decode().strip() == expected
