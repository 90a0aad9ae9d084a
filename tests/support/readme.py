"""The README's copy-paste examples, read from the README itself (so tests run them)."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_query(first: str, last: str) -> str:
    """The README's example query from the line starting `first` to `last`."""
    readme = README.read_text()
    start = readme.index(first)
    return readme[start : readme.index(last, start) + len(last)]


def readme_section(name: str) -> str:
    """The README's section `name`, between its `<!-- section:name -->` markers."""
    readme = README.read_text()
    return readme.split(f"<!-- section:{name} -->")[1].split(f"<!-- /section:{name} -->")[0]
