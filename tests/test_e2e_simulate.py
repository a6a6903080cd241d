"""The simulator agrees with reality (issue 24): a short trace replayed live against a real
server (real test-server replicas, the real autoscaler and gateway, short windows) and simulated
by ``openeas simulate --service`` with the cold starts that server measured. The issue's
tolerances: replica-seconds within 10%, cost within 5%, scale events within ±1.

The trace is 50 s (the issue asks for 10 minutes; a live run cannot use a fast clock and the
suite has a time budget): 10 s at 2 req/s, 20 s at 10 req/s, 20 s at 2 req/s, with a qps target
of 4 per replica: 1 replica, then 3, then 1 again."""

from __future__ import annotations

import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from typer.testing import CliRunner

from openeas.autoscaler.trace import read_trace
from openeas.cli.main import app
from tests.autoscale_load import TOKEN_SUFFIX, autoscaled_events, autoscaled_spec, predict_url
from tests.harness import new_server, stop_and_reap

pytestmark = pytest.mark.slow

PHASES = ((10, 2), (20, 10), (20, 2))  # (seconds, requests/s)
POLICY = {
    "metric": "qps",
    "target": 4,
    "min_replicas": 1,
    "max_replicas": 3,
    "metric_window": "3s",
    "panic_window": "1s",
    "scale_up_stabilization_window": "0s",
    "scale_down_stabilization_window": "6s",
}
CATALOG = {  # 3,600 RMB/h: 1 RMB per replica-second (the figures stay far above the 2-decimal rounding)
    "currency": "RMB",
    "instance_types": [{"name": "tiny", "cpu": 1, "memory_gb": 1, "price_per_hour": 3600.0}],
}


def _replay(url: str, token: str, counts: list[int], t0: float) -> list[int | None]:
    """Each second i of the trace: counts[i] requests, evenly spaced, from wall time t0 + i."""
    statuses: list[int | None] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            code: int | None = requests.post(
                url, data=b"{}", headers={"Authorization": token}, timeout=30
            ).status_code
        except requests.RequestException:
            code = None
        with lock:
            statuses.append(code)

    with ThreadPoolExecutor(max_workers=32) as pool:
        for i, n in enumerate(counts):
            for k in range(n):
                time.sleep(max(0.0, t0 + i + k / n - time.time()))
                pool.submit(one)
    return statuses


def test_a_live_replay_and_its_simulation_agree(tmp_path: Path) -> None:
    counts = [rate for seconds, rate in PHASES for _ in range(seconds)]
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(json.dumps(CATALOG))
    srv = new_server(tmp_path / "data")
    srv.extra_args.extend(["--catalog", str(catalog)])
    srv.start()
    try:
        c = srv.client
        spec = autoscaled_spec("replay", POLICY)
        spec["cloud"] = {"computing": {"instance_type": "tiny"}}
        c.deploy(spec)
        c.wait_ready("replay", 1, timeout_s=60)
        t0 = float(math.ceil(time.time()) + 1)
        trace = tmp_path / "trace.csv"
        trace.write_text(
            "timestamp,count,duration_s\n"
            + "".join(f"{t0 + i:.0f},{n},0.005\n" for i, n in enumerate(counts))
        )
        statuses = _replay(predict_url(srv, "replay"), "replay" + TOKEN_SUFFIX, counts, t0)
        end = t0 + len(counts)
        time.sleep(max(0.0, end - time.time()))
        report = c.request("GET", "/api/v1/cost/report", params={"service": "replay", "since": t0})
        live_seconds = sum(r["replica_seconds"] for r in report["rows"]) - (report["until"] - end)
        live_cost = live_seconds / 3600 * 3600.0
        live_events = len(autoscaled_events(srv, "replay"))
        assert statuses.count(200) == sum(counts), {s: statuses.count(s) for s in set(statuses)}

        spec_file = tmp_path / "replay.json"
        spec_file.write_text(json.dumps(spec))
        env = {"OPENEAS_DATA_DIR": str(srv.data_dir), "OPENEAS_SERVER": None, "OPENEAS_ADMIN_TOKEN": None}
        args = ["simulate", "-f", str(spec_file), "--trace", str(trace), "--service", "replay", "--capacity", "50",
                "--decide-every", "1", "--catalog", str(catalog), "--json"]  # fmt: skip
        r = CliRunner().invoke(app, args, env=env)
        assert r.exit_code == 0, r.output
        out = json.loads(r.output)
        [sim] = out["runs"]
        assert out["inputs"]["cold_starts_from"].startswith("replay's last")
        sim_seconds = sim["replica_seconds"]
        figures = (f"live {live_seconds:.1f} replica-s, {live_cost:.2f} RMB, {live_events} scale events; "
                   f"simulated {sim_seconds:.1f}, {sim['cost']:.2f}, {sim['scale_events']}")  # fmt: skip
        print(figures)
        # 1 replica for 50 s, 2 more for about 25 s: ~100 replica-seconds
        assert 80 < live_seconds < 130, figures
        assert abs(sim_seconds - live_seconds) <= 0.10 * live_seconds, figures
        assert abs(sim["cost"] - live_cost) <= 0.05 * live_cost, figures
        assert abs(sim["scale_events"] - live_events) <= 1, figures

        # The gateway's own counts of the replay, exported as a trace: every request, in its second
        exported = tmp_path / "exported.csv"
        r = CliRunner().invoke(
            app, ["trace", "--service", "replay", "--seconds", "120", "-o", str(exported)], env=env
        )
        assert r.exit_code == 0, r.output
        got = read_trace(exported.open(), str(exported))
        assert got.requests == sum(counts)
        assert t0 - 1 <= got.start <= t0 + 1 and got.seconds <= len(counts) + 2
        assert 0 < got.busy.sum() / got.requests < 1.0  # mean seconds in flight of a 'POST /'
        missing = CliRunner().invoke(app, ["trace", "--service", "nope"], env=env)
        assert missing.exit_code == 1 and "nope" in missing.output
    finally:
        stop_and_reap(srv)
