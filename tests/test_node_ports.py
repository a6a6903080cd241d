"""Ports chosen on the replica's node (issue 22): a placing runtime (the Ray runtime) places the
replica first and its ports are picked free *on that node*; the supervisor stores what the node
offered, builds the launch with it, and asks again when another replica took the same address
and port meanwhile. Pure decisions and the supervisor on virtual time (the fake runtime); the
real Ray path is in tests/test_ray_runtime.py."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from openeas.kernel.states import ReplicaPhase
from openeas.runtime.base import Demand, NodePorts, PlacingRuntime, port_clash
from openeas.runtime.fake import FakeRuntime
from openeas.runtime.launch import pick_ports
from tests.fakes import World, spec

P = ReplicaPhase


@pytest.mark.parametrize(
    ("chosen", "taken", "want"),
    [
        pytest.param(NodePorts("127.0.0.1", [21000]), [], None, id="nothing-taken"),
        pytest.param(
            NodePorts("127.0.0.1", [21000]), [("127.0.0.1", 21000)], 21000, id="same-address-same-port"
        ),
        pytest.param(NodePorts("10.0.0.2", [21000]), [("10.0.0.3", 21000)], None, id="other-node-same-port"),
        pytest.param(
            NodePorts("127.0.0.1", [21000, 21001]), [("127.0.0.1", 21001)], 21001, id="a-sidecar-port"
        ),
        pytest.param(NodePorts("127.0.0.1", [21000]), [("127.0.0.1", 21002)], None, id="other-port"),
    ],
)
def test_port_clash(chosen: NodePorts, taken: list[tuple[str, int]], want: int | None) -> None:
    assert port_clash(chosen, taken) == want


def _two_free_ports() -> tuple[int, int]:
    """Two consecutive ports free on every interface (lo, lo + 1)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("0.0.0.0", 0))
            lo = s.getsockname()[1]
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("0.0.0.0", lo))
                b.bind(("0.0.0.0", lo + 1))
        except OSError:
            continue
        return lo, lo + 1
    raise AssertionError("no two consecutive free ports")


@pytest.fixture
def held() -> Iterator[tuple[int, int, socket.socket]]:
    """A range of two ports whose first one something on this node listens on (127.0.0.1)."""
    lo, hi = _two_free_ports()
    s = socket.socket()
    s.bind(("127.0.0.1", lo))
    s.listen()
    try:
        yield lo, hi, s
    finally:
        s.close()


@pytest.mark.parametrize(
    ("avoid_second", "want"),
    [
        # Checked on every interface (as the node does): a port held on loopback alone is taken.
        pytest.param(False, "second", id="held-on-loopback-seen-on-the-wildcard"),
        pytest.param(True, OSError("no free replica port"), id="held-and-avoided-none-left"),
    ],
)
@pytest.mark.parametrize("how", ["env", "span"])
def test_pick_ports_skips_what_the_node_holds_and_what_replicas_recorded(
    held: tuple[int, int, socket.socket],
    monkeypatch: pytest.MonkeyPatch,
    avoid_second: bool,
    want: str | Exception,
    how: str,
) -> None:
    """The range from OPENEAS_REPLICA_PORTS where the pick runs, or handed over (``span``: the
    server's range, given to the Ray actor on another node)."""
    lo, hi, _s = held
    span = None
    if how == "env":
        monkeypatch.setenv("OPENEAS_REPLICA_PORTS", f"{lo}-{hi + 1}")
    else:
        span = (lo, hi + 1)
    avoid = {hi} if avoid_second else set()
    if isinstance(want, Exception):
        with pytest.raises(OSError, match=str(want)):
            pick_ports(1, avoid, "0.0.0.0", span)
    else:
        assert pick_ports(1, avoid, "0.0.0.0", span) == [hi]


class PlacingFake(FakeRuntime):
    """The fake runtime as a placing one: each ``place`` offers the next of ``offers``."""

    def __init__(self, world: World, offers: list[NodePorts]) -> None:
        super().__init__(world.clock)
        self.offers = offers
        self.asked: list[tuple[str, int, set[int]]] = []  # (replica, count, avoid) of each place
        self.siblings: list[dict[str, int]] = []  # the spread hint of each place

    def place(
        self,
        replica_id: str,
        demand: Demand,
        count: int,
        avoid: set[int],
        siblings: Mapping[str, int] | None = None,
    ) -> NodePorts:
        self.asked.append((replica_id, count, set(avoid)))
        self.siblings.append(dict(siblings or {}))
        offer = self.offers[min(len(self.asked), len(self.offers)) - 1]
        return NodePorts(offer.host, offer.ports[:count])


OTHER = ("127.0.0.1", 22000)  # a replica the store already has: its address and port


@pytest.mark.parametrize(
    ("offers", "want_port", "want_host", "places"),
    [
        pytest.param([NodePorts("127.0.0.1", [23000])], 23000, "127.0.0.1", 1, id="the-node-port-is-stored"),
        pytest.param(
            [NodePorts("127.0.0.1", [22000]), NodePorts("127.0.0.1", [23001])],
            23001,
            "127.0.0.1",
            2,
            id="a-clash-asks-again",
        ),
        pytest.param([NodePorts("10.0.0.2", [22000])], 22000, "10.0.0.2", 1, id="same-port-other-address"),
        pytest.param([NodePorts("127.0.0.1", [22000])], None, None, 3, id="clashes-every-time-fails"),
    ],
)
async def test_the_supervisor_uses_the_ports_its_node_chose(
    tmp_path: Path, offers: list[NodePorts], want_port: int | None, want_host: str | None, places: int
) -> None:
    world = World.make(tmp_path)
    world.store.create_service(spec())
    other = world.store.add_replica("svc", 1, workdir_root=world.cfg.data_dir / "replicas")
    world.store.update_replica(other.id, host=OTHER[0], port=OTHER[1], node="node-a")
    rid = world.store.add_replica("svc", 1, workdir_root=world.cfg.data_dir / "replicas").id
    runtime = PlacingFake(world, offers)
    assert isinstance(runtime, PlacingRuntime)
    world.cfg = replace(world.cfg, probe=runtime.probe, warmup=runtime.warmup)  # its processes answer
    sup, task = world.supervise(rid, runtime)
    try:
        if want_port is None:
            await world.clock.run_until(lambda: any(c.phase == P.FAILED for c in world.store.phases(rid)))
            assert "offered ports other replicas took, 3 times" in (
                world.store.get_replica(rid).message or ""
            )
            assert runtime.started == []
        else:
            await world.clock.run_until(lambda: world.store.get_replica(rid).phase == P.READY)
            row = world.store.get_replica(rid)
            assert (row.port, row.host) == (want_port, want_host)
            launch = runtime.table[row.pid].launch  # built with the node's port, probed there
            assert (launch.port, launch.env["PORT"]) == (want_port, str(want_port))
        assert len(runtime.asked) >= places
        assert runtime.asked[0] == (rid, 1, {OTHER[1]})  # the ports replicas recorded are avoided
        assert runtime.siblings[0] == {"node-a": 1}  # where the service's other replica runs
    finally:
        sup.stop_requested.set()
        world.store.update_replica(rid, stopping=True)
        await world.clock.run_until(task.done)
