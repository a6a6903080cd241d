"""The local cluster end to end (``openeas cluster up/down``): real Ray nodes (``ray start``),
real PostgreSQL, Redis, an active and a standby server, two gateways and the TCP balancer.

First, without a cluster: an ``up`` that fails, or is stopped while it comes up, stops every part
it had started. Then ONE cluster for the rest of the module (it takes minutes to come up):

- placement: 6 replicas of ``cpu: 1`` on nodes of 2, 2 and 4 logical CPUs land where Ray puts
  them, never more on a node than its CPUs (``describe --json`` names each replica's node), and
  answer through the balancer and through each gateway; a ``gpu: 1`` spec stays Pending with an
  ``Unschedulable`` event naming the short resource;
- the behaviour suite of tests/behaviour.py, as embedded: deploy from EAS JSON, scale, rolling
  update, a group's weight change, a stress test run by the server;
- kill -9 of the active server under load through the balancer, with async requests queued and
  in flight: the standby takes over (goal 5 s, bounded at 10 s: missed under load), adopts the
  same replicas (by Ray actor name),
  no request fails and every async request is answered exactly once;
- kill -9 of one of the two gateways behind the balancer under load: >= 0.99 succeed;
- a Ray worker node SIGKILLed under load of 2 services of 3 replicas: their replicas start
  again on the other nodes, >= 0.999 of the requests succeed, the time to full strength printed;
- ``cluster down`` leaves no process behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from openeas import localcluster
from openeas.localcluster import PARTS_FILE, LocalCluster
from openeas.sdk.client import Client
from tests import behaviour
from tests.harness import alive, service_spec, steady_load, wait_for

pytest.importorskip("ray", reason="ray is not installed (pip install 'openeas[ray]')")
if not shutil.which("initdb") and not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
    pytest.skip("postgresql is not installed (scripts/setup.sh installs it)", allow_module_level=True)
if not shutil.which("redis-server"):
    pytest.skip("redis is not installed (scripts/setup.sh installs it)", allow_module_level=True)

pytestmark = pytest.mark.slow

NODES = 3  # a head of 2 CPUs and workers of 2 and 4 (localcluster.NODE_CPUS)
SPREAD = 6  # replicas of cpu: 1 each, on 2 + 2 + 4 logical CPUs
# The services loaded through a server kill, a gateway kill and a node loss, 3 replicas each: the
# placement test's (scaled to 3, cpu 1 each: they fit on the 2 + 2 CPUs left after any node loss)
# and the behaviour suite's (scaled to 3). Every Ray actor started costs seconds of CPU here.
HA = ("spread", "svc")
HA_REPLICAS = 3
# kill -9 of the active to the standby's API answering, s. The goal is 5 s: measured
# 1.9-4.9 s at load average <= 15, but 5.2-6.1 s at 20-45 with 8 replicas and an async service
# (the new active's components take 1.7-3.3 s to start there); bounded here at twice the goal,
# the goal missed under load (docs/cluster.md)
TAKEOVER_GOAL_S = 5.0
TAKEOVER_BOUND_S = 10.0
NODE_LOSS_SLO = 0.999  # success ratio through a node loss (Knative's autoscale SLO)
GATEWAY_LOSS_SLO = 0.99  # success ratio through a gateway's kill -9 (Knative's activator: 0.90)


def _recorded(root: Path) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = json.loads((root / PARTS_FILE).read_text())
    return parts


def _pids_mentioning(text: str) -> list[int]:
    """Live processes whose command line names ``text`` (a folder only this test made)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and alive(int(entry.name)):
            out.append(int(entry.name))
    return out


def test_an_up_that_fails_midway_stops_what_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = LocalCluster(tmp_path, nodes=1, timeout_s=60)

    def no_ray() -> str:
        raise RuntimeError("Ray did not start")

    monkeypatch.setattr(cluster, "_ray", no_ray)
    try:
        with pytest.raises(RuntimeError, match="Ray did not start"):
            cluster.up()
        started = {p["name"]: p["pid"] for p in _recorded(tmp_path)}
        assert set(started) == {"postgres", "redis"}
    finally:
        cluster.down()
    assert not [pid for pid in started.values() if alive(pid)]
    assert not _pids_mentioning(str(cluster.scratch)), "a PostgreSQL process outlived the failed up"
    assert not cluster.scratch.exists()


