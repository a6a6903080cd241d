"""Every soak in one command: ``python bench/soak.py`` (127.0.0.1 only; stops by itself, ~2-3 min).

Runs ``bench/soak_lifecycle.py`` (kill -9 of the server under load, rolling update and scale-in
with long requests in flight) and then ``bench/soak_gateway.py`` (3,000 slow clients beside normal
ones, 10,000 oversized requests), each in its own process, and exits non-zero if either did. Their
figures and what they mean are in docs/RELIABILITY.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOAKS = ("soak_lifecycle.py", "soak_gateway.py")


def main() -> int:
    failed = []
    for name in SOAKS:
        print(f"== {name}", flush=True)
        if subprocess.run([sys.executable, str(HERE / name)], check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
