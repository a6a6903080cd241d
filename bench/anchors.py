"""Where each benchmark finds its anchors (the other systems it is compared with in the same run).

``bench/anchors.sh`` builds them all: Celery, locust and Ray Serve each in a virtualenv of its own
under ``.bench/`` (ignored by git; none of them is a dependency of OpenEAS), nginx, wrk and
redis-server from Debian. A bench whose anchor is missing stops (exit status 1) and says
which anchor and how to get it; it never prints "n/a" in its place. ``--no-anchors`` (the smoke
test, tests/test_bench_smoke.py) runs the bench without its virtualenv anchors and prints
"anchor off" where their figures would be: no verdict against an anchor is given then.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The folder bench/anchors.sh fills; OPENEAS_BENCH_ENV is not read: one place, one command.
ENV = ROOT / ".bench"
HOW = "run bench/anchors.sh (it builds every anchor under .bench/)"
OFF = "anchor off"


class AnchorMissing(SystemExit):
    """A bench's anchor is not installed: the run stops with exit status 2 and this message."""

    def __init__(self, what: str, where: str) -> None:
        super().__init__(f"anchor missing: {what} (looked for {where}); {HOW}, or pass --no-anchors")


def add_flag(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--no-anchors",
        action="store_true",
        help="run without the virtualenv anchors (Celery, locust, Ray Serve): no comparison, no verdict "
        "against them (the smoke test uses it)",
    )


def venv_bin(name: str, program: str = "python") -> str:
    """``.bench/<name>/bin/<program>``, or AnchorMissing."""
    path = ENV / name / "bin" / program
    if not path.exists():
        raise AnchorMissing(f"{name} ({program})", str(path))
    return str(path)


def tool(program: str, *fallbacks: str) -> str:
    """A Debian program on PATH (or at one of ``fallbacks``), or AnchorMissing."""
    found = shutil.which(program) or next((f for f in fallbacks if Path(f).exists()), None)
    if found is None:
        raise AnchorMissing(program, "PATH " + " ".join(fallbacks))
    return found
