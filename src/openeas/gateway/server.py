"""The gateway process: listening socket, routing-table refreshes, graceful stop.

`Gateway` is the embeddable object (start/stop); `serve()` runs one until cancelled. The routing
source is read on a dedicated thread so a slow store query never stalls proxying. A read happens at
once when the control plane notifies a change (``notify_socket``, see
:mod:`openeas.gateway.routing.notify`; the gateway acknowledges the version it applied), and every
``poll_interval_s`` as a safety net for a lost notification or a source that cannot notify (a
routing file). Each swap also sends the requests held for a replica (activator.py) that now have
one. With ``stats_socket``, per-service counters go to the control plane several times a second
(stats.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from openeas.gateway.asyncq.queues import AsyncQueues
from openeas.gateway.auth import DEFAULT_MAX_DATE_SKEW_S
from openeas.gateway.context import DEFAULT_COOLDOWN_S, ClientLimits, ProxyContext
from openeas.gateway.groups.split import build_groups
from openeas.gateway.http.activator import gateway_stopping
from openeas.gateway.http.pool import UpstreamState
from openeas.gateway.http.proxy import IDLE, ClientConnection
from openeas.gateway.routing.notify import NotifyListener
from openeas.gateway.routing.registry import Registration
from openeas.gateway.routing.replica_load import LoadListener, Loads
from openeas.gateway.routing.replica_load import socket_path as load_socket_path
from openeas.gateway.routing.routes import RouteState, UpstreamKey, build_routes
from openeas.gateway.routing.table import RoutingSource
from openeas.gateway.telemetry.metrics import GatewayMetrics
from openeas.gateway.telemetry.siblings import Siblings
from openeas.gateway.telemetry.stats import SignedStatsSender, StatsSender
from openeas.kernel.fleet import HEARTBEAT_S
from openeas.kernel.routing import RoutingTable

log = logging.getLogger("openeas.gateway")

DEFAULT_POLL_INTERVAL_S = 1.0  # the safety net under notifications; seconds
# Connections the kernel completes before the gateway accepts them. asyncio's default (100) is
# too few for a burst of 1,000 connecting clients: SYNs past it are dropped and retried after 1 s,
# 3 s (p99s of seconds); nginx listens with 511. Linux caps it at net.core.somaxconn.
LISTEN_BACKLOG = 4096
SOMAXCONN_FILE = Path("/proc/sys/net/core/somaxconn")


def listen_backlog(wanted: int = LISTEN_BACKLOG, somaxconn_file: Path = SOMAXCONN_FILE) -> int:
    """``wanted``, capped by the kernel's limit where it can be read."""
    try:
        cap = int(somaxconn_file.read_text())
    except (OSError, ValueError):
        return wanted
    return min(wanted, cap) if cap > 0 else wanted


