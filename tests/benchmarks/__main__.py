"""`python -m tests.benchmarks [NAME ...] [--OPTION ...]`: run benchmarks by name (all by
default), e.g. `python -m tests.benchmarks projectors --records 100000`.

A benchmark is a module of this package with `main(argv: list[str]) -> int` (or a
`main()` that takes nothing); its name is the module's name. Everything from the first
argument starting with `-` goes to each benchmark run (`--` itself is dropped).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from pathlib import Path


def benchmarks() -> dict[str, str]:
    """Benchmark name -> module, found in this folder."""
    folder = Path(__file__).resolve().parent
    return {
        info.name: f"{__package__}.{info.name}"
        for info in pkgutil.iter_modules([str(folder)])
        if not info.name.startswith("_") and not info.ispkg
    }


def main(argv: list[str]) -> int:
    """Run the named benchmarks (all when none is named)."""
    split = next((i for i, arg in enumerate(argv) if arg.startswith("-")), len(argv))
    names, extra = argv[:split], [arg for arg in argv[split:] if arg != "--"]
    known = benchmarks()
    unknown = [n for n in names if n not in known]
    if unknown:
        print(
            f"unknown benchmark {', '.join(unknown)}; known: {', '.join(sorted(known))}",
            file=sys.stderr,
        )
        return 2
    status = 0
    for name in names or sorted(known):
        module = importlib.import_module(known[name])
        print(f"== {name}", flush=True)
        # `main()` without parameters reads its own options (or has none).
        takes_args = bool(inspect.signature(module.main).parameters)
        result = module.main(extra) if takes_args else module.main()
        status = max(status, int(result or 0))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