@pytest.mark.parametrize(
    ("supervisor_killed", "error"),
    [
        pytest.param(False, "stopped while coming up", id="sigterm-to-the-supervisor"),
        # the supervisor gone (kill -9): `down` stops the parts it recorded in parts.json
        pytest.param(True, None, id="supervisor-killed"),
    ],
)
def test_down_while_coming_up_stops_what_was_started(
    tmp_path: Path, supervisor_killed: bool, error: str | None
) -> None:
    argv = [sys.executable, "-m", "openeas.localcluster", "--dir", str(tmp_path), "--nodes", "2"]
    sup = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    (tmp_path / localcluster.PID_FILE).write_text(f"{sup.pid}\n")
    try:
        # stopped once Ray's head is being started: PostgreSQL and Redis run by then
        wait_for(lambda: (tmp_path / PARTS_FILE).exists() and "ray-node0" in (tmp_path / PARTS_FILE).read_text(), 60,
                 what="the supervisor starting Ray")  # fmt: skip
        started = {p["name"]: p["pid"] for p in _recorded(tmp_path)}
        if supervisor_killed:
            sup.kill()
            sup.wait()
        t0 = time.monotonic()
        assert localcluster.down(tmp_path)
        took = time.monotonic() - t0
    finally:
        if sup.poll() is None:
            os.killpg(sup.pid, signal.SIGKILL)
    assert sup.poll() is not None
    assert not [name for name, pid in started.items() if alive(pid)]
    if error is not None:
        assert (tmp_path / localcluster.ERROR_FILE).read_text().strip() == error
    print(f"down while coming up: {took:.1f} s, parts stopped: {sorted(started)}")


def _cli(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "openeas.cli", *args], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("cluster")
    t0 = time.monotonic()
    up = _cli("cluster", "up", "--nodes", str(NODES), "--dir", str(root), "--timeout", "360", timeout=420)
    try:
        assert up.returncode == 0, up.stderr
        info = json.loads(up.stdout)
        print(f"cluster up: {time.monotonic() - t0:.1f} s")
        yield root, info
    finally:
        if (root / localcluster.PID_FILE).exists():
            localcluster.down(root)


def _client(info: dict[str, Any], api: str = "api_url") -> Client:
    return Client(info[api], info["admin_token"], timeout_s=60)


def test_cluster_json_names_every_part(cluster: tuple[Path, dict[str, Any]]) -> None:
    _, info = cluster
    assert set(info) >= {"api_url", "admin_token", "gateway_urls", "balancer_url", "ray_address",
                         "store_url", "queue_url"}  # fmt: skip
    assert len(info["gateway_urls"]) == 2
    assert info["store_url"].startswith("postgresql://") and info["queue_url"].startswith("redis://")
    assert all(u.startswith("http://127.0.0.1:") for u in [info["balancer_url"], *info["gateway_urls"]])


def test_every_gateway_is_registered_live_and_the_second_shares_no_data_dir(
    cluster: tuple[Path, dict[str, Any]],
) -> None:
    root, info = cluster
    urls = {*info["gateway_urls"], info["standby_gateway_url"]}
    view = wait_for(
        lambda: (v := _client(info).gateways())["live"] >= len(urls) and v, 10, what="live gateways"
    )
    live = {g["url"]: g for g in view["gateways"] if g["live"]}
    assert urls <= set(live), view
    second = live[info["gateway_urls"][1]]  # a folder of its own, as on another machine
    cmdline = Path(f"/proc/{second['pid']}/cmdline").read_bytes().split(b"\0")
    assert cmdline[cmdline.index(b"--data-dir") + 1] == str(root / "gateway").encode(), cmdline


def _node_cpus(root: Path) -> dict[str, int]:
    """The cluster's node list: each Ray node's id → its logical CPUs (node i of ``ray-node<i>``
    gets ``localcluster.node_resources``' CPUs)."""
    sizes = localcluster.node_resources(NODES)
    out = {}
    for p in _recorded(root):
        if p["name"].startswith("ray-node"):
            node = _node_id_of(p["pid"])
            assert node is not None, p
            out[node] = sizes[int(p["name"].removeprefix("ray-node"))]["num_cpus"]
    return out


