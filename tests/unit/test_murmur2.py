"""The receiver's murmur2 is Kafka's: Java's own test vectors and aiokafka's function agree."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from ingest.batching import murmur2

# org.apache.kafka.common.utils.UtilsTest#testMurmur2 (signed 32-bit, as Java returns them).
JAVA_VECTORS = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}


@pytest.mark.parametrize(("text", "expected"), JAVA_VECTORS.items())
def test_matches_the_java_client(text: str, expected: int) -> None:
    assert murmur2(text.encode()) == expected & 0xFFFFFFFF


@given(st.binary(max_size=200))
def test_matches_aiokafka_on_any_bytes(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data)
