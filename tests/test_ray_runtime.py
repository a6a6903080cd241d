"""The Ray runtime (runtime/ray_runtime.py): the pure resource decisions, then a real 2-node Ray
cluster on this machine (ray.cluster_utils.Cluster, 2 logical CPUs per node, no dashboard):
placement by Ray (SPREAD, never over a node's resources), a spec that fits nowhere refused with
the short resource named, and a lost worker node taking its replicas with it."""

from __future__ import annotations

import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from openeas.runtime.base import Demand, LaunchSpec, Unschedulable, replica_address
from openeas.runtime.launch import free_port

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'openeas[ray]')")
from ray.cluster_utils import Cluster  # noqa: E402

from openeas.runtime.ray_runtime import (  # noqa: E402
    HINTED_MIN_MEMORY,
    RAY_ALIVE_CHECK_S,
    SUSPECT_NODE_S,
    RayRuntime,
    infeasible_reason,
    ray_request,
    spread_target,
)

GiB = 2**30


@pytest.mark.parametrize(
    ("demand", "types", "want"),
    [
        pytest.param(Demand(), None, {}, id="nothing-asked"),
        pytest.param(Demand(cpu=1), None, {"CPU": 1.0}, id="cpu"),
        pytest.param(
            Demand(cpu=0.5, memory_mb=1024, gpu=1),
            None,
            {"CPU": 0.5, "memory": 1.0 * GiB, "GPU": 1.0},
            id="cpu-memory-gpu",
        ),
        pytest.param(Demand(instance_type="ecs.gn6i"), None, {"ecs.gn6i": 1.0}, id="instance-type-own-name"),
        pytest.param(
            Demand(instance_type="ecs.gn6i"), {"ecs.gn6i": "t4"}, {"t4": 1.0}, id="instance-type-mapped"
        ),
    ],
)
def test_ray_request(demand: Demand, types: dict[str, str] | None, want: dict[str, float]) -> None:
    assert ray_request(demand, types) == want


NODES = [{"CPU": 2.0, "memory": 4.0 * GiB}, {"CPU": 4.0, "memory": 1.0 * GiB, "t4": 1.0}]


@pytest.mark.parametrize(
    ("request_", "nodes", "want"),
    [
        pytest.param({"CPU": 4.0}, NODES, None, id="fits-the-big-node"),
        pytest.param({}, NODES, None, id="asks-nothing"),
        pytest.param(
            {"GPU": 1.0},
            NODES,
            "no Ray node can hold this replica: gpu 1 asked, the largest node has gpu 0",
            id="no-gpu",
        ),
        pytest.param(
            {"CPU": 8.0, "memory": 8.0 * GiB},
            NODES,
            "no Ray node can hold this replica: cpu 8 asked, the largest node has cpu 4; "
            "memory 8192 MB asked, the largest node has memory 4096 MB",
            id="all-short-resources-named",
        ),
        # Each alone fits somewhere (4 CPUs on the second, 2 GiB on the first), never together.
        pytest.param(
            {"CPU": 4.0, "memory": 2.0 * GiB},
            NODES,
            "no Ray node has cpu 4, memory 2048 MB together",
            id="not-together",
        ),
        pytest.param({"CPU": 1.0}, [], "the Ray cluster has no live node", id="no-node"),
    ],
)
def test_infeasible_reason(
    request_: dict[str, float], nodes: list[dict[str, float]], want: str | None
) -> None:
    assert infeasible_reason(request_, nodes) == want


def test_a_ray_replica_is_asked_whether_it_lives_once_a_second_as_documented() -> None:
    assert RayRuntime.alive_check_s == RAY_ALIVE_CHECK_S == 1.0  # docs/scale.md
    assert HINTED_MIN_MEMORY == 2**20  # docs/cluster.md
    assert SUSPECT_NODE_S == 60.0  # docs/cluster.md


SPREAD_NODES = [
    ("a", {"CPU": 2.0}),
    ("b", {"CPU": 2.0}),
    ("c", {"CPU": 4.0}),
    ("gpu", {"CPU": 1.0, "GPU": 1.0}),
]


