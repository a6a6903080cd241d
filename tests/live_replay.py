"""A request trace replayed live against a real server and simulated by ``openeas simulate``
(issue 24: "the simulator agrees with reality"). Shared by tests/test_e2e_simulate.py (50 s) and
bench/simulate_replay.py (``--minutes 10``, the issue's form).

The server is real: test-server replicas, the real autoscaler and gateway, the policy's windows
shortened (:data:`POLICY`: a qps target of 4 per replica, 1..3 replicas). The trace is sent from
wall time ``t0`` (each second's requests evenly spaced); the live figures come from the meter
(``/api/v1/cost/report`` since ``t0``, less what was billed after the trace's end) and the
service's ``Autoscaled`` events; the simulated ones from ``openeas simulate --service`` with the
cold starts that server measured, ``--capacity 50`` and ``--decide-every 1``. The catalog prices a
replica at 3,600 RMB/h (1 RMB a replica-second: far above the 2-decimal rounding).
Tolerances (the issue's): replica-seconds within 10%, cost within 5%, scale events within ±1.
Targets 127.0.0.1 only; every request has a 30 s timeout, so a replay stops by itself.
"""

from __future__ import annotations

import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from typer.testing import CliRunner

from openeas.cli.main import app
from tests.autoscale_load import TOKEN_SUFFIX, autoscaled_events, autoscaled_spec, predict_url
from tests.harness import Server, new_server

SERVICE = "replay"
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
PRICE_PER_HOUR = 3600.0  # RMB: 1 RMB per replica-second
CATALOG = {
    "currency": "RMB",
    "instance_types": [{"name": "tiny", "cpu": 1, "memory_gb": 1, "price_per_hour": PRICE_PER_HOUR}],
}
TOLERANCE_SECONDS = 0.10  # of the live replica-seconds
TOLERANCE_COST = 0.05  # of the live cost
TOLERANCE_EVENTS = 1  # scale events, either way
# The bench's shape, in tenths of the trace: (tenths, requests/s): 1 replica, 3, 1, 2, 1, 3.
SHAPE = ((1, 2), (2, 10), (2, 2), (2, 6), (2, 2), (1, 10))


def counts_of(phases: tuple[tuple[int, int], ...]) -> list[int]:
    """Requests in each second of ``phases`` ((seconds, requests/s), …)."""
    return [rate for seconds, rate in phases for _ in range(seconds)]


def shaped(seconds: int) -> list[int]:
    """:data:`SHAPE` stretched over ``seconds`` (≥ 10): a tenth is ``seconds // 10`` seconds."""
    if seconds < 10:
        raise ValueError(f"seconds: {seconds}; the shape needs at least 10")
    unit = seconds // 10
    return counts_of(tuple((tenths * unit, rate) for tenths, rate in SHAPE))


@dataclass(frozen=True)
class Figures:
    t0: float  # epoch seconds the trace began
    requests: int
    ok: int  # answered 200
    live_seconds: float  # billed replica-seconds over the trace
    live_cost: float  # RMB
    live_events: int
    sim_seconds: float
    sim_cost: float
    sim_events: int
    cold_starts_from: str

    def checks(self) -> list[tuple[str, bool, str]]:
        """(what, within the tolerance, the figures) for each of the issue's three comparisons."""
        ds = abs(self.sim_seconds - self.live_seconds)
        dc = abs(self.sim_cost - self.live_cost)
        de = abs(self.sim_events - self.live_events)
        return [
            ("replica-seconds", ds <= TOLERANCE_SECONDS * self.live_seconds,
             f"live {self.live_seconds:.1f}, simulated {self.sim_seconds:.1f} "
             f"({_rel(ds, self.live_seconds)}; tolerance 10%)"),
            ("cost (RMB)", dc <= TOLERANCE_COST * self.live_cost,
             f"live {self.live_cost:.2f}, simulated {self.sim_cost:.2f} ({_rel(dc, self.live_cost)}; tolerance 5%)"),
            ("scale events", de <= TOLERANCE_EVENTS,
             f"live {self.live_events}, simulated {self.sim_events} (difference {de}; tolerance ±1)"),
        ]  # fmt: skip

    def line(self) -> str:
        return (f"live {self.live_seconds:.1f} replica-s, {self.live_cost:.2f} RMB, {self.live_events} scale events; "
                f"simulated {self.sim_seconds:.1f}, {self.sim_cost:.2f}, {self.sim_events}")  # fmt: skip


