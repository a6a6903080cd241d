"""A real store and a real gateway, and the time from a store commit to the gateway's table swap.

Shared by tests/test_routing_push.py (which asserts on it) and bench/routing.py (which reports
it). `RoutingRig` wires them as `openeas server` does: the store's routing listener sends the
notification datagram, the gateway binds the socket in the data dir and re-reads the store. The
gateway runs in this process on its own uvloop thread, so commit and apply times share one clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from openeas.gateway import Gateway
from openeas.gateway.routing.notify import RoutingNotifier, socket_path
from openeas.gateway.routing.source import StoreRoutingSource
from openeas.kernel.routing import RoutingTable
from openeas.spec import ServiceSpec, parse_spec
from openeas.store import Store
from openeas.telemetry.coldstart import nearest_rank
from tests.conftest_gateway import LoopThread

TOKEN = "token-for-tests-123"


def spec(name: str, *, keepalive_ms: int | None = None, token: str = TOKEN) -> ServiceSpec:
    rpc = {"keepalive": keepalive_ms} if keepalive_ms else {}
    return parse_spec(
        {
            "metadata": {"name": name, "instance": 1, "rpc": rpc},
            "containers": [{"command": "serve --port 8000", "port": 8000}],
            "token": token,
        }
    )


def notifying_store(data_dir: Path) -> Store:
    """A store wired like the server's: each routing change is pushed to the gateway."""
    store = Store(data_dir)
    store.add_routing_listener(RoutingNotifier(socket_path(data_dir)))
    return store


class RoutingRig:
    """A store (pushing or not) and an in-process gateway reading it; times each change."""

    def __init__(self, data_dir: Path, *, push: bool, poll_interval_s: float) -> None:
        self.data_dir = data_dir
        self.store = Store(data_dir)
        self.committed: dict[int, float] = {}  # routing version → perf_counter() at its commit
        self.applied: list[tuple[int, float]] = []  # (table version, perf_counter()) per swap
        self._cond = threading.Condition()
        # First listener: the commit time, taken before the notification is sent.
        self.store.add_routing_listener(self._on_commit)
        if push:
            self.store.add_routing_listener(RoutingNotifier(socket_path(data_dir)))
        self.poll_interval_s = poll_interval_s
        self.lt = LoopThread()
        self.gateway: Gateway | None = None

    def _on_commit(self, version: int) -> None:
        self.committed[version] = time.perf_counter()

    def _on_apply(self, table: RoutingTable) -> None:
        with self._cond:
            self.applied.append((table.version, time.perf_counter()))
            self._cond.notify_all()

    @property
    def last_version(self) -> int:
        return max(self.committed, default=0)

    def start_gateway(self) -> Gateway:
        gw = Gateway(
            StoreRoutingSource(self.data_dir),
            poll_interval_s=self.poll_interval_s,
            notify_socket=socket_path(self.data_dir),
            on_apply=self._on_apply,
        )
        self.lt.run(gw.start("127.0.0.1", 0))
        self.gateway = gw
        return gw

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            self.lt.run(self.gateway.stop(grace_s=0))
            self.gateway = None

    def close(self) -> None:
        self.stop_gateway()
        self.lt.stop()

    def table(self) -> RoutingTable:
        assert self.gateway is not None and self.gateway.table is not None
        return self.gateway.table

    def wait_applied(self, version: int, timeout_s: float) -> float:
        """Seconds from the commit of ``version`` to the first swap of a table at least that new."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                done = [t for v, t in self.applied if v >= version]
                if done:
                    return done[0] - self.committed[version]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"routing version {version} not applied within {timeout_s}s")
                self._cond.wait(left)

    def change(self, step: Callable[[Store], object], timeout_s: float) -> float:
        """Run one change on the store (it must bump the routing version); its commit→applied latency."""
        before = self.last_version
        step(self.store)
        version = self.last_version
        assert version > before, "the change did not bump the routing version"
        return self.wait_applied(version, timeout_s)


@dataclass
class Cycle:
    """State of one round of the change cycle (see ``change_cycle``)."""

    name: str
    replica: str = ""
    port: int = 0


def change_cycle(n: int) -> list[tuple[str, Callable[[Store], object], Callable[[RoutingTable], bool]]]:
    """Round ``n`` of the routing changes the control plane makes, as (kind, change, check on the table).

    Each change bumps the routing version once; the check says the gateway's table shows it.
    """
    c = Cycle(name=f"svc{n}", port=20000 + n)
    new_token = f"rotated-token-{n:04d}"

    def ready(store: Store) -> None:
        c.replica = store.add_replica(c.name, 1, workdir_root=store.data_dir / "replicas").id
        store.update_replica(c.replica, phase="Starting", port=c.port)  # not routable: no bump
        store.update_replica(c.replica, phase="Warming")
        store.update_replica(c.replica, phase="Ready")  # routable: the bump

    def has_upstream(t: RoutingTable) -> bool:
        return c.name in t.routes and [u.port for u in t.routes[c.name].upstreams] == [c.port]

    return [
        ("service created", lambda s: s.create_service(spec(c.name)), lambda t: c.name in t.routes),
        ("replica Ready", ready, has_upstream),
        (
            "service updated",
            lambda s: s.add_version(spec(c.name, keepalive_ms=1500)),
            lambda t: t.routes[c.name].timeout_s == 1.5,
        ),
        (
            "token change",
            lambda s: s.update_service(c.name, token_enc=s.cipher.encrypt(new_token)),
            lambda t: t.routes[c.name].token == new_token,
        ),
        (
            "replica leaving",
            lambda s: s.update_replica(c.replica, phase="Draining"),
            lambda t: t.routes[c.name].upstreams == (),
        ),
        (
            "service deleted",
            lambda s: s.update_service(c.name, state="Deleting"),
            lambda t: c.name not in t.routes,
        ),
    ]


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    return nearest_rank(sorted(values), q)
