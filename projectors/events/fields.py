"""The few fields of an event the index reads, decoded without the rest of the body.

msgspec decodes straight into these structs and only steps over everything else (the
object snapshot is most of a 2-3 KB body), where a full parse builds every nested value
as a Python object first. Decoding is as strict as orjson's for the fields read; a value
of another type than declared, or anything malformed, returns None and the reducer takes
the full parse, which decides (and words any refusal) exactly as it always has.

One difference is left on purpose: a number out of a float's range (`1e999`) in a part
the index does not read is stepped over, where orjson refuses the whole value. Finding
one would cost a scan of every body; the receiver already parses each body with orjson
before appending it, so no such record reaches the log through it.
"""

from __future__ import annotations

import math

import msgspec


class ObjectRef(msgspec.Struct):
    """`data.object` or `related_object`: only its id."""

    id: str | None = None


class DataRef(msgspec.Struct):
    """`data`: only its object."""

    object: ObjectRef | None = None


class IndexFields(msgspec.Struct):
    """What `projections.events` needs from a snapshot or a thin event."""

    id: str | None = None
    type: str | None = None
    created: int | float | str | None = None
    account: str | None = None
    context: str | None = None
    livemode: bool | None = None
    api_version: str | None = None
    data: DataRef | None = None
    related_object: ObjectRef | None = None


_decode = msgspec.json.Decoder(IndexFields).decode


def decode_fields(value: bytes) -> IndexFields | None:
    """The index's fields of a JSON event, or None when the value is not plainly one."""
    try:
        if not value.isascii():
            # msgspec does not check the UTF-8 of the strings it steps over; orjson
            # refuses the whole value, and so must we.
            value.decode()
        fields = _decode(value)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    created = fields.created
    if isinstance(created, float) and not math.isfinite(created):
        return None  # orjson refuses numbers out of range
    return fields
