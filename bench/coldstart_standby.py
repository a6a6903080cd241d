"""Cold start: the standby goals (issue 23; docs/cold-start.md), run by bench/coldstart.py.

- Promotion of a frozen standby to its first answered request (goal for the quickstart LLM,
  llama-server: ≤ 0.2 s), through the gateway: a service at 0 replicas with one frozen standby,
  a request held by the gateway, then the scale call to 1; against the same request answered
  right after (steady state), and the breakdown (events, the replica's promotion_s).
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
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the rig lives in tests/ (shared with the e2e tests)

from tests.autoscale_load import TOKEN_SUFFIX, autoscaled_spec, predict_url  # noqa: E402
from tests.harness import Server, new_server, read_proc, service_spec, stop_and_reap, wait_for  # noqa: E402

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


def _frozen_standby(srv: Server, name: str, ready: int = 1) -> dict[str, Any] | None:
    """The service's standby once it is frozen (its process state T), with ``ready`` Ready replicas."""
    reps = _live(srv, name)
    if sorted(r["phase"] for r in reps) != sorted(["Ready"] * ready + ["Standby"]):
        return None
    sb = next(r for r in reps if r["phase"] == "Standby")
    proc = read_proc(sb["pid"]) if sb.get("pid") else None
    return sb if proc is not None and proc.state == "T" else None


def _event_wall(srv: Server, name: str, reason: str, since: float) -> float | None:
    """Epoch seconds of the service's newest ``reason`` event at or after ``since`` (None: none)."""
    for e in srv.client.events(name, limit=20):
        if e["reason"] == reason:
            t = datetime.fromisoformat(e["time"]).timestamp()
            if t >= since:
                return t
    return None


class Ask:
    """One request to the service through the gateway (``path`` under its endpoint, with its
    token); True when answered 2xx."""

    def __init__(self, srv: Server, name: str, method: str, path: str, body: dict[str, Any] | None) -> None:
        info = srv.client.call_info(name)
        self.endpoint, self.token = info["endpoint"], info["token"]
        self.method, self.path, self.body = method, path, body

    def gateway(self) -> bool:
        headers = {"Authorization": self.token}
        url = self.endpoint + self.path
        return requests.request(self.method, url, json=self.body, headers=headers, timeout=60).ok


def _timed(fn: Callable[[], bool]) -> tuple[bool, float]:
    """Whether ``fn`` succeeded, and when it returned (``time.monotonic``)."""
    ok = fn()
    return ok, time.monotonic()


def promote_once(srv: Server, name: str, ask: Ask) -> dict[str, float]:
    """One promotion from 0 Ready replicas, the user's whole path: a request is sent through the
    gateway (it is held: nothing is routed yet), then the scale call to 1 (the reconciler's pass,
    the thaw, the probe, the routing push, the gateway's release, the answer). Seconds from the
    scale call to the answer, to the ``Scaled`` and ``Promoted`` events (the store's wall clock),
    the replica's own ``promotion_s`` (promotion to passing probe), and the same request answered
    right after by the promoted replica (the steady-state anchor)."""
    c = srv.client
    c.scale(name, 0)
    wait_for(lambda: _frozen_standby(srv, name, ready=0), 240, what=f"{name}: a frozen standby")
    time.sleep(0.5)  # the Ready replica's drain and the refill settle
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(_timed, ask.gateway)
        time.sleep(0.05)  # the request is held at the gateway before the scale call
        t0, w0 = time.monotonic(), time.time()
        c.scale(name, 1)
        called = time.monotonic() - t0
        ok, end = held.result()
    assert ok, f"{name}: the promoted standby did not answer"
    steady0 = time.monotonic()
    assert ask.gateway(), f"{name}: the steady-state request failed"
    steady = time.monotonic() - steady0
    ready = lambda: next((r for r in _live(srv, name) if r["phase"] == "Ready"), None)  # noqa: E731
    row = wait_for(ready, 30, what="the promoted replica Ready")
    scaled_at = _event_wall(srv, name, "Scaled", w0)
    promoted_at = _event_wall(srv, name, "Promoted", w0)
    return {
        "answered_s": end - t0,
        "steady_s": steady,
        "scale_call_s": called,
        "scaled_event_s": (scaled_at - w0) if scaled_at is not None else float("nan"),
        "promoted_event_s": (promoted_at - w0) if promoted_at is not None else float("nan"),
        "promotion_s": float((row.get("cold_start") or {}).get("promotion_s") or 0.0),
    }


def promotion(srv: Server, name: str, spec: dict[str, Any], runs: int, **ask_args: Any) -> dict[str, Any]:
    """Medians over ``runs`` promotions (see :func:`promote_once`) of a service with one frozen
    standby and no other replica, plus the slowest answer (``answered_max_s``) and steady request
    (``steady_max_s``); ``ask_args``: the request (see :class:`Ask`)."""
    c = srv.client
    spec["metadata"]["standby"] = FROZEN
    spec["metadata"]["instance"] = 0
    spec["token"] = f"{name}{TOKEN_SUFFIX}"
    c.deploy(spec)
    ask = Ask(srv, name, **ask_args)
    got = [promote_once(srv, name, ask) for _ in range(runs)]
    c.delete(name)
    c.wait_deleted(name, timeout_s=60)
    out: dict[str, Any] = {k: statistics.median(g[k] for g in got) for k in got[0]}
    out["answered_max_s"] = max(g["answered_s"] for g in got)
    out["steady_max_s"] = max(g["steady_s"] for g in got)
    out["runs"] = len(got)
    out["each"] = [(g["answered_s"], g["promoted_event_s"], g["steady_s"]) for g in got]
    return out


def testserver_promotion(work: Path, runs: int) -> dict[str, Any]:
    srv = new_server(work / "ts").start()
    try:
        return promotion(srv, "ts", service_spec("ts"), runs, method="GET", path="/health", body=None)
    finally:
        stop_and_reap(srv)


def llm_promotion(work: Path, runs: int) -> dict[str, Any]:
    """The quickstart (examples/quickstart/service.json), its model in the server's local bucket;
    one completion of one token."""
    data = work / "llm"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "model.py"), str(data / "oss")], check=True)
    srv = new_server(data).start()
    try:
        spec = json.loads((ROOT / "examples" / "quickstart" / "service.json").read_text())
        body = {"model": "smollm2", "prompt": "Hi", "max_tokens": 1}
        return promotion(srv, "quickstart", spec, runs, method="POST", path="/v1/completions", body=body)
    finally:
        stop_and_reap(srv)


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
        stop_and_reap(srv)
