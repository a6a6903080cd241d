"""Every soak in one command: ``python bench/soak.py [--quick]`` (127.0.0.1 only; stops by itself,
~2-3 min; ``--quick``: the smallest form of each, under a minute, for tests/test_bench_smoke.py).

Runs ``bench/soak_lifecycle.py`` (kill -9 of the server under load, rolling update and scale-in
with long requests in flight) and then ``bench/soak_gateway.py`` (3,000 slow clients beside normal
ones, 10,000 oversized requests), each in its own process, and exits non-zero if either did. Their
figures and what they mean are in docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOAKS = ("soak_lifecycle.py", "soak_gateway.py")
# The smallest form of each soak: it starts, runs every part once and gives a verdict.
QUICK = {
    "soak_lifecycle.py": ["--phase-s", "1"],
    "soak_gateway.py": [
        *("--slow", "40", "--clients", "2", "--seconds", "1", "--trickle-s", "0.2", "--oversized", "200"),
        *("--head-timeout-s", "1", "--keepalive-timeout-s", "2", "--body-timeout-s", "1"),
    ],
}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="Both soaks in turn; exits 1 when either fails its verdict.")
    ap.add_argument(
        "--quick", action="store_true", help="the smallest form of each soak (what the suite runs)"
    )
    quick = ap.parse_args(argv).quick
    failed = []
    for name in SOAKS:
        print(f"== {name}", flush=True)
        extra = QUICK[name] if quick else []
        if subprocess.run([sys.executable, str(HERE / name), *extra], check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
