"""Idle-connection flood on its own: ``run.py --scenarios idle-rss`` (the code is in harness/idle.py).

    python3 benchmarks/idle_flood.py [--connections 5000] [--rounds 1] [--servers asgictl,uvicorn]

Opens N connections that send nothing against each server and reports its RSS growth
per idle connection, whether normal requests are still answered meanwhile, and how many
idle connections the server closed by its 5 s deadline (with uvicorn's as the reference).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=5000, help="idle connections (5000)")
    parser.add_argument("--rounds", type=int, default=1, help="floods per server, each on a fresh server (1)")
    parser.add_argument("--servers", help="comma-separated subset: asgictl, uvicorn, granian")
    args = parser.parse_args(argv)
    forwarded = ["--scenarios", "idle-rss", "--idle-connections", str(args.connections)]
    forwarded += ["--rounds", str(args.rounds)] + (["--servers", args.servers] if args.servers else [])
    return run.main(forwarded)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