def _served_everywhere(info: dict[str, Any], c: Client, name: str, n: int = 4) -> None:
    """``n`` completions of ``name`` through the balancer and through each gateway, all answered."""
    token = c.call_info(name)["token"]
    for base in [info["balancer_url"], *info["gateway_urls"]]:  # each gateway follows the routing
        for _ in range(n):
            r = requests.post(f"{base}/api/predict/{name}/v1/completions", json={"prompt": "x", "max_tokens": 1},
                              headers={"Authorization": token}, timeout=10)  # fmt: skip
            assert r.status_code == 200, (base, r.status_code, r.text)


def test_placement_by_ray_never_over_a_nodes_cpus_and_a_gpu_spec_stays_pending_with_the_reason(
    cluster: tuple[Path, dict[str, Any]],
) -> None:
    root, info = cluster
    c = _client(info)
    spread = service_spec("spread", replicas=SPREAD)
    spread["metadata"]["cpu"] = 1
    gpu = service_spec("gpu")
    gpu["metadata"]["gpu"] = 1
    c.deploy(spread)
    c.deploy(gpu)
    c.wait_ready("spread", SPREAD, timeout_s=240)
    described = _cli("--cluster", str(root), "describe", "spread", "--json", timeout=60)
    assert described.returncode == 0, described.stderr
    per_node = Counter(r["node"] for r in json.loads(described.stdout)["replicas"])
    cpus = _node_cpus(root)
    print(f"{SPREAD} replicas of cpu 1 per Ray node (replicas/CPUs): "
          f"{sorted((per_node[n], cpus[n]) for n in cpus)}")  # fmt: skip
    assert set(per_node) <= set(cpus) and sum(per_node.values()) == SPREAD, (per_node, cpus)
    assert all(per_node[n] <= cpus[n] for n in per_node), (per_node, cpus)  # never over a node's CPUs
    assert len(per_node) >= 2, per_node  # Ray's SPREAD: more than one node
    _served_everywhere(info, c, "spread")
    unschedulable = wait_for(lambda: next((e for e in c.events("gpu") if e["reason"] == "Unschedulable"), None),
                             60, poll_s=0.5, what="the gpu spec's Unschedulable event")  # fmt: skip
    assert "gpu 1 asked, the largest node has gpu 0" in unschedulable["message"], unschedulable
    assert [r["phase"] for r in c.describe("gpu")["replicas"]] == ["Pending"]
    c.delete("gpu")
    c.scale("spread", HA_REPLICAS)  # for the kills below; 3 CPUs back to Ray


def _exactly_ready(c: Client, name: str, n: int) -> bool:
    reps = c.describe(name)["replicas"]
    return len(reps) == n and all(r["phase"] == "Ready" for r in reps)


@pytest.fixture(scope="module")
def ha(cluster: tuple[Path, dict[str, Any]]) -> tuple[str, ...]:
    """The services of :data:`HA`, scaled to 3 by the tests above, each with exactly its 3
    replicas Ready."""
    c = _client(cluster[1])
    for name in HA:
        wait_for(lambda: _exactly_ready(c, name, HA_REPLICAS), 240, poll_s=0.5, what=f"{name}: 3 replicas Ready")  # noqa: B023
    return HA


def test_behaviour_suite_deploy_scale_rolling_update_group_stress(cluster: tuple[Path, dict[str, Any]]) -> None:
    """tests/behaviour.py as the embedded tests run it, through the balancer (the group through
    its endpoint, the server's gateway, the one that acknowledges a routing version). A rolling
    update of one replica: no other replica serves while it is replaced. The group's members:
    ``spread`` (model ``test-model``) and ``svc`` after its update (``second``)."""
    _, info = cluster
    c, lb = _client(info), info["balancer_url"]
    behaviour.deploy_eas_json(c, lb, service_spec("svc", replicas=2), timeout_s=120)
    behaviour.scale_and_serve(c, lb, "svc", 1, timeout_s=120)
    behaviour.rolling_update_under_load(c, lb, "svc", 1, timeout_s=120)
    behaviour.group_weight_change_under_load(c, "swap", "spread", "svc", models=("test-model", "second"))
    behaviour.stress_in_the_server(info["api_url"], info["admin_token"], "svc")
    c.scale("svc", HA_REPLICAS)  # for the kills below


