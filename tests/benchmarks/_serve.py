"""Serve an app factory exactly as `lattice serve` serves the receiver (the benchmark's
ceiling and receiver then differ only in the app): `python -m tests.benchmarks._serve
module:factory --port P --workers N`."""

from __future__ import annotations

import argparse
import sys

from ingest.workers import serve


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks._serve")
    parser.add_argument("factory", help="module:function returning the ASGI app")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    return serve(args.factory, host="127.0.0.1", port=args.port, workers=args.workers)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
