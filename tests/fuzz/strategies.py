"""Hostile inputs for the receiver's parsers and the projectors' reducers (hypothesis).

Each strategy aims at one way a body or header goes wrong in the wild: JSON that is not
JSON, JSON nested past any parser's limit, numbers no 64-bit type holds, bytes that are
not UTF-8, keys given twice, headers far longer than any proxy allows, and real Stripe
events with one field changed into something else.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

# Values that have broken real parsers: huge and negative numbers, floats that are not
# finite in JSON, empty and blank strings, lookalike digits, control characters.
NASTY_SCALARS: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    2**63,
    -(2**63) - 1,
    2**64,
    10**40,
    1e308,
    -1e308,
    5e-324,
    "",
    " ",
    "\x00",
    "\u202e",
    "١٢٣",  # Arabic-Indic digits: int() reads them, a parser may not
    "9" * 5000,
    "evt_",
    "2026-13-45T99:99:99Z",
    "NaN",
]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(NASTY_SCALARS),
)

json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=12), children, max_size=5),
    ),
    max_leaves=12,
)


def deep_nesting(depth: int, opener: str = "[") -> bytes:
    """A JSON document nested `depth` levels deep (objects or arrays)."""
    if opener == "{":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b"[" * depth + b"1" + b"]" * depth


@st.composite
def malformed_json(draw: st.DrawFn) -> bytes:
    """Bodies that are not one valid JSON document, or are valid but absurd."""
    kind = draw(
        st.sampled_from(
            ["truncated", "deep", "bad_utf8", "nan", "trailing", "huge_number", "random"]
        )
    )
    if kind == "truncated":
        text = json.dumps(draw(json_values)).encode()
        return text[: draw(st.integers(0, max(0, len(text) - 1)))]
    if kind == "deep":
        return deep_nesting(draw(st.integers(1000, 100_000)), draw(st.sampled_from("[{")))
    if kind == "bad_utf8":
        junk = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]))
        return b'{"id":"evt_' + junk + b'","object":"event","type":"x","created":1}'
    if kind == "nan":
        return b'{"id":"evt_1","object":"event","type":"x","created":NaN}'
    if kind == "trailing":
        return b'{"id":"evt_1","object":"event","type":"x","created":1}' + draw(
            st.sampled_from([b"}", b",", b"{}", b"\x00", b"garbage"])
        )
    if kind == "huge_number":
        digits = draw(st.integers(20, 20_000))
        return b'{"id":"evt_1","object":"event","type":"x","created":' + b"9" * digits + b"}"
    return draw(st.binary(max_size=512))


def with_duplicate_keys(event: dict[str, Any], key: str, second: Any) -> bytes:
    """`event` serialized with `key` appearing twice: first its own value, then `second`."""
    first = json.dumps(event)
    extra = json.dumps({key: second})[1:-1]
    return (first[:-1] + ", " + extra + "}").encode()


@st.composite
def mutated(draw: st.DrawFn, document: Any, *, max_changes: int = 3) -> Any:
    """`document` (a JSON value) with up to `max_changes` fields dropped or replaced."""
    result = json.loads(json.dumps(document))
    for _ in range(draw(st.integers(1, max_changes))):
        paths = list(json_paths(result))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = result
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        action = draw(st.sampled_from(["replace", "drop", "wrap"]))
        if action == "drop" and isinstance(parent, dict):
            del parent[last]
        elif action == "wrap":
            parent[last] = [parent[last]]
        else:
            parent[last] = draw(json_values)
    return result


def json_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        items: list[tuple[Any, Any]] = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    else:
        return found
    for key, child in items:
        found.append((*prefix, key))
        found.extend(json_paths(child, (*prefix, key)))
    return found
