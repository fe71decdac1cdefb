"""WebSocket echo on its own: ``run.py --scenarios ws-echo`` (the code is in harness/ws.py).

    python3 benchmarks/ws_echo.py [--duration 5] [--rounds 3] [--servers asgictl,asgictl-wsproto,uvicorn]

Round trips and bursts of 5-byte text messages on 16 connections, asgictl (websockets
and wsproto) against uvicorn and granian, each figure with its ratio to uvicorn.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per run (5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--servers", help="comma-separated subset (see run.py --list)")
    args = parser.parse_args(argv)
    forwarded = ["--scenarios", "ws-echo", "--duration", str(args.duration), "--rounds", str(args.rounds)]
    return run.main(forwarded + (["--servers", args.servers] if args.servers else []))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
