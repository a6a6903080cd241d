"""Cold start: the standby goals (issue 23; docs/cold-start.md), run by bench/coldstart.py.

- Promotion of a frozen standby to its first answered request (goal for the quickstart LLM,
  llama-server: ≤ 0.2 s): the scale call, then one request straight to the standby's port (the
  kernel queues it while the replica is frozen; it is answered once thawed).
- Under the autoscaler: a load step that needs a second replica (the test server with a known
  capacity and a cold start of seconds), with a standby and without: requests that waited > 1 s.

Every server and replica is local (127.0.0.1); each scenario gets a fresh data dir.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the rig lives in tests/ (shared with the e2e tests)

from tests.autoscale_load import TOKEN_SUFFIX, autoscaled_spec, predict_url  # noqa: E402
from tests.harness import Server, new_server, read_proc, service_spec, wait_for  # noqa: E402

FROZEN = {"replicas": 1, "mode": "frozen"}
# The load step: one replica serves 2 at a time, 0.2 s each (10 req/s); a cold start takes 3 s
# more than the process's own start (a model load); the step offers 16 req/s.
STEP_ARGS = "--latency-ms 200 --max-concurrency 2 --startup-delay-s 3"
STEP_RATE = 16.0
STEP_SCALING = {
    "metric": "concurrent_requests",
    "target": 2,
    "min_replicas": 1,
    "max_replicas": 2,
    "metric_window": "0.5s",
    "panic_window": 0,
    "scale_up_stabilization_window": 0,
    "scale_down_stabilization_window": "60s",
}
WAITED_S = 1.0


def _live(srv: Server, name: str) -> list[dict[str, Any]]:
    return [r for r in srv.client.describe(name)["replicas"] if not r.get("stopping")]


def _frozen_standby(srv: Server, name: str) -> dict[str, Any] | None:
    """The service's standby once it is frozen (its process state T), with one Ready replica."""
    reps = _live(srv, name)
    if sorted(r["phase"] for r in reps) != ["Ready", "Standby"]:
        return None
    sb = next(r for r in reps if r["phase"] == "Standby")
    proc = read_proc(sb["pid"]) if sb.get("pid") else None
    return sb if proc is not None and proc.state == "T" else None


def promotion(
    srv: Server, name: str, spec: dict[str, Any], ask: Callable[[int], bool], runs: int
) -> dict[str, float]:
    """Median seconds from the scale call to the frozen standby's first answer on its port, and
    the replica's own promotion_s (thaw, wake, probe), over ``runs`` promotions."""
    c = srv.client
    spec["metadata"]["standby"] = FROZEN
    c.deploy(spec)
    answered, promoted = [], []
    for _ in range(runs):
        c.scale(name, 1)
        sb = wait_for(lambda: _frozen_standby(srv, name), 240, what=f"{name}: a frozen standby")
        time.sleep(0.5)
        t0 = time.monotonic()
        c.scale(name, 2)
        ok = ask(sb["port"])
        answered.append(time.monotonic() - t0)
        assert ok, f"{name}: the promoted standby did not answer"
        row = wait_for(
            lambda sid=sb["id"]: next(
                (r for r in _live(srv, name) if r["id"] == sid and r["phase"] == "Ready"), None
            ),
            30,
            what="the promoted row",
        )
        promoted.append(float((row.get("cold_start") or {}).get("promotion_s") or 0.0))
    c.delete(name)
    c.wait_deleted(name, timeout_s=60)
    return {"answered_s": statistics.median(answered), "promotion_s": statistics.median(promoted)}


def _ask_testserver(port: int) -> bool:
    r = requests.get(f"http://127.0.0.1:{port}/health", timeout=30)
    return r.ok


def _ask_llm(port: int) -> bool:
    body = {"model": "smollm2", "prompt": "Hi", "max_tokens": 1}
    return requests.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60).ok


def testserver_promotion(work: Path, runs: int) -> dict[str, float]:
    srv = new_server(work / "ts").start()
    try:
        return promotion(srv, "ts", service_spec("ts"), _ask_testserver, runs)
    finally:
        srv.stop()


def llm_promotion(work: Path, runs: int) -> dict[str, float]:
    """The quickstart (examples/quickstart/service.json), its model in the server's local bucket."""
    data = work / "llm"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "model.py"), str(data / "oss")], check=True)
    srv = new_server(data).start()
    try:
        spec = json.loads((ROOT / "examples" / "quickstart" / "service.json").read_text())
        return promotion(srv, "quickstart", spec, _ask_llm, runs)
    finally:
        srv.stop()


def _open_loop(url: str, token: str, rate: float, duration_s: float) -> list[float | None]:
    """``rate`` requests a second for ``duration_s``; each one's seconds (None: it failed)."""
    out: list[float | None] = []
    lock = threading.Lock()

    def one() -> None:
        t0 = time.monotonic()
        try:
            ok = requests.post(url, data=b"{}", headers={"Authorization": token}, timeout=60).ok
        except requests.RequestException:
            ok = False
        with lock:
            out.append(time.monotonic() - t0 if ok else None)

    with ThreadPoolExecutor(max_workers=64) as pool:
        t0 = time.monotonic()
        for n in range(int(rate * duration_s)):
            time.sleep(max(0.0, t0 + n / rate - time.monotonic()))
            pool.submit(one)
    return out


def load_step(work: Path, standby: bool, step_s: float) -> dict[str, float]:
    """A load step that needs a second replica; the requests that waited longer than 1 s."""
    name = "step_sb" if standby else "step_cold"
    srv = new_server(work / name).start()
    try:
        c = srv.client
        spec = autoscaled_spec(name, STEP_SCALING, args=STEP_ARGS)
        if standby:
            spec["metadata"]["standby"] = FROZEN
        c.deploy(spec)
        if standby:
            wait_for(lambda: _frozen_standby(srv, name), 120, what="a frozen standby")
        else:
            c.wait_ready(name, 1, timeout_s=120)
        times = _open_loop(predict_url(srv, name), name + TOKEN_SUFFIX, STEP_RATE, step_s)
        ok = [t for t in times if t is not None]
        return {
            "requests": len(times),
            "failed": len(times) - len(ok),
            "waited": sum(t > WAITED_S for t in ok),
            "p99_s": sorted(ok)[max(0, int(len(ok) * 0.99) - 1)] if ok else 0.0,
        }
    finally:
        srv.stop()
