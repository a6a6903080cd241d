"""The stress test's load generator against wrk and locust, on one core, same target, same run:
``python bench/stress.py [--duration 4] [--locust /path/to/venv/bin/locust] [--no-anchors]``.

Target: nginx answering a fixed body (1 worker pinned to core 1), fast enough that the client
is always the limit. Each client is pinned to core 0:

- **openeas stress (open loop)**: the generator offers a rate for ``--duration`` s; a rate passes
  when the requests actually sent in the step are within 2% of it and every one was answered
  200. The ladder grows x1.15 from 1,000 req/s until two rates in a row fail (one stall of a
  shared machine is not the generator's limit); the table shows the highest that passed.
- **wrk** (closed loop, 1 thread, 64 connections): its maximum, the ceiling of a C client.
- **locust** (``FastHttpUser``, headless, 1 process, 64 users without wait): its maximum, over
  at least 8 s (its start and the users' spawn are inside its own average).

locust is not a dependency of OpenEAS: ``bench/anchors.sh`` installs it in ``.bench/locust``
(``--locust`` names another one). The run stops when it is missing, unless ``--no-anchors``.
All traffic stays on 127.0.0.1 and every run is bounded by ``--duration``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import anchors  # noqa: E402
from bench.gateway import NGINX, WRK, free_port, nginx_conf, wait_http  # noqa: E402

LOCUSTFILE = """
from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser

class Hit(FastHttpUser):
    wait_time = constant(0)

    @task
    def post(self):
        self.client.post("/", data=b"{}", headers={"Content-Type": "application/json"})
"""

# Run in a child process pinned to one core: one open-loop step at RATE for DURATION s.
GENERATE = """
import json, sys, uvloop
from openeas.stress.client import HttpTransport, build_requests
from openeas.kernel.clock import LOOP_CLOCK
from openeas.stress.generator import Generator
from openeas.stress.plan import Arrival

async def main(port, rate, duration):
    tr = HttpTransport("127.0.0.1", port, build_requests("POST", "127.0.0.1", port, "/", {}, [b"{}"]),
                       timeout_s=10)
    gen = Generator(tr, LOOP_CLOCK, 1, budget=10_000_000)
    await tr.warm(16)
    w = await gen.rate_step(rate, duration, Arrival.CONSTANT)
    await gen.drain(5)
    await tr.close()
    lat = w.record.latency
    print(json.dumps({"sent": w.sent / w.duration_s, "ok": w.record.ok / w.duration_s,
                      "failed": w.record.sent - w.record.ok, "p99_ms": lat.percentile_ms(99),
                      "connections": tr.connections}))

uvloop.run(main(int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])))
"""


def pinned(core: int, args: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *args] if shutil.which("taskset") else args


def openeas_max(port: int, duration: float) -> tuple[float, list[tuple[float, dict[str, float]]]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    rate, best, tried, failures = 1000.0, 0.0, [], 0
    while rate < 200_000 and failures < 2:
        out = subprocess.run(
            pinned(0, [sys.executable, "-c", GENERATE, str(port), str(rate), str(duration)]),
            capture_output=True, text=True, env=env, timeout=duration + 60, check=True,
        ).stdout  # fmt: skip
        r = json.loads(out)
        tried.append((rate, r))
        if passed(rate, r):
            best, failures = rate, 0
        else:
            failures += 1
        rate = round(rate * 1.15, -1)
    return best, tried


def passed(rate: float, r: dict[str, float]) -> bool:
    return r["sent"] >= 0.98 * rate and r["failed"] == 0


def wrk_max(port: int, duration: float) -> float:
    out = subprocess.run(
        pinned(0, [WRK, "-t1", "-c64", f"-d{max(1, round(duration))}s", f"http://127.0.0.1:{port}/"]),
        capture_output=True, text=True, timeout=duration + 30, check=True,
    ).stdout  # fmt: skip
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(m.group(1)) if m else 0.0


def locust_max(locust: str, port: int, duration: float, tmp: Path) -> float:
    lf = tmp / "locustfile.py"
    lf.write_text(LOCUSTFILE)
    prefix = tmp / "locust"
    subprocess.run(
        pinned(0, [locust, "-f", str(lf), "--headless", "-u", "64", "-r", "64",
                   "-t", f"{max(8, round(2 * duration))}s", "-H", f"http://127.0.0.1:{port}",
                   "--csv", str(prefix), "--only-summary", "--loglevel", "ERROR"]),
        capture_output=True, text=True, timeout=2 * duration + 90, cwd=tmp,
    )  # fmt: skip
    with open(f"{prefix}_stats.csv") as f:
        for row in csv.DictReader(f):
            if row["Name"] == "Aggregated":
                return float(row["Requests/s"])
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per run (default 4)")
    ap.add_argument("--locust", default=None, help="the locust command (default .bench/locust/bin/locust)")
    anchors.add_flag(ap)
    a = ap.parse_args()
    anchors.tool("nginx", "/usr/sbin/nginx")
    anchors.tool("wrk", "/usr/bin/wrk")
    locust = None if a.no_anchors else a.locust or anchors.venv_bin("locust", "locust")
    load0 = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        port = free_port()
        conf = nginx_conf(
            tmp, "target",
            f"server {{ listen 127.0.0.1:{port}; keepalive_requests 1000000; "
            "location / { default_type application/json; return 200 '{\"ok\":true}'; } }",
        )  # fmt: skip
        target = subprocess.Popen(pinned(1, [NGINX, "-c", str(conf), "-p", str(conf.parent)]))
        try:
            wait_http(port, "/")
            ours, tried = openeas_max(port, a.duration)
            wrk = wrk_max(port, a.duration)
            loc = locust_max(locust, port, a.duration, tmp) if locust else None
        finally:
            target.terminate()
            target.wait(10)
    print(
        f"target: nginx fixed body (1 worker, core 1); clients on core 0; {a.duration:g} s per run; "
        f"load average before: {load0}\n"
    )
    print("openeas stress open-loop ladder (offered → sent/s, ok/s, p99 ms):")
    for rate, r in tried:
        ok = "ok" if passed(rate, r) else "FAIL"
        print(f"  {rate:>9.0f} → {r['sent']:>9.0f} {r['ok']:>9.0f} {r['p99_ms'] or 0:>8.1f}  {ok}")
    print()
    print(f"{'client':<40} {'max req/s':>10} {'vs locust':>10}")
    rows = [("openeas stress (open loop, within 2%)", ours), ("wrk -t1 -c64 (closed loop)", wrk)]
    if loc is not None:
        rows.append(("locust FastHttpUser, 1 process, 64 users", loc))
    for name, v in rows:
        ratio = f"{v / loc:.2f}x" if loc else anchors.OFF
        print(f"{name:<40} {v:>10.0f} {ratio:>10}")


if __name__ == "__main__":
    main()
