"""The broker's JVM: quick-starting for short-lived brokers, fully compiling for the stack."""

from __future__ import annotations

from pathlib import Path

from deploy.stack import kafka
from deploy.stack.kafka import KafkaPaths

QUICK = "-XX:TieredStopAtLevel=1"


def test_only_short_lived_jvms_stop_at_the_quick_compiler(tmp_path: Path) -> None:
    paths = KafkaPaths(tmp_path)
    short = kafka._java(paths, "kafka.Kafka", "server.properties")
    long = kafka._java(paths, "kafka.Kafka", "server.properties", long_lived=True)
    assert QUICK in short
    assert QUICK not in long
    assert [arg for arg in short if arg != QUICK] == long
    assert long[-2:] == ["kafka.Kafka", "server.properties"]