def _url(info: dict[str, Any], name: str) -> str:
    return f"{info['balancer_url']}/api/predict/{name}/v1/completions"


def test_kill9_of_the_active_server_the_standby_takes_over_adopts_the_replicas_loses_no_async_request(
    cluster: tuple[Path, dict[str, Any]], ha: tuple[str, ...]
) -> None:
    root, info = cluster
    c = _client(info)
    before = {r["id"]: r["pid"] for name in ha for r in c.describe(name)["replicas"]}
    server = next(p["pid"] for p in _recorded(root) if p["name"] == "server")
    standby = info["standby_api_url"] + "/healthz"
    took: dict[str, float] = {}

    def kill() -> tuple[Client, str]:  # kill -9 of the active; its gateway, the data plane, lives on
        killed = time.monotonic()
        os.kill(server, signal.SIGKILL)
        wait_for(lambda: _status(standby) == 200, 60, poll_s=0.05, what="the standby active")
        took["takeover_s"] = time.monotonic() - killed
        return _client(info, "standby_api_url"), info["balancer_url"]

    with steady_load(_url(info, ha[0]), c.call_info(ha[0])["token"]) as load:
        wait_for(lambda: len(load.results) >= 50, 30, what="load flowing")
        # every gateway takes from the queue, 4 at a time per replica: at 0.4 s a request the
        # queue was empty before 120 were put on a loaded machine; 2 s keeps some queued
        results = behaviour.async_kill_loses_nothing(c, info["balancer_url"], "queued", kill, latency_ms=2000)
        served = len(load.results)
        wait_for(lambda: len(load.results) >= served + 50, 30, what="load served after the takeover")
    print(f"takeover on the local cluster: {took['takeover_s']:.2f} s (goal {TAKEOVER_GOAL_S:g} s), "
          f"{len(load.results)} requests, "
          f"errors {len(load.errors)}; {len(results)} async requests answered once each")  # fmt: skip
    assert not load.errors and set(load.results) == {200}, (load.errors[:3], Counter(load.results))
    standby_client = _client(info, "standby_api_url")
    after = {r["id"]: r["pid"] for name in ha for r in standby_client.describe(name)["replicas"]}
    assert after == before  # adopted by Ray actor name: the same replica processes
    assert took["takeover_s"] <= TAKEOVER_BOUND_S


def _status(url: str) -> int | None:
    try:
        return requests.get(url, timeout=2).status_code
    except requests.RequestException:
        return None


def _ratio(*loads: Any) -> tuple[int, int]:
    ok = sum(load.results.count(200) for load in loads)
    return ok, sum(len(load.results) + len(load.errors) for load in loads)


def test_kill9_of_one_of_two_gateways_behind_the_balancer_under_load(
    cluster: tuple[Path, dict[str, Any]], ha: tuple[str, ...]
) -> None:
    root, info = cluster
    c = _client(info, "standby_api_url")  # the active since the takeover above
    victim = next(p["pid"] for p in _recorded(root) if p["name"] == "gateway")
    with steady_load(_url(info, ha[0]), c.call_info(ha[0])["token"]) as load:
        wait_for(lambda: len(load.results) >= 50, 30, what="load flowing")
        os.killpg(victim, signal.SIGKILL)
        served = len(load.results)
        # at most the 4 clients' requests in flight on the victim fail: >= 500 answers bound the ratio
        wait_for(lambda: len(load.results) >= served + 500, 90, what="500 answers after the kill")
    ok, total = _ratio(load)
    print(f"gateway kill -9 behind the balancer: success {ok}/{total} = {ok / total:.4f}, "
          f"answers {Counter(load.results)}, errors {load.errors[:2]}")  # fmt: skip
    assert not alive(victim)
    assert ok / total >= GATEWAY_LOSS_SLO


