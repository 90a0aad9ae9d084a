"""The committed JSON Schema files of the public contracts, and the command that writes
them after a model changed: `python -m schemas.export` (a test keeps each file equal to
what its model generates).

    schemas/json/stripe_event.schema.json   an event on the log (snapshot or thin)
    schemas/json/usage_fact.schema.json     a fact on `usage.reported`
    schemas/json/log_record_headers.schema.json   the headers of a record on the log
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas import envelope, record, usage

SCHEMA_DIR = Path(__file__).resolve().parent / "json"
GENERATED: dict[str, Callable[[], dict[str, Any]]] = {
    "stripe_event.schema.json": envelope.envelope_json_schema,
    "usage_fact.schema.json": usage.json_schema,
    "log_record_headers.schema.json": record.json_schema,
}


def render(schema: dict[str, Any]) -> str:
    """A schema file's exact text."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def generated() -> dict[Path, str]:
    """Each committed schema file and the text its model generates now."""
    return {SCHEMA_DIR / name: render(make()) for name, make in GENERATED.items()}


def write() -> list[Path]:
    """Regenerate every schema file."""
    for path, text in generated().items():
        path.write_text(text)
    return list(generated())


if __name__ == "__main__":
    for written in write():
        print(written)
