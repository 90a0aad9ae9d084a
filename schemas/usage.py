"""The usage-fact contract: what an application reports on `usage.reported`.

One JSON object per fact it sent to Stripe's meter events API, keyed by customer id.
Producers in other languages validate against `schemas/json/usage_fact.schema.json`,
which `json_schema()` generates (`python -m schemas.export` writes it; a test keeps the
committed file equal to it).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# A value as a string: plain decimal digits, as the schema says (not "1e3", "+5", ".5",
# "1_000" or other scripts' digits, which Python's Decimal would also read).
DECIMAL_TEXT = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")

# PostgreSQL's `numeric` holds up to 131072 digits before the point and 16383 after: a
# value past that could never be stored, so it is refused here, as the fact's fault.
OUT_OF_RANGE = "value must have at most 131072 digits before the point and 16383 after"


def fits_numeric(value: Decimal) -> bool:
    """Whether a finite `value` fits a PostgreSQL `numeric` column."""
    exponent = value.as_tuple().exponent
    return isinstance(exponent, int) and exponent >= -16383 and value.adjusted() < 131072


# Stripe's meter-event identifier is at most 100 characters.
MAX_IDENTIFIER = 100

# The last second of the year 9999: a later `timestamp` is not Unix seconds (most often
# milliseconds), and taken as seconds it would put the usage in a period of year 55,000.
MAX_TIMESTAMP = 253_402_300_799


class UsageFactError(ValueError):
    """A usage-fact value that does not match the contract; the message says why."""


class UsageAction(StrEnum):
    """`report` a fact, or `cancel` the earlier fact with the same identifier."""

    REPORT = "report"
    CANCEL = "cancel"


class UsageFact(BaseModel):
    """One metered fact the application reported to Stripe (or an adjustment cancelling one)."""

    model_config = ConfigDict(extra="ignore", frozen=True, title="UsageFact")

    identifier: Annotated[str, Field(min_length=1, max_length=MAX_IDENTIFIER)] = Field(
        description="The idempotency identifier sent to Stripe with the meter event."
    )
    event_name: Annotated[str, Field(min_length=1, max_length=100)] = Field(
        description="The meter's event name."
    )
    stripe_customer_id: Annotated[str, Field(min_length=1)] = Field(
        description="The Stripe customer the usage belongs to (cus_...)."
    )
    value: Decimal = Field(
        description="The usage value: a decimal number, as a string (preferred) or a number.",
        json_schema_extra={
            "anyOf": [{"type": "string", "pattern": DECIMAL_TEXT.pattern}, {"type": "number"}]
        },
    )
    timestamp: Annotated[int, Field(ge=0, le=MAX_TIMESTAMP, strict=True)] = Field(
        description="When the usage happened, in Unix seconds."
    )
    action: UsageAction = Field(
        default=UsageAction.REPORT,
        description="`report` (default) or `cancel`: cancel the earlier fact with this identifier.",
    )

    @field_validator("value", mode="before")
    @classmethod
    def _exact_decimal(cls, raw: Any) -> Any:
        # A float goes through its shortest repr, so 0.1 is exactly 0.1, not 0.1000000000000000055.
        if isinstance(raw, bool):
            raise ValueError("value must be a decimal number, not a boolean")
        if isinstance(raw, float):
            return Decimal(repr(raw))
        # fullmatch: `$` alone would also take "12\n", which the schema's pattern refuses.
        if isinstance(raw, str) and not DECIMAL_TEXT.fullmatch(raw):
            raise ValueError("value must be a plain decimal like 12 or -0.5")
        return raw

    @field_validator("timestamp", mode="before")
    @classmethod
    def _whole_seconds(cls, raw: Any) -> Any:
        # JSON has one kind of number, and the schema's `integer` takes 1764064800.0 too.
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        if type(raw) is int and raw > MAX_TIMESTAMP:
            raise ValueError(
                f"timestamp must be in Unix seconds: {raw} is after the year 9999 (milliseconds?)"
            )
        return raw

    @field_validator("value")
    @classmethod
    def _finite(cls, value: Decimal) -> Decimal:
        if not value.is_finite():
            raise ValueError("value must be a finite decimal number")
        if not fits_numeric(value):
            raise ValueError(OUT_OF_RANGE)
        return value


def parse_usage_fact(raw: bytes) -> UsageFact:
    """Validate one record value; UsageFactError names every field that is wrong."""
    try:
        fact = UsageFact.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'the record'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise UsageFactError(f"not a usage fact: {problems}") from None
    # (Not the hot path: the meters reducer reads the plain shape, a string value, itself.)
    exact = _number_as_written(raw)
    if exact is not None and exact != fact.value:
        if not fits_numeric(exact):  # 1e-20000: the float read it as 0
            raise UsageFactError(f"not a usage fact: value: {OUT_OF_RANGE}")
        fact = fact.model_copy(update={"value": exact})
    return fact


def _number_as_written(raw: bytes) -> Decimal | None:
    """The `value` of a fact written as a JSON number with a fraction or an exponent, read
    from its digits: a float keeps about 17 significant ones, so 12345678901234567890.5
    would arrive as 12345678901234567000 (a Java or Go BigDecimal writes such numbers).
    None for a string or a whole number (read exactly already)."""
    try:
        value = json.loads(raw, parse_float=Decimal).get("value")
    except (ValueError, RecursionError):  # the model read it; keep what the model read
        return None
    return value if isinstance(value, Decimal) else None


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a usage fact (draft 2020-12), as committed in schemas/json."""
    schema = UsageFact.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://lattice.dev/schemas/usage_fact.schema.json"
    return schema
