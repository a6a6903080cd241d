"""The same three autoscaler times as bench/autoscaler.py, measured on Ray Serve (the side-by-side
anchor). Ray is not a dependency of OpenEAS: ``bench/anchors.sh`` installs it in ``.bench/ray``, and
``bench/autoscaler.py`` runs this file with that interpreter in the same run (``--json``); alone:
``.bench/ray/bin/python bench/autoscaler_ray.py [--runs 5]`` (127.0.0.1 only; stops by itself).

The replica is a 1 s async handler (an instant answer for the prober), tuned as in the issue:
target 1 ongoing request, max 2, 0 s upscale delay, 0.1 s metrics interval, 0.2 s look-back.
The decision is the controller's "Upscaling" log line (its own clock, ms resolution), else the
first moment ``serve.status()`` (polled every 10 ms) shows a second replica; "answering" is the
first answer from the second replica (the replica id is in the body).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import glob
import json
import statistics
import threading
import time

import requests


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description="Ray Serve's autoscaler, timed as bench/autoscaler.py times OpenEAS's."
    )
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print the raw times as one JSON line")
    return ap


# The arguments first: --help answers without Ray Serve, which only the anchor's venv has.
ARGS = parser().parse_args() if __name__ == "__main__" else None
try:
    from ray import serve
    from starlette.requests import Request
except ImportError as exc:
    raise SystemExit(
        f"Ray Serve is missing ({exc}): run bench/anchors.sh, "
        "then .bench/ray/bin/python bench/autoscaler_ray.py"
    ) from None

PORT = 8123
URL = f"http://127.0.0.1:{PORT}/bench"
HANDLER_S = 1.0
TUNED = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 1,
    "upscale_delay_s": 0,
    "downscale_delay_s": 2,
    "metrics_interval_s": 0.1,
    "look_back_period_s": 0.2,
}


@serve.deployment(max_ongoing_requests=100)
class Bench:
    async def __call__(self, request: Request) -> str:
        if "fast" not in request.query_params:
            await asyncio.sleep(HANDLER_S)
        return serve.get_replica_context().replica_id.unique_id


def _upscale_logged_after(t0: float) -> float | None:
    """The controller's own time of its first "Upscaling" decision after t0 (its log, local time)."""
    for path in glob.glob("/tmp/ray/session_latest/logs/serve/controller_*.log"):
        with open(path, errors="replace") as f:
            for line in f:
                if "Upscaling Deployment" in line:
                    stamp = " ".join(line.split()[1:3])
                    t = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
                    if t >= t0:
                        return t
    return None


def _replicas() -> int:
    st = serve.status().applications["bench"].deployments["Bench"]
    return sum(st.replica_states.values())


def step(runs: int) -> tuple[list[float], list[float]]:
    serve.run(Bench.options(autoscaling_config=TUNED).bind(), name="bench", route_prefix="/bench")
    decisions, answering = [], []
    for _ in range(runs):
        deadline = time.time() + 60
        while _replicas() != 1 and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        first = requests.get(URL + "?fast=1", timeout=30).text
        stop = threading.Event()

        def client(stop: threading.Event = stop) -> None:
            with requests.Session() as s:
                while not stop.is_set():
                    s.get(URL, timeout=30)

        seen: dict[str, float] = {}

        def prober(stop: threading.Event = stop, first: str = first, seen: dict[str, float] = seen) -> None:
            with requests.Session() as s:
                while not stop.is_set():
                    rid = s.get(URL + "?fast=1", timeout=30).text
                    if rid != first and "second" not in seen:
                        seen["second"] = time.time()
                    time.sleep(0.01)

        t0 = time.time()
        threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
        threads.append(threading.Thread(target=prober, daemon=True))
        for t in threads:
            t.start()
        decided = None
        while "second" not in seen and time.time() < t0 + 30:
            if decided is None and _replicas() > 1:
                decided = time.time()
            time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join(10)
        logged = _upscale_logged_after(t0)
        if logged is not None:
            decided = logged
        if decided is not None:
            decisions.append(decided - t0)
        if "second" in seen:
            answering.append(seen["second"] - t0)
    serve.delete("bench")
    return decisions, answering


def from_zero(runs: int) -> list[float]:
    cfg = {**TUNED, "min_replicas": 0, "initial_replicas": 0, "downscale_delay_s": 1}
    serve.run(Bench.options(autoscaling_config=cfg).bind(), name="bench", route_prefix="/bench")
    times = []
    for _ in range(runs):
        deadline = time.time() + 90
        while _replicas() != 0 and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        t0 = time.monotonic()
        r = requests.get(URL, timeout=60)
        if r.status_code == 200:
            times.append(time.monotonic() - t0 - HANDLER_S)
    serve.delete("bench")
    return times


def main() -> None:
    args = ARGS or parser().parse_args()
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    try:
        decisions, answering = step(args.runs)
        zero = from_zero(args.runs)
    finally:
        serve.shutdown()
    if args.json:
        print(json.dumps({"decision": decisions, "second": answering, "zero": zero}))
        return

    def fmt(v: list[float]) -> str:
        return f"{statistics.median(v):.3f} (max {max(v):.3f}, n={len(v)})" if v else "-"

    print(f"Ray Serve, tuned {TUNED}")
    print(f"| load step → scale decision | {fmt(decisions)} |")
    print(f"| load step → 2nd replica answering | {fmt(answering)} |")
    print(f"| first request at 0 replicas (minus the 1 s handler) | {fmt(zero)} |")


if __name__ == "__main__":
    main()