@pytest.mark.parametrize(
    ("request_", "siblings", "avoid", "want"),
    [
        pytest.param({"CPU": 1.0}, {}, set(), None, id="first-replica-ray-chooses"),
        pytest.param({"CPU": 1.0}, {"a": 1}, set(), "c", id="a-node-without-one-most-cpus-first"),
        pytest.param({"CPU": 1.0}, {"a": 1, "c": 1}, set(), "b", id="the-one-node-without-one"),
        pytest.param({"CPU": 1.0}, {"a": 1, "b": 1, "c": 1, "gpu": 1}, set(), None, id="as-many-everywhere"),
        pytest.param({"CPU": 1.0}, {"a": 2, "b": 1, "c": 1, "gpu": 1}, set(), "c", id="fewest-then-most-cpus"),
        pytest.param({"CPU": 3.0}, {"c": 1}, set(), None, id="only-one-node-fits-nothing-to-prefer"),
        pytest.param({"GPU": 1.0}, {"gpu": 1}, set(), None, id="gpu-only-on-one-node"),
        pytest.param({"CPU": 2.0}, {"x": 1}, set(), None, id="siblings-on-nodes-gone-all-equal"),
        pytest.param({"CPU": 8.0}, {"a": 1}, set(), None, id="fits-nowhere"),
        # a node where a replica was just lost (Ray may still count it alive) is steered from
        pytest.param({"CPU": 1.0}, {}, {"c"}, "a", id="lost-node-avoided-even-with-no-sibling"),
        pytest.param({"CPU": 1.0}, {"c": 1}, {"c"}, "a", id="lost-node-avoided-on-a-tie"),
        pytest.param({"CPU": 1.0}, {"a": 1}, {"c"}, "b", id="lost-node-avoided-then-fewest"),
        pytest.param({"CPU": 3.0}, {}, {"c"}, None, id="only-the-lost-node-fits-ray-chooses"),
    ],
)
def test_spread_target_prefers_the_node_with_the_fewest_replicas_of_the_service(
    request_: dict[str, float], siblings: dict[str, int], avoid: set[str], want: str | None
) -> None:
    assert spread_target(request_, SPREAD_NODES, siblings, avoid) == want


@pytest.mark.parametrize(
    ("mode", "node_ip", "want"),
    [
        pytest.param("loopback", "192.0.2.7", "127.0.0.1", id="loopback-ignores-the-node"),
        pytest.param("loopback", None, "127.0.0.1", id="loopback-without-a-node-address"),
        pytest.param("node", "192.0.2.7", "192.0.2.7", id="node-ipv4"),
        pytest.param("node", "fd00::7", "fd00::7", id="node-ipv6"),
        pytest.param("node", "", ValueError("reported no address"), id="node-without-an-address"),
        pytest.param("node", None, ValueError("reported no address"), id="node-none"),
        pytest.param("public", "192.0.2.7", ValueError("expected one of loopback, node"), id="unknown-mode"),
    ],
)
def test_replica_address(mode: str, node_ip: str | None, want: str | Exception) -> None:
    if isinstance(want, Exception):
        with pytest.raises(ValueError, match=str(want)):
            replica_address(mode, node_ip)
    else:
        assert replica_address(mode, node_ip) == want


def test_the_ray_runtime_refuses_an_unknown_replica_address(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--replica-address: expected one of loopback, node, got 'lan'"):
        RayRuntime("auto", tmp_path, replica_address="lan")  # refused before Ray is asked anything


# ---- a real Ray cluster ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, RayRuntime]]:
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "resources": {"node_a": 1}, "include_dashboard": False},
    )
    try:
        c.add_node(num_cpus=2, resources={"node_b": 1})
        c.wait_for_nodes()
        data_dir = tmp_path_factory.mktemp("ray-data")
        runtime = RayRuntime(c.address, data_dir)
        try:
            yield c, runtime
        finally:
            for proc in runtime.replica_processes(data_dir):  # whatever a failed test left
                runtime.kill(proc)
            runtime.close()
    finally:
        c.shutdown()


