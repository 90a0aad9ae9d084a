"""Coverage-guided fuzzing (atheris, i.e. libFuzzer) of the receiver's checks and the reducers.

    python -m tests.fuzz.guided envelope -runs=20000          # libFuzzer flags follow the target
    python -m tests.fuzz.guided signature -max_total_time=60
    python -m tests.fuzz.guided reducers -runs=5000 -seed=7

The hypothesis suites beside this file generate what we expect to be hostile; libFuzzer
instead mutates inputs towards branches no input has reached yet, which finds what nobody
thought of. Each target asserts its invariant; a violation is an uncaught exception, which
libFuzzer reports with the input that caused it (saved under `-artifact_prefix`) and a
non-zero exit. Every run starts from seeds of real Stripe-shaped inputs (read with
`-seed_inputs`; give corpus folders after the flags to keep what a run finds) and a
dictionary of JSON tokens and Stripe's field names. `test_guided_fuzz.py` runs each target
for a bounded number of inputs in `make test`.

- `signature`: a body and a `Stripe-Signature` header built from fuzzed items (right and
  wrong `v1`s, upper-case hex, `v0`, junk, any separator). `verify` accepts exactly when
  Stripe's own library does (where it gives a verdict, see `tests/support/stripe_oracle`),
  refuses a timestamp outside the tolerance, and raises nothing but `SignatureError`.
- `envelope`: bytes as a body, or a real event with fields edited by the fuzzer (`_edit`).
  `parse_event` returns an event that meets the envelope contract (and reads as Python's
  json module reads it) or raises `EnvelopeError`; the record the receiver would then
  append builds without error.
- `reducers`: the same two kinds of value on every topic, with the receiver's headers,
  fuzzed ones or none. Every projection's `reduce` returns a sequence of changes or
  raises `PoisonRecord` (a dead letter with a reason), nothing else.
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import atheris
import orjson

with atheris.instrument_imports(include=["ingest", "schemas", "projectors"]):
    from ingest.record import build_received
    from ingest.signature import SignatureError, compute_signature, verify
    from projectors.base import Record
    from projectors.catalog import discover
    from schemas import envelope as _envelope  # noqa: F401  (read through check_event)

    PROJECTIONS = discover()  # imports each projection's package, its reducer included

from tests.fuzz.strategies import json_paths
from tests.fuzz.test_envelope_fuzz import _samples
from tests.fuzz.test_envelope_fuzz import check as check_event
from tests.fuzz.test_reducers_fuzz import SETTINGS, _headers_of, seeds
from tests.fuzz.test_reducers_fuzz import check as check_reduce
from tests.support.stripe_oracle import stripe_verdict

SECRETS = ("whsec_guided_0123456789abcdef", "whsec_guided_rotated")
ROGUE = "whsec_guided_not_this_endpoints"
NOW = 1_764_000_000
TOLERANCE = 300
SEPARATORS = (",", ", ", " ,", ",,")
HEADER_NAMES = (
    "stripe-event-id",
    "stripe-event-type",
    "stripe-account",
    "stripe-livemode",
    "stripe-api-version",
    "lattice-endpoint",
    "lattice-received-at",
)
TOPICS = (SETTINGS.topic, SETTINGS.usage_topic, "elsewhere")


def _stripe_verdict(body: str, header: str) -> bool | None:
    """Stripe's verdict for any of the endpoint's secrets (its age check off); None when
    its library fails on the input for a secret and accepts for none."""
    verdicts = [stripe_verdict(body, header, secret, None) for secret in SECRETS]
    if True in verdicts:
        return True
    return None if None in verdicts else False


def _header(fdp: atheris.FuzzedDataProvider, body: bytes) -> str:
    """A `Stripe-Signature` value: fuzzed items, some of them right for `body`."""
    items: list[str] = []
    stamp = NOW + fdp.ConsumeIntInRange(-2 * TOLERANCE, 2 * TOLERANCE)
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        kind = fdp.ConsumeIntInRange(0, 6)
        if kind == 0:
            stamp = NOW + fdp.ConsumeIntInRange(-2 * TOLERANCE, 2 * TOLERANCE)
            items.append(f"t={stamp}")
        elif kind == 1:
            items.append(f"t={fdp.ConsumeUnicodeNoSurrogates(24)}")
        elif kind in (2, 3):  # a v1 for this body at the last `t`, by a secret or a rogue
            secret = (*SECRETS, ROGUE)[fdp.ConsumeIntInRange(0, 2)]
            digest = compute_signature(body, stamp, secret)
            items.append(f"v1={digest.upper() if fdp.ConsumeBool() else digest}")
        elif kind == 4:
            items.append(f"v1={fdp.ConsumeUnicodeNoSurrogates(70)}")
        elif kind == 5:
            items.append(f"v0={compute_signature(body, stamp, SECRETS[0])}")
        else:
            items.append(fdp.ConsumeUnicode(30))
    separator = SEPARATORS[fdp.ConsumeIntInRange(0, len(SEPARATORS) - 1)]
    return separator.join(items)


def signature(data: bytes) -> None:
    """Accepts exactly what Stripe accepts; the age check as documented; no other error."""
    fdp = atheris.FuzzedDataProvider(data)
    text = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 300))
    body = text.encode()
    header = _header(fdp, body)
    stamp, reason = _verify(body, header, 0)
    assert (stamp is None) == bool(reason), "a refusal names its reason"
    verdict = _stripe_verdict(text, header)
    if verdict is not None:
        assert (stamp is not None) == verdict, (text, header, stamp)
    elif stamp is not None:  # no verdict: the definition, a `v1` item that is the HMAC
        items = header.split(",")
        assert any(f"v1={compute_signature(body, stamp, s)}" in items for s in SECRETS)
    if stamp is None:
        return
    _, reason = _verify(body, header, TOLERANCE)
    assert reason in ("", "timestamp_out_of_tolerance"), reason
    assert (not reason) == (abs(NOW - stamp) <= TOLERANCE), (header, stamp)


def _verify(body: bytes, header: str, tolerance: int) -> tuple[int | None, str]:
    """(the signed timestamp, "") or (None, the refusal's reason)."""
    try:
        return verify(body, header, SECRETS, now=NOW, tolerance=tolerance), ""
    except SignatureError as exc:
        return None, exc.reason


def envelope(data: bytes) -> None:
    """An event meeting the contract, or `EnvelopeError`; its record always builds.

    The first byte picks the mode: even, the rest is the body as it is; odd, the rest
    chooses edits to a real event (see `_edit`)."""
    if data[:1] and data[0] % 2:
        _, body = _edit(atheris.FuzzedDataProvider(data[1:]), _samples())
    else:
        body = data[1:]
    event = check_event(body)
    if event is not None:
        record = build_received(body, event, endpoint="platform", received_ms=NOW * 1000)
        assert record.value is body
        assert record.key


def reducers(data: bytes) -> None:
    """Changes or `PoisonRecord` from every projection's reducer, whatever the record.

    The first byte picks the mode. Odd: the rest chooses edits to one of the real inputs
    (`_edit`) and whose headers go with it. Even, a byte layout that keeps the seeds real
    events byte for byte: the topic; a flag byte (bit 0: the headers the receiver would
    write for this value; bits 1-7: which of the header names follow); each chosen
    header as a length byte and that many bytes; the value."""
    if len(data) < 3:
        return
    headers: dict[str, bytes] = {}
    source: object = None  # what the headers are to be built from, if anything
    if data[0] % 2:
        fdp = atheris.FuzzedDataProvider(data[1:])
        index, value = _edit(fdp, [document for _, document in seeds()])
        topic, original = seeds()[index]
        # The headers of the real event, of the edited one (as the receiver wrote them), or
        # none (a foreign producer).
        source = (original, value, None)[fdp.ConsumeIntInRange(0, 2)]
    else:
        topic, flags, value = TOPICS[data[1] % len(TOPICS)], data[2], data[3:]
        for bit, name in enumerate(HEADER_NAMES, start=1):
            if flags >> bit & 1 and value:
                size = value[0] % 41
                headers[name], value = value[1 : 1 + size], value[1 + size :]
        source = value if flags & 1 else None
    if source is not None:
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
            headers = _headers_of(orjson.loads(source) if isinstance(source, bytes) else source)
    record = Record(topic, 0, 0, b"k", value, headers, NOW * 1000)
    for projection in PROJECTIONS.values():
        try:
            check_reduce(projection, record)
        except BaseException as exc:  # pytest.fail raises outside Exception: make it a crash
            if isinstance(exc, Exception):
                raise
            raise AssertionError(str(exc)) from None


# What an edit puts in place of a field: each type, the edges of numbers, Stripe's words.
VALUES: tuple[Any, ...] = (
    True,
    False,
    None,
    0,
    -1,
    2**63,
    2**64,
    1.5,
    -0.0,
    1e308,
    "",
    "evt_",
    "evt_guided",
    "event",
    "v2.core.event",
    "2026-11-25T10:00:00.123Z",
    "2026-11-25",
    [],
    {},
    {"id": "in_guided"},
    [{"id": 1}],
)


def _edit(fdp: atheris.FuzzedDataProvider, documents: Sequence[Any]) -> tuple[int, bytes]:
    """One of `documents` with one to four fields replaced (by one of `VALUES` or any
    text), dropped or wrapped in a list, serialized ASCII-escaped or as raw UTF-8 (lone
    surrogates included); returns its index and the bytes."""
    index = fdp.ConsumeIntInRange(0, len(documents) - 1)
    document = copy.deepcopy(documents[index])
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        paths = json_paths(document)
        if not paths:
            break
        *steps, last = paths[fdp.ConsumeIntInRange(0, len(paths) - 1)]
        parent = document
        for step in steps:
            parent = parent[step]
        action = fdp.ConsumeIntInRange(0, len(VALUES) + 2)
        if action < len(VALUES):
            parent[last] = copy.deepcopy(VALUES[action])
        elif action == len(VALUES):
            parent[last] = fdp.ConsumeUnicode(24)
        elif action == len(VALUES) + 1:
            parent[last] = [parent[last]]
        elif isinstance(parent, dict):
            del parent[last]
    text = json.dumps(document, ensure_ascii=fdp.ConsumeBool())
    return index, text.encode("utf-8", "surrogatepass")


# JSON tokens and Stripe's words for libFuzzer's dictionary: mutations then swap whole
# values and names (a number for `true`, an id for a nested object), not only bytes.
JSON_TOKENS = (
    b"true",
    b"false",
    b"null",
    b"0",
    b"-1",
    b"1e999",
    b"-0.0",
    b"18446744073709551616",
    b'""',
    b"[]",
    b"{}",
    b'"\\ud800"',
    b'"\\u0000"',
    b"\xff",
    b'"evt_',
    b'"event"',
    b'"v2.core.event"',
    b'"id"',
    b'"object"',
    b'"type"',
    b'"created"',
    b'"data"',
    b'"livemode"',
    b'"account"',
    b'"context"',
    b'"related_object"',
    b'"api_version"',
    b'"2026-11-25T10:00:00.123Z"',
    b'"deleted"',
    b'"previous_attributes"',
)

# Seeds of the edit mode (an odd first byte): the fuzzer's choices start from all zeros
# (the first event, one edit) and from a ramp, and grow from there.
EDITS = (b"\x01" + bytes(64), b"\x01" + bytes(range(1, 256, 3)))


def _reducer_seeds() -> Iterable[bytes]:
    yield from EDITS
    for topic, value in seeds():
        yield bytes([0, TOPICS.index(topic), 1]) + orjson.dumps(value)


Target = tuple[Callable[[bytes], None], Callable[[], Iterable[bytes]], tuple[bytes, ...]]
TARGETS: dict[str, Target] = {
    "signature": (signature, lambda: [b"\x00" * 64, bytes(range(256))], ()),
    "envelope": (
        envelope,
        lambda: [*EDITS, *(b"\x00" + orjson.dumps(sample) for sample in _samples())],
        JSON_TOKENS,
    ),
    "reducers": (reducers, _reducer_seeds, JSON_TOKENS),
}


def _quoted(token: bytes) -> str:
    """A libFuzzer dictionary entry: the bytes in quotes, `\\xNN` for the unprintable."""
    text = "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\x{b:02x}" for b in token)
    return f'"{text}"'


