"""Lifecycle soak through a real `openeas server` (127.0.0.1 only; stops by itself, ~1-2 min):
``python bench/soak_lifecycle.py`` (``--src DIR`` runs another tree's ``src/``, e.g.
``git archive <rev> src | tar -x -C /tmp/old`` then ``--src /tmp/old/src``).

1. ``kill -9`` of the server under steady load (8 keep-alive clients, the built-in test server
   with 100 ms latency, 2 replicas): requests failed while the server is gone, then the next
   start (does it adopt the running gateway: same pid?) and requests failed after it.
2. A rolling update and 3. a scale-in 2 → 1, each with 12 requests of 3 s and 2 MB bodies in
   flight on the replicas that stop (a tiny counting replica, tests/fixtures/counting_replica.py,
   appends one line per execution): failed requests and re-runs (executions beyond one).

Prints a Markdown table (the figures in docs/RELIABILITY.md come from it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the rig lives in tests/ (shared with the lifecycle e2e tests)

from tests.harness import Server, kill_gateway, new_server, recorded_gateway_pid, service_spec, wait_for  # noqa: E402
from tests.lifecycle_load import Load, counting_spec  # noqa: E402

BIG = 2 * 1024 * 1024
N_BIG = 12
DELAY_S = 3.0


def _server(tmp: Path, name: str, src: Path | None) -> Server:
    srv = new_server(tmp / name)
    return srv.start()


def _in_flight(srv: Server, service: str) -> int:
    text = requests.get(f"{srv.gateway_url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(f'openeas_gateway_in_flight_requests{{service="{service}"}}'):
            return int(float(line.split()[-1]))
    return 0


def kill9_under_load(tmp: Path, src: Path | None, phase_s: float) -> dict[str, Any]:
    srv = _server(tmp, "kill9", src)
    load: Load | None = None
    try:
        c = srv.client
        token = "soak-token-0123456789"
        c.deploy(service_spec("soak", replicas=2, args="--latency-ms 100", token=token))
        c.wait_ready("soak", 2, timeout_s=60)
        gw_before = recorded_gateway_pid(srv.data_dir)
        load = Load(f"{srv.gateway_url}/api/predict/soak/v1/completions", token).start()
        time.sleep(phase_s)  # steady load before the kill
        in_flight = _in_flight(srv, "soak")
        failed_before = len(load.failures)
        srv.kill9()
        time.sleep(phase_s)  # no control plane
        failed_down = len(load.failures) - failed_before
        srv.start()
        gw_after = recorded_gateway_pid(srv.data_dir)
        time.sleep(phase_s)  # the new server runs
        load.stop()
        lat = sorted(load.latencies)
        return {
            "scenario": "kill -9 of the server under load, then restart",
            "sent": load.summary()["sent"],
            "failed": len(load.failures),
            "re-run": "-",
            "adopted": gw_before is not None and gw_before == gw_after,
            "detail": (
                f"{in_flight} in flight at the kill; {failed_down} failed while the server was down; "
                f"gateway pid {gw_before} -> {gw_after} "
                f"({'adopted' if gw_before is not None and gw_before == gw_after else 'not adopted'}); "
                f"max latency {lat[-1] * 1000:.0f} ms"
                + (f"; failures: {dict(load.failure_kinds().most_common(2))}" if load.failures else "")
            ),
        }
    finally:
        if load is not None:
            load.stop()
        srv.stop()
        kill_gateway(srv.data_dir)


def _counting_spec(name: str, count_file: Path, version: str) -> dict[str, Any]:
    return counting_spec(name, count_file, delay_s=DELAY_S, version=version)


def _executions(count_file: Path) -> list[str]:
    return [line.split()[1] for line in count_file.read_text().splitlines()] if count_file.exists() else []


def change_with_big_requests(tmp: Path, src: Path | None, change: str) -> dict[str, Any]:
    srv = _server(tmp, change, src)
    try:
        c = srv.client
        name = change.replace("-", "_")
        count_file = srv.data_dir / "executions"
        c.deploy(_counting_spec(name, count_file, "1"))
        c.wait_ready(name, 2, timeout_s=60)
        url = f"{srv.gateway_url}/api/predict/{name}/work"
        token = f"{name}-token-0123456789"
        results: dict[str, Any] = {}
        took: list[float] = []

        def call(i: int) -> None:
            t0 = time.monotonic()
            try:
                r = requests.post(
                    url,
                    data=b"x" * BIG,
                    headers={"Authorization": token, "X-Request-Id": f"r{i}"},
                    timeout=60,
                )
                results[f"r{i}"] = r.status_code
            except requests.RequestException as exc:
                results[f"r{i}"] = type(exc).__name__
            took.append(time.monotonic() - t0)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(N_BIG)]
        for t in threads:
            t.start()
        wait_for(lambda: len(_executions(count_file)) >= N_BIG, 60, what="all requests executing")
        if change == "rolling-update":
            c.update(name, _counting_spec(name, count_file, "2"))
        else:
            c.scale(name, 1)
        for t in threads:
            t.join(90)
        runs = Counter(_executions(count_file))
        failed = [rid for rid, code in results.items() if code != 200]
        return {
            "scenario": f"{change}, {N_BIG} x 3 s requests with 2 MB bodies in flight",
            "sent": N_BIG,
            "failed": len(failed),
            "re-run": sum(n - 1 for n in runs.values()),
            "detail": f"slowest {max(took):.1f} s; outcomes {dict(Counter(results.values()))}",
        }
    finally:
        srv.stop()
        kill_gateway(srv.data_dir)


def passed(row: dict[str, Any]) -> bool:
    """A scenario passes when no request failed, none ran twice ("-": not measured) and, after a
    kill -9, the next server adopted the running gateway (docs/RELIABILITY.md's promises)."""
    return row["failed"] == 0 and row["re-run"] in (0, "-") and row.get("adopted", True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, help="run the server from this src/ directory (another revision)")
    ap.add_argument(
        "--phase-s", type=float, default=4.0, help="seconds of load before, during and after the kill"
    )
    args = ap.parse_args()
    # The server and its children run this tree's src/ (or --src), installed or not.
    os.environ["PYTHONPATH"] = str((args.src or ROOT / "src").resolve())
    tmp = Path(tempfile.mkdtemp(prefix="openeas-soak-"))
    rows = []
    try:
        rows.append(kill9_under_load(tmp, args.src, args.phase_s))
        rows.append(change_with_big_requests(tmp, args.src, "rolling-update"))
        rows.append(change_with_big_requests(tmp, args.src, "scale-in"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ncommand: python bench/soak_lifecycle.py{' --src ' + str(args.src) if args.src else ''}\n")
    print("| scenario | sent | failed | re-run | verdict | detail |")
    print("|---|---:|---:|---:|---|---|")
    for r in rows:
        verdict = "PASS" if passed(r) else "FAIL"
        cells = [r["scenario"], r["sent"], r["failed"], r["re-run"], verdict, r["detail"]]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    return 0 if all(passed(r) for r in rows) else 1


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise SystemExit(main())