def _launch(tmp: Path, rid: str, demand: Demand, port: int | None = None) -> LaunchSpec:
    port = port or free_port()
    return LaunchSpec(
        replica_id=rid,
        argv=[sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        env={"OPENEAS_REPLICA_ID": rid},
        cwd=str(tmp),
        log_path=str(tmp / f"{rid}.log"),
        port=port,
        demand=demand,
    )


def _answers(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> bool:
    """Whether the replica at ``host:port`` answers within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/", timeout=2):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def _stops_answering(port: int, timeout: float = 30.0) -> bool:
    """Whether the replica at 127.0.0.1:``port`` stops answering within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
                time.sleep(0.2)
        except OSError:
            return True
    return False


def _node_names(runtime: RayRuntime) -> dict[str, str]:
    """Ray node id → node_a / node_b (the custom resource each node was started with)."""
    return {n["node"]: next(k for k in n["resources"] if k.startswith("node_")) for n in runtime.nodes()}


@pytest.mark.slow
def test_four_replicas_of_one_cpu_land_two_per_node(
    cluster: tuple[Cluster, RayRuntime], tmp_path: Path
) -> None:
    _c, runtime = cluster
    # Placed first: each actor chooses its replica's port free on its node (none of `avoid`).
    avoid: set[int] = set()
    launches = []
    for i in range(4):
        placed = runtime.place(f"r{i}", Demand(cpu=1), 1, avoid)
        assert placed.host == "127.0.0.1" and placed.ports[0] not in avoid
        avoid.add(placed.ports[0])
        launches.append(_launch(tmp_path, f"r{i}", Demand(cpu=1), placed.ports[0]))
    refs = [runtime.start(launch) for launch in launches]  # in the placed actors, on their nodes
    try:
        names = _node_names(runtime)
        # 4 replicas of cpu 1 on 2 nodes of 2 CPUs: any other split puts 3 CPUs on a node of 2.
        assert Counter(names[r.extra["node"]] for r in refs) == {"node_a": 2, "node_b": 2}
        assert all(_answers(launch.port) for launch in launches)  # on 127.0.0.1, the node's port
        assert all(runtime.alive(r) for r in refs)
        runtime.forget(refs[0])  # its actor goes, and the replica with it
        assert not runtime.alive(refs[0])
    finally:
        for r in refs:
            runtime.forget(r)


@pytest.mark.slow
@pytest.mark.parametrize(
    "demand",
    # Ray ignored the affinity of an actor that asks for nothing: such a replica asks a little
    [pytest.param(Demand(cpu=0.5), id="half-a-cpu"), pytest.param(Demand(), id="no-cpu-written")],
)
def test_a_replica_goes_to_the_node_with_the_fewest_replicas_of_its_service(
    cluster: tuple[Cluster, RayRuntime], tmp_path: Path, demand: Demand
) -> None:
    """The spread hint is Ray's to follow: told the service's other replicas run on one node,
    Ray puts the next one on the other, each way round (Ray's SPREAD alone spreads all actors
    together and would match every one of these by chance only)."""
    _c, runtime = cluster
    by_name = {name: nid for nid, name in _node_names(runtime).items()}
    # Ray gives back the CPUs of actors killed by the tests above a moment later: a node that
    # looks full now would make Ray spill the hinted replica elsewhere, as it should.
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0.0) < 4.0 and time.monotonic() < deadline:
        time.sleep(0.1)
    refs = []
    try:
        for i, (crowded, free) in enumerate([("node_a", "node_b"), ("node_b", "node_a")] * 2):
            placed = runtime.place(f"s{i}", demand, 1, set(), {by_name[crowded]: 2})
            refs.append(runtime.start(_launch(tmp_path, f"s{i}", demand, placed.ports[0])))
            assert _node_names(runtime)[refs[-1].extra["node"]] == free, (i, crowded)
            runtime.forget(refs.pop())
    finally:
        for r in refs:
            runtime.forget(r)


@pytest.mark.slow
def test_a_gpu_spec_on_a_cluster_without_gpus_is_unschedulable(
    cluster: tuple[Cluster, RayRuntime], tmp_path: Path
) -> None:
    _c, runtime = cluster
    with pytest.raises(Unschedulable, match="gpu 1 asked, the largest node has gpu 0"):
        runtime.start(_launch(tmp_path, "g0", Demand(cpu=1, gpu=1)))


@pytest.mark.slow
def test_losing_a_worker_node_loses_its_replicas_and_they_start_on_the_other(
    cluster: tuple[Cluster, RayRuntime], tmp_path: Path
) -> None:
    c, runtime = cluster
    a = _launch(tmp_path, "a", Demand(cpu=1, instance_type="node_a"))
    b = _launch(tmp_path, "b", Demand(cpu=1, instance_type="node_b"))
    ref_a, ref_b = runtime.start(a), runtime.start(b)
    assert _answers(a.port) and _answers(b.port)
    worker = next(n for n in c.worker_nodes)
    c.remove_node(worker)  # the node_b raylet and its workers are killed
    deadline = time.monotonic() + 30
    while runtime.alive(ref_b) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not runtime.alive(ref_b)
    assert runtime.alive(ref_a)
    # The replica dies with its actor (PR_SET_PDEATHSIG) once Ray has ended the actor's worker:
    # seconds after the raylet, on a loaded machine.
    assert _stops_answering(b.port)
    runtime.forget(ref_b)
    again = _launch(tmp_path, "b", Demand(cpu=1))  # the same replica, started again: node_a only is left
    ref = runtime.start(again)
    assert _node_names(runtime)[ref.extra["node"]] == "node_a"
    assert _answers(again.port)
    runtime.forget(ref)
    runtime.forget(ref_a)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "on_node"),
    [pytest.param("loopback", False, id="loopback"), pytest.param("node", True, id="node")],
)
def test_a_replica_is_reached_at_the_address_its_mode_records(
    cluster: tuple[Cluster, RayRuntime], tmp_path: Path, mode: str, on_node: bool
) -> None:
    """The replica listens on OPENEAS_REPLICA_HOST, the runtime reports the same address, and it
    answers there: 127.0.0.1 with ``loopback``; with ``node``, Ray's address for the node (this
    machine's interface address here: the test reads where the replica listens instead of sending
    it traffic)."""
    _c, base = cluster
    runtime = RayRuntime(base.address, tmp_path, replica_address=mode)  # Ray already connected
    runtime.namespace = base.namespace
    port = free_port()
    serve = (
        "import os, runpy, sys; "
        f"sys.argv = ['http.server', '{port}', '--bind', os.environ['OPENEAS_REPLICA_HOST']]; "
        "runpy.run_module('http.server', run_name='__main__')"
    )
    launch = LaunchSpec(
        replica_id=f"addr-{mode}",
        argv=[sys.executable, "-c", serve],
        env={"OPENEAS_REPLICA_ID": f"addr-{mode}"},
        cwd=str(tmp_path),
        log_path=str(tmp_path / "addr.log"),
        port=port,
        demand=Demand(cpu=1),
    )
    ref = runtime.start(launch)
    try:
        node_ip = {n["node"]: n["address"] for n in runtime.nodes()}[ref.extra["node"]]
        host = ref.extra["host"]
        assert host == (node_ip if on_node else "127.0.0.1")
        if not on_node:
            assert _answers(port, host=host)
            return
        # No test traffic goes to this machine's interface address (the address Ray reports for
        # its nodes here): the kernel's table of listening sockets shows where the replica bound.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _listening(port):
            time.sleep(0.2)
        assert _listening(port) == {node_ip}, "bound to the node's address only, not loopback"
    finally:
        runtime.forget(ref)


def _listening(port: int) -> set[str]:
    """The IPv4 addresses a TCP socket listens on at ``port`` (/proc/net/tcp, state 0A)."""
    found: set[str] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(int(addr[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found