def main(argv: list[str]) -> None:
    """Run one target with libFuzzer's flags (and corpus folders, if any are given)."""
    if len(argv) < 2 or argv[1] not in TARGETS:
        print(f"usage: python -m tests.fuzz.guided {{{','.join(TARGETS)}}} [flags] [corpus ...]")
        print("flags are libFuzzer's: -runs=20000, -max_total_time=60, -seed=7, -help=1")
        raise SystemExit(2)
    name = argv[1]
    target, corpus, tokens = TARGETS[name]
    # libFuzzer ends the process itself (no Python clean-up runs): the seeds live in a
    # fixed folder, rewritten by each run, and are read with -seed_inputs, so that
    # nothing is written next to them.
    seeds_dir = Path(tempfile.gettempdir()) / f"lattice-fuzz-seeds-{name}"
    seeds_dir.mkdir(exist_ok=True)
    files = []
    for number, seed in enumerate(corpus()):
        files.append(seeds_dir / f"seed-{number}")
        files[-1].write_bytes(seed)
    flags = [arg for arg in argv[2:] if arg.startswith("-")]
    if tokens and not any(flag.startswith("-dict=") for flag in flags):
        dictionary = seeds_dir / "tokens.dict"
        dictionary.write_text("".join(f"{_quoted(token)}\n" for token in tokens))
        flags.append(f"-dict={dictionary}")
    folders = [arg for arg in argv[2:] if not arg.startswith("-")]
    if not any(flag.startswith("-max_len=") for flag in flags):
        flags.append("-max_len=16384")
    if not any(flag.startswith("-len_control=") for flag in flags):
        flags.append("-len_control=0")  # mutate the real events whole from the start
    flags.append("-seed_inputs=" + ",".join(str(file) for file in files))
    atheris.Setup([argv[0], *flags, *folders], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
