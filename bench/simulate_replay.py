"""The simulator against reality, the issue's form: a ``--minutes`` trace replayed live.

    python bench/simulate_replay.py [--minutes 10]

Starts a real server (test-server replicas, the real autoscaler and gateway, the policy's windows
shortened: tests/live_replay.py, shared with tests/test_e2e_simulate.py), replays a trace of
``--minutes`` shaped 1 → 3 → 1 → 2 → 1 → 3 replicas (a qps target of 4 per replica: 2, 10, 2, 6,
2, 10 req/s over tenths 1, 2, 2, 2, 2, 1 of it), then simulates the same trace with
``openeas simulate --service`` (the cold starts that server measured). The anchor is the live run
itself. Prints the three comparisons and the verdict against the issue's tolerances:
replica-seconds within 10%, cost within 5%, scale events within ±1. Exits 1 on a miss.
Targets 127.0.0.1 only and stops by itself (the trace's length, then the server is reaped).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the rig lives in tests/ (shared with the e2e test)

from tests.harness import stop_and_reap  # noqa: E402
from tests.live_replay import replay, shaped, start_server  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the trace (≥ 1/6: 10 s)")
    args = ap.parse_args()
    seconds = round(args.minutes * 60)
    if seconds < 10:
        ap.error(f"--minutes: {args.minutes:g}; at least 10 s (1/6 minute) of trace")
    counts = shaped(seconds)
    with tempfile.TemporaryDirectory(prefix="openeas-replay-") as tmp:
        srv = start_server(Path(tmp))
        try:
            fig = replay(srv, Path(tmp), counts)
        finally:
            stop_and_reap(srv)
    print(f"{len(counts)} s trace, {fig.requests} requests, {fig.ok} answered 200")
    print(f"cold starts from {fig.cold_starts_from}")
    print("| comparison | figures | within |")
    print("|---|---|---|")
    checks = fig.checks()
    for what, ok, figures in checks:
        print(f"| {what} | {figures} | {'yes' if ok else 'NO'} |")
    passed = all(ok for _, ok, _ in checks) and fig.ok == fig.requests
    lost = "" if fig.ok == fig.requests else f"; {fig.requests - fig.ok} requests not answered 200"
    print(f"verdict: {'PASS' if passed else 'MISS'} ({fig.line()}{lost})")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