def test_a_lost_ray_node_under_load_of_two_services_their_replicas_start_again_on_the_others(
    cluster: tuple[Path, dict[str, Any]], ha: tuple[str, ...]
) -> None:
    root, info = cluster
    c = _client(info, "standby_api_url")  # the active since the takeover above
    nodes_of = {name: Counter(r["node"] for r in c.describe(name)["replicas"]) for name in ha}
    per_node = sum(nodes_of.values(), Counter())
    # Placement and scale-in spread each service (docs/cluster.md): no node holds all of one.
    assert all(len(n) >= 2 for n in nodes_of.values()), nodes_of
    # the worker node with the most replicas of those that leave each service a replica elsewhere
    # (a service lost whole holds its requests until a new replica answers: past a client's 10 s),
    # SIGKILLed: its `ray start --block` process group
    workers = [p for p in _recorded(root) if p["name"].startswith("ray-node") and p["name"] != "ray-node0"]
    node_ids = {p["pid"]: _node_id_of(p["pid"]) for p in workers}
    fair = [p for p in workers if all(sum(n.values()) > n[node_ids[p["pid"]]] for n in nodes_of.values())]
    victim = max(fair or workers, key=lambda p: per_node.get(node_ids[p["pid"]] or "", 0))
    victim_node = node_ids[victim["pid"]]
    assert per_node[victim_node] > 0, nodes_of  # SPREAD puts some on a worker: the head has 2 CPUs

    def back_to_strength() -> bool:
        for name in ha:
            ready = [r for r in c.describe(name)["replicas"] if r["phase"] == "Ready"]
            if len(ready) != HA_REPLICAS or victim_node in {r["node"] for r in ready}:
                return False
        return True

    with steady_load(_url(info, ha[0]), c.call_info(ha[0])["token"]) as load0, \
            steady_load(_url(info, ha[1]), c.call_info(ha[1])["token"]) as load1:  # fmt: skip
        wait_for(lambda: len(load0.results) >= 50 and len(load1.results) >= 50, 30, what="load flowing")
        lost = time.monotonic()
        os.killpg(victim["pid"], signal.SIGKILL)
        wait_for(back_to_strength, 180, poll_s=0.5, what="the replicas back on the other nodes")
        full_s = time.monotonic() - lost
    ok, total = _ratio(load0, load1)
    print(f"node loss under load: {per_node[victim_node]} of {len(ha) * HA_REPLICAS} replicas lost, "
          f"full strength after {full_s:.1f} s, success {ok}/{total} = {ok / total:.4f}, "
          f"errors {Counter(load0.results + load1.results)} {(load0.errors + load1.errors)[:2]}")  # fmt: skip
    assert ok / total >= NODE_LOSS_SLO


def _node_id_of(pid: int) -> str | None:
    """The Ray node id of the node started by ``ray start --block`` process ``pid``: its
    raylet, in that process group, is started with ``--node_id=<id>``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pid:
                continue
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ProcessLookupError):
            continue
        for a in args:
            if a.startswith("--node_id="):
                return a.removeprefix("--node_id=")
    return None


def test_cluster_down_leaves_no_process_behind(cluster: tuple[Path, dict[str, Any]]) -> None:
    root, info = cluster
    c = _client(info, "standby_api_url")
    replicas = [r["pid"] for name in [*HA, "queued"] for r in c.describe(name)["replicas"]]
    parts = [p["pid"] for p in _recorded(root)]
    head = next(p["pid"] for p in _recorded(root) if p["name"] == "ray-node0")
    cmdline = Path(f"/proc/{head}/cmdline").read_bytes().split(b"\0")
    ray_temp = cmdline[cmdline.index(b"--temp-dir") + 1].decode()
    t0 = time.monotonic()
    down = _cli("cluster", "down", "--dir", str(root), timeout=120)
    assert down.returncode == 0, down.stderr
    print(f"cluster down: {time.monotonic() - t0:.1f} s")
    assert not [pid for pid in [*replicas, *parts] if alive(pid)]
    assert not _pids_mentioning(ray_temp), "a Ray process outlived cluster down"
    assert not _pids_mentioning(str(root)), "a gateway or server outlived cluster down"