class Gateway:
    def __init__(
        self,
        source: RoutingSource,
        *,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        notify_socket: Path | None = None,
        stats_socket: Path | None = None,
        on_apply: Callable[[RoutingTable], object] | None = None,
        max_date_skew_s: float = DEFAULT_MAX_DATE_SKEW_S,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        metrics: GatewayMetrics | None = None,
        limits: ClientLimits | None = None,
        queue_url: str | None = None,
        data_dir: Path | None = None,
        worker: int = 0,
        registration: Registration | None = None,
        stats_udp: bool = False,
    ) -> None:
        self.source = source
        self.worker = worker  # this process's index among the gateway's workers (--workers N)
        # Async services' queue backend (openeas.queue.open_backend): opened when the first async
        # service is routed; None with no data dir either: async services get 503.
        self.queue_url = queue_url
        self.data_dir = data_dir
        self.poll_interval_s = poll_interval_s  # seconds between two reads when nothing is notified
        self.notify_socket = notify_socket  # bound while running: a datagram there = read now
        self.on_apply = on_apply  # called on the loop after each table swap (tests, benchmarks)
        self.metrics = metrics or GatewayMetrics()
        # Where per-service counters are sent (the control plane's socket); None: not sent.
        self.stats: StatsSender | None = None
        if stats_socket is not None:
            self.stats = StatsSender(stats_socket, self.metrics)
        if stats_udp:  # not on the control plane's machine: signed UDP to where the store says
            self.stats = SignedStatsSender(self.metrics)
        # This gateway's row in the store's gateway registry (gateway/routing/registry.py): its
        # heartbeat, and the routing version it applied (what an API call that changes routing
        # waits for). Written on a thread of its own. None: not registered (a routing file).
        self.registration = registration
        if registration is not None and self.stats is not None:
            self.stats.gateway_id = registration.id  # one id for the row and the counters
        self._registered = -1  # the highest routing version handed to the registry's thread
        self._beat: asyncio.Task[None] | None = None
        self._registry_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="openeas-registry")
        self.ctx = ProxyContext(
            self.metrics,
            max_date_skew_s=max_date_skew_s,
            cooldown_s=cooldown_s,
            **dataclasses.asdict(limits or ClientLimits()),
        )
        self.table: RoutingTable | None = None
        self.upstreams: dict[UpstreamKey, UpstreamState] = {}
        # Replicas that left the table with requests still in flight on them: their requests finish
        # (retiring closes idle connections only), and /metrics counts them until they have.
        self.leaving: set[UpstreamState] = set()
        self.metrics.replicas = self.replica_loads
        self._server: asyncio.AbstractServer | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._listener: NotifyListener | None = None
        self._loads: LoadListener | None = None  # engine load pushed by the control plane
        self._wake: asyncio.Event | None = None
        self._unwatch: Callable[[], object] | None = None  # stops a source's own push (watch)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="openeas-routing")
        self.port = 0

    @property
    def routes(self) -> dict[str, RouteState]:
        return self.ctx.routes

    def apply(self, table: RoutingTable) -> None:
        """Swap in a new routing table (requests in flight keep the replica they have)."""
        retired: list[UpstreamState] = []  # only the replicas that left: a change costs what it changed
        self.ctx.routes = build_routes(table, self.ctx.routes, self.upstreams, self.metrics, retired)
        self.ctx.groups = build_groups(table.groups, self.ctx.routes, self.metrics)
        self.metrics.retain(table.routes.keys(), table.groups.keys())  # deleted ones leave /metrics
        self.leaving.update(st for st in retired if st.outstanding > 0)
        self.table = table
        self.metrics.routing_version = table.version
        self._queues_changed()
        self.ctx.wake_held()  # held requests whose service now has a replica go at once
        if self.on_apply is not None:
            self.on_apply(table)

    def _queues_changed(self) -> None:
        """Tell the async queues (opened with the first async service) what is routed now."""
        ctx = self.ctx
        if ctx.queues is None:
            if not any(r.queue is not None for r in ctx.routes.values()):
                return
            if self.queue_url is None and self.data_dir is None:
                log.warning("async services are routed but this gateway has no queue (no --data-dir)")
                return
            from openeas.queue import open_backend

            try:
                backend = open_backend(self.queue_url, self.data_dir or Path("."))
            except Exception:
                log.exception("could not open the queue backend %s", self.queue_url)
                return
            ctx.queues = AsyncQueues(backend)
            self.metrics.queue_lines = ctx.queues.metrics_lines
        ctx.queues.routes_changed(ctx.routes)

    def replica_loads(self) -> list[tuple[str, bool, int]]:
        """(replica id, routed, requests in flight) per replica: routed ones, and those that left
        the table but still have requests in flight."""
        self.leaving = {st for st in self.leaving if st.outstanding > 0}
        loads: dict[str, tuple[bool, int]] = {}
        for routed, states in ((True, self.upstreams.values()), (False, self.leaving)):
            for st in states:
                was_routed, n = loads.get(st.upstream.replica_id, (False, 0))
                loads[st.upstream.replica_id] = (was_routed or routed, n + st.outstanding)
        return [(rid, routed, n) for rid, (routed, n) in loads.items()]

    def apply_loads(self, loads: Loads) -> None:
        """Engine load pushed by the control plane (gateway/routing/replica_load.py): replicas it names
        get its values, the others go back to unknown."""
        for st in self.upstreams.values():
            st.waiting, st.kv_usage = loads.get(st.upstream.replica_id, (-1.0, -1.0))

    def refresh_soon(self) -> None:
        """Read the source at once (on the routing thread), not at the next poll. Loop thread only."""
        if self._wake is not None:
            self._wake.set()

    async def poll_once(self) -> None:
        loop = asyncio.get_running_loop()
        table = await loop.run_in_executor(self._executor, self.source.poll)
        if table is not None:
            self.apply(table)
        if self._listener is not None and self.table is not None:
            # Applied (or unchanged since the last read): answer the notifications it covers.
            self._listener.applied(self.table.version)
        self._acknowledge()

    def _acknowledge(self) -> None:
        """Write the routing version this gateway applied into the registry (the acknowledgement
        that gateways on any machine give), once per new version, on the registry's thread: a
        slow store never delays the next routing read. A write that fails is made good by the
        next heartbeat, which carries the applied version too."""
        reg, table = self.registration, self.table
        if reg is None or table is None or table.version <= self._registered:
            return
        self._registered = table.version
        asyncio.get_running_loop().run_in_executor(self._registry_executor, reg.applied, table.version)

    async def _heartbeat_forever(self, reg: Registration) -> None:
        loop = asyncio.get_running_loop()
        while True:
            applied = self.table.version if self.table is not None else -1
            try:
                target = await loop.run_in_executor(self._registry_executor, reg.beat, applied)
            except Exception:  # the data plane serves on; the next heartbeat tries again
                log.exception("gateway registry heartbeat failed")
                target = None
            if target is not None and isinstance(self.stats, SignedStatsSender):
                self.stats.retarget(target)
            await asyncio.sleep(HEARTBEAT_S)

    async def _refresh_forever(self, wake: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.poll_interval_s)
            # Cleared before the read: a notification that arrives while it runs sets the event
            # again and gets a read of its own, so no change committed after this read is missed.
            wake.clear()
            try:
                await self.poll_once()
            except Exception:  # a broken source must not take the data plane down
                log.exception(
                    "routing source read failed; keeping table version %s",
                    self.table.version if self.table else None,
                )

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Load the first table, listen, and return the bound port (useful with port 0).

        ``reuse_port`` (SO_REUSEPORT): a successor gateway can listen on the same port while this
        one still serves, so a gateway is replaced without refusing a connection."""
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self.notify_socket is not None:
            # Bound before the first read: a change committed between that read and the bind
            # would otherwise wait for the safety-net poll.
            self._listener = NotifyListener(self.notify_socket, self.refresh_soon)
            self._listener.start(loop)
        if self.data_dir is not None:
            self._loads = LoadListener(load_socket_path(self.data_dir, self.worker), self.apply_loads)
            self._loads.start(loop)
        if self.registration is not None and not self.registration.url and port:
            self.registration.url = advertised_url(host, port)  # before the first acknowledgement
        watch = getattr(self.source, "watch", None)
        if watch is not None:  # a source that pushes by itself (PostgreSQL's LISTEN/NOTIFY)
            self._unwatch = watch(lambda: loop.call_soon_threadsafe(self.refresh_soon))
        await self.poll_once()
        ctx = self.ctx
        if self.stats is not None:
            self.stats.start(loop)
            ctx.on_hold = self.stats.send_soon
            ctx.on_jump = self.stats.jump
        self._server = await loop.create_server(
            lambda: ClientConnection(ctx),
            host,
            port,
            backlog=listen_backlog(),
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._refresher = loop.create_task(self._refresh_forever(self._wake))
        if self.registration is not None:
            if not self.registration.url:
                self.registration.url = advertised_url(host, self.port)
            self._beat = loop.create_task(self._heartbeat_forever(self.registration))
        return self.port

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, let requests in flight finish (up to ``grace_s``), then close.

        Keep-alive clients are moved off without a failed request (they open their next
        connection to a successor gateway on the same port, see `start`'s ``reuse_port``): a
        connection serving a request closes right after its answer (the client reads the close
        with the answer, before it could reuse the connection); one idle for ``IDLE_CLOSE_S``
        (a client that is not sending, not one between two requests of a busy loop) with no byte
        of a next request received is closed. The routing table stays fresh meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        if self._server is not None:
            self._server.close()
            # The listening socket goes away on a later loop iteration. No client is sent off
            # before that: its next connection could land in this socket's accept queue (the
            # port is shared) and be reset when it closes.
            await asyncio.sleep(LISTENER_CLOSE_S)
        idle_since: dict[tuple[ClientConnection, int], float] = {}
        while self.ctx.connections and loop.time() < deadline:
            now = loop.time()
            seen = {}
            for conn in list(self.ctx.connections):
                if conn.phase is not IDLE:
                    conn.keep_alive = False  # the proxy closes it once this request is answered
                elif _between_requests(conn):
                    key = (conn, conn.request_seq)
                    since = seen[key] = idle_since.get(key, now)
                    if now - since >= IDLE_CLOSE_S:
                        conn.transport.close()
            idle_since = seen
            await asyncio.sleep(DRAIN_CHECK_S)
        # Requests still held get a 503 + Retry-After (the successor on the same port serves the
        # retry) rather than a cut connection.
        for service, queue in self.ctx.holds.items():
            queue.fail_all(gateway_stopping(service))
        if self.ctx.queues is not None:
            # Calls in flight finish within what is left of the grace; the rest go back to the queue.
            await self.ctx.queues.close(max(0.0, deadline - loop.time()))
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._loads is not None:
            self._loads.close()
            self._loads = None
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self._leave_registry()
        for conn in list(self.ctx.connections):
            conn.transport.close()
        for st in self.upstreams.values():
            st.retire()
        for queue in self.ctx.holds.values():
            queue.close()
        if self.stats is not None:
            self.stats.close()
        self._executor.shutdown(wait=False)

    async def _leave_registry(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
            self._beat = None
        if self.registration is not None:
            await asyncio.get_running_loop().run_in_executor(self._registry_executor, self.registration.leave)
        self._registry_executor.shutdown(wait=False)


def advertised_url(host: str, port: int) -> str:
    """The URL a gateway listening on ``host``:``port`` advertises by default: a wildcard
    address names the machine instead."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# While a gateway stops, how often connections are checked for being between two requests, seconds.