def _rel(d: float, base: float) -> str:
    return f"{d / base * 100:.1f}%" if base else "n/a"


def start_server(workdir: Path) -> Server:
    """A server with :data:`CATALOG` and the service deployed, its one replica Ready."""
    catalog = workdir / "catalog.yaml"
    catalog.write_text(json.dumps(CATALOG))
    srv = new_server(workdir / "data")
    srv.extra_args.extend(["--catalog", str(catalog)])
    srv.start()
    srv.client.deploy(replay_spec())
    srv.client.wait_ready(SERVICE, 1, timeout_s=60)
    return srv


def replay_spec() -> dict[str, Any]:
    spec = autoscaled_spec(SERVICE, POLICY)
    spec["cloud"] = {"computing": {"instance_type": "tiny"}}
    return spec


def send(url: str, token: str, counts: list[int], t0: float) -> tuple[list[int | None], list[float]]:
    """Each second i of the trace: counts[i] requests, evenly spaced, from wall time t0 + i.
    Their statuses, and the wall times they went out (a loaded machine sends some late)."""
    statuses: list[int | None] = []
    sent_at: list[float] = []
    lock = threading.Lock()

    def one() -> None:
        with lock:
            sent_at.append(time.time())
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
    return statuses, sent_at


def arrivals_per_second(sent_at: list[float], t0: float) -> list[int]:
    """The requests that went out in each whole second from ``t0``: the trace that was replayed."""
    seconds = [max(0, int(t - t0)) for t in sent_at]
    counts = [0] * (max(seconds, default=-1) + 1)
    for i in seconds:
        counts[i] += 1
    return counts


def cli_env(srv: Server) -> dict[str, str | None]:
    return {"OPENEAS_DATA_DIR": str(srv.data_dir), "OPENEAS_SERVER": None, "OPENEAS_ADMIN_TOKEN": None}


def replay(srv: Server, workdir: Path, counts: list[int]) -> Figures:
    """Replay ``counts`` live against ``srv`` (from :func:`start_server`), then simulate the same
    trace with the cold starts ``srv`` measured; the figures of both."""
    t0 = float(math.ceil(time.time()) + 1)
    statuses, sent_at = send(predict_url(srv, SERVICE), SERVICE + TOKEN_SUFFIX, counts, t0)
    # The simulation replays what was sent, second by second: on a loaded machine some requests go
    # out a little after their planned second, and the live autoscaler saw them there.
    trace = workdir / "trace.csv"
    trace.write_text(
        "timestamp,count,duration_s\n"
        + "".join(f"{t0 + i:.0f},{n},0.005\n" for i, n in enumerate(arrivals_per_second(sent_at, t0)))
    )
    end = t0 + len(counts)
    time.sleep(max(0.0, end - time.time()))
    report = srv.client.request("GET", "/api/v1/cost/report", params={"service": SERVICE, "since": t0})
    # The meter bills up to `until`; after the trace's end one replica runs (min_replicas 1).
    live_seconds = sum(r["replica_seconds"] for r in report["rows"]) - (report["until"] - end)
    live_events = len(autoscaled_events(srv, SERVICE))

    spec_file = workdir / "replay.json"
    spec_file.write_text(json.dumps(replay_spec()))
    args = ["simulate", "-f", str(spec_file), "--trace", str(trace), "--service", SERVICE, "--capacity", "50",
            "--decide-every", "1", "--catalog", str(workdir / "catalog.yaml"), "--json"]  # fmt: skip
    r = CliRunner().invoke(app, args, env=cli_env(srv))
    if r.exit_code != 0:
        raise RuntimeError(f"openeas simulate failed: {r.output}")
    out = json.loads(r.output)
    [sim] = out["runs"]
    return Figures(
        t0=t0,
        requests=sum(counts),
        ok=statuses.count(200),
        live_seconds=live_seconds,
        live_cost=live_seconds / 3600 * PRICE_PER_HOUR,
        live_events=live_events,
        sim_seconds=float(sim["replica_seconds"]),
        sim_cost=float(sim["cost"]),
        sim_events=int(sim["scale_events"]),
        cold_starts_from=str(out["inputs"]["cold_starts_from"]),
    )
