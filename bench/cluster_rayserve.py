"""OpenEAS vs Ray Serve on one real Ray cluster of 3 nodes (issue 22's two anchors).

``python bench/cluster_rayserve.py [--replicas 30] [--scale-to 10] [--nodes 3] [--cpu 0.1] [--runs 1]``
(also ``python bench/cluster.py --ray-serve``). Minutes; 127.0.0.1 only; stops everything it started.

It starts its own Ray cluster the way ``openeas cluster up`` does (openeas.localcluster: ``ray
start --block`` for a head and ``--nodes - 1`` workers of 2, 2, 4 logical CPUs, a Ray temp dir and
ports of its own, no dashboard), one ``openeas server --runtime ray`` on it (SQLite store, its own
data dir), and a Ray Serve instance (HTTP proxy on the head only, 127.0.0.1, a free port) driven
from this process. Every replica asks for ``--cpu`` logical CPUs (0.1: 30 replicas take 3 of the
cluster's 8), nothing else, so that 30 fit on this 2-core machine; both sides spread them over the
nodes as their defaults do (OpenEAS: Ray's SPREAD; Ray Serve: its own spread).

The replica is the same trivial handler both ways: GET → ``ok``. OpenEAS runs it as a process (a
Python ``http.server`` on the replica's ``$PORT``, under its Ray actor); Ray Serve as a
deployment class whose ``__call__`` returns ``ok``.

1. **Time to N Ready** (``--replicas``): from the deploy call (OpenEAS ``POST /services``; Ray
   Serve ``serve.run`` of the application) to every replica Ready (OpenEAS: each replica's probe
   passed, then each answers a GET at its own address, counted in the time; Ray Serve:
   ``serve.run`` returned and ``serve.status()`` shows N RUNNING replicas). Goal: OpenEAS faster
   (Ray Serve is the anchor; beat it).
2. **Scale 1 → ``--scale-to``**: one Ready replica, then the decision (OpenEAS's scale call; Ray
   Serve's ``serve.run`` with the new ``num_replicas``) to all of them answering, as above. Goal:
   OpenEAS faster. Ray Serve's deployment keeps one version across the two ``serve.run`` calls
   (pinned; ``serve.run`` would otherwise give each call a random one and restart every
   replica), so that its scale is the in-place one a config deploy (``serve deploy``) makes.

The two sides run one after the other (never together), the side that goes first alternating
per run; each removes its replicas before the other starts. The machine is shared: only the ratio
of the two, measured in the same run, means anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

APP = "trivial"  # the service's and the Serve application's name
START_S = 60.0  # bound on the server's start, seconds
WAIT_S = 300.0  # bound on each measure (N Ready, scale), seconds
# The OpenEAS replica: a GET answers "ok" on $PORT (the replica's port, chosen on its node).
TRIVIAL = """
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.HTTPServer((os.environ["OPENEAS_REPLICA_HOST"], int(os.environ["PORT"])), H).serve_forever()
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=int, default=30, help="replicas for the time to N Ready")
    p.add_argument("--scale-to", type=int, default=10, help="the scale from 1 to this many")
    p.add_argument("--nodes", type=int, default=3, help="Ray nodes (head first: 2, 2, 4 logical CPUs)")
    p.add_argument("--cpu", type=float, default=0.1, help="logical CPUs each replica asks for")
    p.add_argument("--runs", type=int, default=1, help="runs of both sides (medians)")
    p.add_argument(
        "--up-timeout", type=float, default=600.0, help="bound on the Ray cluster's start, seconds"
    )
    return p


# ---- OpenEAS -----------------------------------------------------------------------------------


def spec(replicas: int, cpu: float) -> dict[str, Any]:
    command = f"exec {shlex.quote(sys.executable)} -c {shlex.quote(TRIVIAL)}"
    return {
        "metadata": {"name": APP, "instance": replicas, "cpu": cpu, "eas": {"termination_grace_period": 1}},
        "containers": [{"command": command, "port": 8000}],
    }


def start_server(data: Path, ray_address: str) -> tuple[subprocess.Popen[bytes], Any]:
    from openeas.localcluster import free_port
    from openeas.sdk import Client

    data.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "openeas.cli", "server", "--data-dir", str(data),
            "--port", str(free_port()), "--gateway-port", str(free_port()),
            "--runtime", "ray", "--ray-address", ray_address, "--replica-user", "none"]  # fmt: skip
    with open(data / "server.out", "ab") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )  # fmt: skip
    deadline = time.monotonic() + START_S
    while not (data / "server.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not start: {(data / 'server.out').read_text()[-2000:]}")
        time.sleep(0.1)
    info = json.loads((data / "server.json").read_text())
    return proc, Client(info["api_url"], info["admin_token"], gateway_url=info["gateway_url"])


def _answers(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=2) as r:
            return bool(r.read() == b"ok")
    except OSError:
        return False


def openeas_ready(client: Any, want: int, t0: float) -> tuple[float, Counter[str]]:
    """Seconds from ``t0`` to ``want`` Ready replicas that each answer at their address, and
    the replicas per Ray node."""
    from openeas.sdk.client import ready_count

    deadline = t0 + WAIT_S
    while time.monotonic() < deadline:
        detail = client.describe(APP)
        if ready_count(detail) >= want:
            ready = [r for r in detail["replicas"] if r.get("phase") == "Ready"]
            if all(_answers(r.get("host") or "127.0.0.1", r["port"]) for r in ready):
                return time.monotonic() - t0, Counter(str(r.get("node"))[:8] for r in ready)
        time.sleep(0.05)
    raise SystemExit(f"OpenEAS: {want} replicas not Ready within {WAIT_S:g} s: {client.describe(APP)}")


