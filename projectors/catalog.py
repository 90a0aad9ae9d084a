"""Which projections exist: every sub-package of `projectors/` whose `__init__.py`
exposes `projection`. No registry fills at import; adding a folder adds a projection."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deploy.settings import ConfigError, Settings

PACKAGE = "projectors"
PACKAGE_DIR = Path(__file__).resolve().parent


class UnknownProjection(ConfigError):
    """A name given on the command line is not a projection; the message lists the known
    (a ConfigError: the command says so in one line)."""


def discover(package: str = PACKAGE, folder: Path = PACKAGE_DIR) -> dict[str, Any]:
    """Every projection found under `folder`, by name, in name order."""
    found: dict[str, Any] = {}
    for info in pkgutil.iter_modules([str(folder)]):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        projection = getattr(module, "projection", None)
        if projection is None:
            continue
        name = str(projection.name)
        if name in found:
            raise ValueError(f"two packages define the projection {name!r}")
        found[name] = projection
    return dict(sorted(found.items()))


def select(
    names: Sequence[str], known: dict[str, Any] | None = None, settings: Settings | None = None
) -> list[Any]:
    """The projections named (all of them when `names` is empty), in the order given; with
    `settings`, each that has `configured(settings)` as it returns itself configured."""
    catalog = discover() if known is None else known
    missing = [name for name in names if name not in catalog]
    if missing:
        raise UnknownProjection(
            f"no projection named {', '.join(missing)}; known: {', '.join(catalog) or 'none'}"
        )
    chosen = [catalog[name] for name in dict.fromkeys(names)] if names else list(catalog.values())
    if settings is None:
        return chosen
    return [p.configured(settings) if hasattr(p, "configured") else p for p in chosen]
