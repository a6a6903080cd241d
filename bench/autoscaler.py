"""Autoscaler reaction times through a real `openeas server` (127.0.0.1 only; stops by itself,
about a minute): ``python bench/autoscaler.py [--runs 5]``.

The replica is the built-in test server with a 1 s handler (``--latency-ms 1000``), as in the
issue's Ray Serve comparison. The policy is tuned as Ray's was: 0 s up window, 0.2 s metric
window, the latest reading for bursts (panic window 0), concurrency target 1, max 2.

1. **load step → scale decision**: 4 clients start sending 1 s requests at t0; the decision is the
   ``Autoscaled`` event's time (written when decide() returned).
2. **load step → 2nd replica answering**: the first answer the new replica gives through the
   gateway (an instant ``GET /v1/models`` is sent every 10 ms; the replica's own ``/metrics``
   counts it), and, for reference, its Ready time.
3. **first request at 0 replicas**: a service scaled to zero (grace 1 s) gets one request; its
   answer time minus the 1 s handler.

The Ray Serve 2.60 column is measured in the same run, after OpenEAS's: ``bench/autoscaler_ray.py``
with the interpreter of ``.bench/ray`` (``bench/anchors.sh`` makes it; Ray is not a dependency of
this project). The run stops when it is missing; ``--no-anchors`` drops the column. Prints a
Markdown table with a verdict per goal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the rig lives in tests/ (shared with the e2e tests)

from bench import anchors  # noqa: E402
from tests.autoscale_load import TOKEN_SUFFIX, autoscaled_spec, predict_url  # noqa: E402
from tests.harness import Server, kill_gateway, new_server, wait_for  # noqa: E402

HANDLER_S = 1.0
GOAL = {"decision": 0.1, "second": 0.5, "zero": 0.2}  # issue 20: keep what was won
TUNED = {
    "metric": "concurrent_requests",
    "target": 1,
    "min_replicas": 1,
    "max_replicas": 2,
    "metric_window": "0.2s",
    "panic_window": 0,  # the latest reading: a burst is acted on at the next decision
    "scale_up_stabilization_window": 0,
    "scale_down_stabilization_window": "2s",
}


def _t(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def _events(srv: Server, name: str, reason: str, after: float) -> list[dict[str, Any]]:
    return [
        e for e in srv.client.events(name, limit=10_000) if e["reason"] == reason and _t(e["time"]) >= after
    ]


def step(srv: Server, runs: int) -> tuple[list[float], list[float], list[float]]:
    name = "bench_step"
    c = srv.client
    c.deploy(autoscaled_spec(name, TUNED, args=f"--latency-ms {int(HANDLER_S * 1000)}"))
    c.wait_ready(name, 1, timeout_s=60)
    url, token = predict_url(srv, name), name + TOKEN_SUFFIX
    decisions, answering, ready = [], [], []
    for _ in range(runs):
        wait_for(
            lambda: len((d := c.describe(name))["replicas"]) == 1 and d["ready_replicas"] == 1,
            60,
            what="back to one replica",
        )
        time.sleep(1.0)  # the metric window forgets the last run
        first = c.describe(name)["replicas"][0]["id"]
        stop = threading.Event()

        failed: list[str] = []  # requests that got no answer: printed, not a thread's traceback

        def client(stop: threading.Event = stop, failed: list[str] = failed) -> None:
            with requests.Session() as s:
                while not stop.is_set():
                    try:
                        s.post(url, data=b"{}", headers={"Authorization": token}, timeout=30)
                    except requests.RequestException as err:
                        failed.append(repr(err))

        def prober(stop: threading.Event = stop, failed: list[str] = failed) -> None:
            # an instant request every 10 ms: the 2nd replica's first answer comes right after it
            # is routed (the 1 s requests of the 4 clients would arrive only when one finishes)
            with requests.Session() as s:
                while not stop.is_set():
                    try:
                        s.get(url + "/v1/models", headers={"Authorization": token}, timeout=30)
                    except requests.RequestException as err:
                        failed.append(repr(err))
                    time.sleep(0.01)

        t0 = time.time()
        threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
        threads.append(threading.Thread(target=prober, daemon=True))
        for t in threads:
            t.start()
        second_at = None
        deadline = t0 + 30
        port = None
        while second_at is None and time.time() < deadline:
            if port is None:
                new = [r for r in c.describe(name)["replicas"] if r["id"] != first and r["phase"] == "Ready"]
                port = new[0]["port"] if new else None
            if port is not None:
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                if 'endpoint="/v1/models"' in text:
                    second_at = time.time()
            time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join(10)
        if failed:
            print(f"  {len(failed)} requests got no answer during the step, the first: {failed[0]}")
        up = _events(srv, name, "Autoscaled", t0)
        rdy = [e for e in _events(srv, name, "Ready", t0)]
        if up:
            decisions.append(_t(up[0]["time"]) - t0)
        if rdy:
            ready.append(_t(rdy[0]["time"]) - t0)
        if second_at is not None:
            answering.append(second_at - t0)
    c.delete(name)
    c.wait_deleted(name, timeout_s=60)
    return decisions, answering, ready


def from_zero(srv: Server, runs: int) -> tuple[list[float], list[int]]:
    name = "bench_zero"
    c = srv.client
    policy = {
        **TUNED,
        "min_replicas": 0,
        "scale_to_zero_grace": "1s",
        "scale_down_stabilization_window": "1s",
    }
    c.deploy(autoscaled_spec(name, policy, args=f"--latency-ms {int(HANDLER_S * 1000)}"))
    url, token = predict_url(srv, name), name + TOKEN_SUFFIX
    times, codes = [], []
    for _ in range(runs):
        wait_for(
            lambda: (d := c.describe(name))["desired_replicas"] == 0 and not d["replicas"],
            60,
            what="zero replicas",
        )
        t0 = time.monotonic()
        r = requests.post(url, data=b"{}", headers={"Authorization": token}, timeout=60)
        codes.append(r.status_code)
        if r.status_code == 200:
            times.append(time.monotonic() - t0 - HANDLER_S)
    c.delete(name)
    c.wait_deleted(name, timeout_s=60)
    return times, codes


def ray_serve(python: str, runs: int) -> dict[str, list[float]]:
    """The same three times on Ray Serve (bench/autoscaler_ray.py under the anchor's interpreter)."""
    out = subprocess.run(
        [python, str(ROOT / "bench" / "autoscaler_ray.py"), "--runs", str(runs), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"the Ray Serve anchor failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    times: dict[str, list[float]] = json.loads(out.stdout.strip().splitlines()[-1])
    return times


def verdict(values: list[float], goal: float) -> str:
    if not values:
        return "no data: missed"
    return "met" if statistics.median(values) <= goal else "missed"


def _fmt(values: list[float]) -> tuple[str, str]:
    if not values:
        return "-", "-"
    return f"{statistics.median(values):.3f}", f"{max(values):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    anchors.add_flag(ap)
    args = ap.parse_args()
    ray_python = None if args.no_anchors else anchors.venv_bin("ray")
    tmp = Path(tempfile.mkdtemp(prefix="openeas-bench-as-"))
    srv = new_server(tmp / "data").start()
    try:
        decisions, answering, ready = step(srv, args.runs)
        zero, codes = from_zero(srv, args.runs)
    finally:
        srv.stop()
        kill_gateway(srv.data_dir)
        shutil.rmtree(tmp, ignore_errors=True)
    ray = ray_serve(ray_python, args.runs) if ray_python else None
    rows = [
        ("load step → scale decision", decisions, "decision"),
        ("load step → 2nd replica answering", answering, "second"),
        ("load step → 2nd replica Ready (reference)", ready, None),
        ("first request at 0 replicas (minus the 1 s handler)", zero, "zero"),
    ]
    print(f"runs: {args.runs}; test server, 1 s handler; tuned policy {TUNED}")
    print()
    print(
        "| measure (s) | OpenEAS p50 | OpenEAS max | goal | verdict "
        "| Ray Serve p50 (same run) | OpenEAS p50 / Ray |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, values, key in rows:
        p50, worst = _fmt(values)
        goal = f"≤ {GOAL[key]}" if key else "-"
        met = verdict(values, GOAL[key]) if key else "-"
        theirs = ray.get(key, []) if ray is not None and key else []
        anchor = _fmt(theirs)[0] if ray is not None else anchors.OFF
        ratio = (
            f"{statistics.median(values) / statistics.median(theirs):.2f}"
            if values and theirs and statistics.median(theirs) > 0
            else "-"
        )
        print(f"| {label} | {p50} | {worst} | {goal} | {met} | {anchor} | {ratio} |")
    print()
    print(f"first requests at 0 replicas: HTTP {codes}")


if __name__ == "__main__":
    main()