def openeas_remove(client: Any) -> None:
    client.delete(APP, force=True)
    client.wait_deleted(APP, timeout_s=WAIT_S)


def openeas_side(client: Any, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.monotonic()
    client.deploy(spec(args.replicas, args.cpu))
    ready_s, nodes = openeas_ready(client, args.replicas, t0)
    openeas_remove(client)
    client.deploy(spec(1, args.cpu))
    openeas_ready(client, 1, time.monotonic())
    t0 = time.monotonic()
    client.scale(APP, args.scale_to)
    scale_s, _ = openeas_ready(client, args.scale_to, t0)
    openeas_remove(client)
    return {"ready_s": ready_s, "scale_s": scale_s, "nodes": dict(nodes)}


# ---- Ray Serve ---------------------------------------------------------------------------------


def serve_side(args: argparse.Namespace) -> dict[str, Any]:
    from ray import serve

    @serve.deployment
    class Trivial:
        def __call__(self, request: Any) -> str:
            return "ok"

    def run(replicas: int) -> float:
        # One pinned version: a change of num_replicas is then Serve's in-place scale, as a config
        # deploy's is (serve.run gives each call a random version: a restart of every replica).
        opts = {"num_replicas": replicas, "ray_actor_options": {"num_cpus": args.cpu}}
        app = Trivial.options(**opts, version="bench", _internal=True).bind()
        t0 = time.monotonic()
        serve.run(app, name=APP, route_prefix=f"/{APP}")  # returns once the application is RUNNING
        deadline = t0 + WAIT_S
        while _serve_running(serve) < replicas:
            if time.monotonic() > deadline:
                raise SystemExit(f"Ray Serve: {replicas} replicas not RUNNING within {WAIT_S:g} s")
            time.sleep(0.05)
        return time.monotonic() - t0

    ready_s = run(args.replicas)
    _serve_remove(serve)
    run(1)
    scale_s = run(args.scale_to)
    _serve_remove(serve)
    return {"ready_s": ready_s, "scale_s": scale_s}


def _serve_running(serve: Any) -> int:
    app = serve.status().applications.get(APP)
    if app is None:
        return 0
    return sum(int(d.replica_states.get("RUNNING", 0)) for d in app.deployments.values())


def _serve_remove(serve: Any) -> None:
    serve.delete(APP)
    deadline = time.monotonic() + WAIT_S
    while APP in serve.status().applications and time.monotonic() < deadline:
        time.sleep(0.1)


# ---- the cluster and the run -------------------------------------------------------------------


@contextmanager
def ray_cluster(root: Path, nodes: int, timeout_s: float) -> Iterator[str]:
    """A Ray cluster as ``openeas cluster up`` starts one (its own temp dir and ports); every
    node stopped on the way out, with the gateways the server recorded in ``root/server``. Yields
    the head's address."""
    from openeas.localcluster import LocalCluster

    cluster = LocalCluster(root, nodes, timeout_s)
    cluster.data_dirs = [root / "server"]
    try:
        yield cluster._ray()  # openeas cluster up's own Ray start (nodes one after the other)
    finally:
        cluster.down()


def _timed(what: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    print(f"  {what} ...", flush=True)
    out = fn()
    shown = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in out.items())
    print(f"  {what}: {shown}", flush=True)
    return out


def main() -> None:
    args = parser().parse_args()
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    import ray
    from ray import serve

    from openeas.localcluster import free_port

    results: dict[str, list[dict[str, Any]]] = {"openeas": [], "serve": []}
    root = Path(tempfile.mkdtemp(prefix="bench-rayserve-"))
    print(
        f"Ray cluster of {args.nodes} nodes, replicas of cpu {args.cpu:g} each (logs in {root})", flush=True
    )
    with ray_cluster(root, args.nodes, args.up_timeout) as address:
        server, client = start_server(root / "server", address)
        try:
            ray.init(address=address, namespace="bench-rayserve", log_to_driver=False)
            serve.start(http_options={"host": "127.0.0.1", "port": free_port()}, proxy_location="HeadOnly")
            for run in range(args.runs):
                sides = [("openeas", lambda: openeas_side(client, args)), ("serve", lambda: serve_side(args))]
                for name, fn in sides if run % 2 == 0 else sides[::-1]:
                    results[name].append(_timed(f"run {run + 1}: {name}", fn))
        finally:
            if ray.is_initialized():
                serve.shutdown()
                ray.shutdown()
            server.terminate()
            server.wait(30)
    report(results, args)


def report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in results[side])

    rows = [(f"time to {args.replicas} Ready", "ready_s"), (f"scale 1 -> {args.scale_to}", "scale_s")]
    print(f"\n| measure (s, median of {args.runs}) | OpenEAS | Ray Serve 2.60 | OpenEAS / Ray Serve |")
    print("|---|---|---|---|")
    verdicts = []
    for label, key in rows:
        ours, anchor = med("openeas", key), med("serve", key)
        print(f"| {label} | {ours:.2f} | {anchor:.2f} | {ours / anchor:.2f} |")
        verdicts.append(f"{label}: {'MET' if ours < anchor else 'MISSED'} ({ours / anchor:.2f}x Ray Serve)")
    print(
        f"OpenEAS replicas per Ray node (first run, {args.replicas} Ready): {results['openeas'][0]['nodes']}"
    )
    print("verdict: " + "; ".join(verdicts) + " (goal: faster than Ray Serve on the same cluster)")


if __name__ == "__main__":
    main()
