"""The long fuzzing run: tests/test_fuzz.py with a large, random example budget.

    python3 benchmarks/fuzz_http.py [EXAMPLES]     (default 20000 per property)

Bounded by the example count; prints pytest's summary. Any failure is printed with the
smallest input hypothesis could shrink it to.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    examples = sys.argv[1] if len(sys.argv) > 1 else "20000"
    env = dict(os.environ, ASGICTL_FUZZ_EXAMPLES=examples, ASGICTL_FUZZ_RANDOM="1")
    sys.exit(
        subprocess.call(
            [sys.executable, "-m", "pytest", "-q", str(ROOT / "tests" / "test_fuzz.py")], cwd=ROOT, env=env
        )
    )