DRAIN_CHECK_S = 0.005
# While a gateway stops, a keep-alive connection idle this long is closed, seconds.
IDLE_CLOSE_S = 1.0
# Time given to the listening socket to close before connections are sent off, seconds.
LISTENER_CLOSE_S = 0.05


def _between_requests(conn: ClientConnection) -> bool:
    """No request on this connection: not one being served, and no byte of a next one (parsed or
    still in the socket's receive buffer). Closing it now fails nothing."""
    if conn.phase is not IDLE or conn.url or conn.flow.early is not None or conn.transport.is_closing():
        return False
    sock = conn.transport.get_extra_info("socket")
    if sock is None:
        return True
    try:
        with socket.socket(fileno=os.dup(sock.fileno())) as dup:
            return not dup.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)  # b"": the client closed
    except BlockingIOError:
        return True  # nothing received
    except OSError:
        return True


async def serve(
    source: RoutingSource,
    host: str,
    port: int,
    *,
    ready_cb: Callable[[int], object] | None = None,
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
    notify_socket: Path | None = None,
    stats_socket: Path | None = None,
    stop: asyncio.Event | None = None,
    grace_s: float = 10.0,
    reuse_port: bool = False,
    limits: ClientLimits | None = None,
    queue_url: str | None = None,
    data_dir: Path | None = None,
    worker: WorkerPlace | None = None,
    registration: Registration | None = None,
    stats_udp: bool = False,
) -> None:
    """Run a gateway until ``stop`` is set (or the task is cancelled); ``ready_cb(port)`` once
    listening. ``worker``: this process is one worker of several (gateway/workers.py)."""
    gw = Gateway(
        source,
        poll_interval_s=poll_interval_s,
        notify_socket=notify_socket,
        stats_socket=stats_socket,
        limits=limits,
        queue_url=queue_url,
        data_dir=data_dir,
        worker=worker.index if worker is not None else 0,
        registration=registration,
        stats_udp=stats_udp,
    )
    siblings = Siblings(worker.folder, worker.index, worker.workers, gw.metrics) if worker else None
    await gw.start(host, port, reuse_port=reuse_port)
    if siblings is not None:
        siblings.start(asyncio.get_running_loop())
    if ready_cb is not None:
        ready_cb(gw.port)
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        if siblings is not None:
            siblings.close()
        await gw.stop(grace_s)


@dataclasses.dataclass(frozen=True)
class WorkerPlace:
    """One worker of a gateway of several processes (``--workers N``)."""

    index: int  # 0 .. workers-1
    workers: int
    folder: Path  # the supervisor's folder: ready files, counter snapshots (telemetry/siblings.py)
