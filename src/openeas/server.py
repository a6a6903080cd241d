"""`openeas server`: control-plane API + reconciler in this process, the gateway in another.

This module is the composition root: it builds the components (gateway keeper, reconciler,
rollouts, gateway counters, autoscaler, batch runner, API), each wired at construction, and runs
them (openeas.lifecycle: started in order, stopped in reverse). The gateway keeper (spawn, adopt,
fingerprint) is openeas.gateway_keeper.

The gateway is the hot path, so it runs in a process of its own (pinnable to a core, unaffected
by control-plane work) and reads the routing table from the store. It does not depend on the
server being alive: it runs in a session of its own, keeps serving the last routing table when
the server dies (kill -9 included), and is recorded in `DIR/run/gateway.json` (pid, start ticks,
address, code fingerprint). The next server adopts it when it is the same code and arguments and
answers, or replaces it (the successor listens on the same port first); a gateway that dies is
restarted. A graceful stop stops it too, unless `--keep-replicas`. Once both answer,
`DIR/server.json` (mode 0600) tells the CLI and scripts where they are (docs/cli.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import logging
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from openeas.api.app import create_app
from openeas.api.control import ControlPlane
from openeas.api.cost import server_catalog
from openeas.api.idle import IdleWatch
from openeas.autoscaler.activation import QueueActivation
from openeas.autoscaler.backlog import QueueBacklog
from openeas.autoscaler.engine_load import EngineLoadScraper
from openeas.autoscaler.loop import Autoscaler
from openeas.autoscaler.process import NvmlSampler, ProcessSampler
from openeas.autoscaler.scrape import ReplicaScraper
from openeas.batch import BatchRunner
from openeas.console import add_console
from openeas.control_lease import LeaseKeeper, wait_for_lease
from openeas.controller.archiver import Archiver
from openeas.controller.bake import Baker
from openeas.controller.capacity import Resources, node_capacity
from openeas.controller.reconciler import Reconciler
from openeas.controller.replica import PRIVATE_ENV, GatewayView, GatewayViewFn, SupervisorConfig
from openeas.controller.request_meter import RequestMeter, meter_interval
from openeas.controller.rollout_loop import RolloutController
from openeas.errors import Conflict, OpenEASError, SpecError
from openeas.gateway.limit_flags import gateway_limit_args
from openeas.gateway.routing.notify import RoutingNotifier, socket_paths
from openeas.gateway.workers import check_workers
from openeas.gateway_fleet import FleetAcks, FleetCollector, receive_remote_stats
from openeas.gateway_keeper import GatewayKeeper, ServerError, bind_listener, wait_http
from openeas.kernel.clock import LOOP_CLOCK
from openeas.kernel.states import ServiceState
from openeas.lifecycle import Component, Loop, run_components
from openeas.procfs import CONTROL_PLANE_OOM_SCORE_ADJ, set_oom_score_adj
from openeas.queue.scale import open_backlog_source
from openeas.runtime.identity import REPLICA_USER, ReplicaUsers, resolve_replica_users
from openeas.runtime.select import Runtimes, build_runtimes
from openeas.spec import load_spec_file
from openeas.storage.cache_metrics import CacheCollector
from openeas.storage.hostpaths import HostPaths, check_request_files, check_spec
from openeas.store import Store
from openeas.store.db import is_postgres
from openeas.store.lease import Lease
from openeas.store.secrets import write_private
from openeas.telemetry import ControlMetrics
from openeas.telemetry.gateway_stats import GatewayStats, receive
from openeas.telemetry.gateway_stats import socket_path as stats_socket_path
from openeas.telemetry.group_stats import DatagramGroupCounters

log = logging.getLogger("openeas.server")


def _lock(data_dir: Path) -> int:
    fd = os.open(data_dir / "server.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ServerError(f"another OpenEAS server is running on {data_dir}") from None
    return fd


def _deploy_files(store: Store, files: Sequence[Path], host_paths: HostPaths) -> None:
    for f in files:
        spec = load_spec_file(f)
        if errors := check_spec(spec, host_paths):
            raise SpecError([f"{f}: {e}" for e in errors])
        try:
            store.create_service(spec)
            log.info("deployed %s from %s", spec.name, f)
        except Conflict:
            if store.get_service(spec.name).state == ServiceState.DELETING:
                raise
            log.info("service %s already exists; left as it is", spec.name)


class GatewayComponent:
    """The gateway process: started (or adopted) first, watched, stopped last unless kept."""

    name = "gateway keeper"

    def __init__(self, keeper: GatewayKeeper, url: str, keep: bool) -> None:
        self.keeper, self.url, self.keep = keeper, url, keep
        self.lease: LeaseKeeper | None = None  # a lost lease leaves the gateway to the new active

    async def open(self) -> None:
        """Spawn or adopt the gateway and wait until it answers."""
        gateway = await asyncio.to_thread(self.keeper.start)
        await asyncio.to_thread(wait_http, f"{self.url}/healthz", 30.0, gateway.proc)

    async def start(self, stop: asyncio.Event) -> asyncio.Task[None] | None:
        if self.keeper.gw is None:
            await self.open()
        return asyncio.create_task(self.keeper.watch(), name=self.name)

    async def stop(self) -> None:
        # After the replicas: their drains ask the gateway about requests in flight.
        if not self.keep and not (self.lease is not None and self.lease.lost):
            await asyncio.to_thread(self.keeper.stop)


# On the way down, requests still running after this many seconds are cancelled (a console tab's
# live streams end at once by themselves: console/live.py).
API_SHUTDOWN_GRACE_S = 10  # seconds (uvicorn takes whole seconds)


class ApiComponent:
    """The control-plane API (uvicorn) on a socket bound before anything started."""

    name = "API server"

    def __init__(self, app: Any, sock: socket.socket) -> None:
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=API_SHUTDOWN_GRACE_S,
        )
        config.load()  # here, not in serve(): a hot standby has it done before it wins the lease
        self.server, self.sock = _ApiServer(config), sock
        self.task: asyncio.Task[None] | None = None

    async def start(self, stop: asyncio.Event) -> asyncio.Task[None] | None:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]), name=self.name)
        while not self.server.started:
            if self.task.done():
                raise ServerError(f"the API server stopped while starting: {self.task.exception()!r}")
            await asyncio.sleep(0.02)
        return self.task

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


class ServerInfo:
    """`DIR/server.json` (mode 0600) once everything answers; removed first on the way down."""

    name = "server.json"

    def __init__(self, data_dir: Path, info: dict[str, Any], since: float | None = None) -> None:
        self.data_dir, self.path, self.info = data_dir, data_dir / "server.json", info
        self.since = since  # time.monotonic() when the components began to start (the lease won)

    async def start(self, stop: asyncio.Event) -> asyncio.Task[None] | None:
        if self.since is not None:
            up_s = time.monotonic() - self.since
            log.info("components up in %.2f s (at %.3f, epoch seconds)", up_s, time.time())
        write_private(self.path, json.dumps(self.info, indent=2).encode())
        print(
            f"OpenEAS server ready: api {self.info['api_url']}  gateway {self.info['gateway_url']}",
            flush=True,
        )
        return None

    async def stop(self) -> None:
        self.path.unlink(missing_ok=True)


async def _serve(
    *,
    data_dir: Path,
    host: str,
    port: int,
    gateway_port: int,
    deploy: Sequence[Path],
    oss_root: Path | None,
    keep_replicas: bool,
    public_metrics: bool = False,
    registry_auth: Path | None = None,
    gateway_args: Sequence[str] = (),
    node: Resources | None = None,
    replica_user: str | None = REPLICA_USER,
    host_paths: HostPaths | None = None,
    store_url: str | None = None,
    gateway_workers: int = 1,
) -> None:
    host_paths = host_paths or HostPaths.build([oss_root] if oss_root else [])
    # A node out of memory loses replicas, never the control plane that can scale them back.
    set_oom_score_adj(CONTROL_PLANE_OOM_SCORE_ADJ)
    users = await _replica_users(data_dir, replica_user)
    store = Store(data_dir, url=store_url)  # None: SQLite in the data dir
    if store_url is not None:  # the gateway reads the same store (and LISTENs on it)
        # Its counters come by this machine's socket; gateways elsewhere sign them over UDP.
        stats_sock = str(stats_socket_path(data_dir))
        gateway_args = [*gateway_args, "--store", store_url, "--stats-socket", stats_sock]
    # Routing changes are pushed: after each commit that changed what is routed, a datagram tells
    # the gateway to re-read the store now (it also polls, slowly, as a safety net).
    keeper = GatewayKeeper(data_dir, host, gateway_port, gateway_args)
    notifier = RoutingNotifier(socket_paths(data_dir, gateway_workers), keeper.name)
    store.add_routing_listener(notifier)
    # The routing wait covers every registered gateway, on this machine or not (gateway_fleet.py).
    fleet = FleetAcks(store, notifier)
    gateway_url = f"http://{host}:{gateway_port}"
    api_sock = bind_listener(host, port, "API")  # first: a taken port fails before anything starts
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # handlers only record the signal
    gateway = GatewayComponent(keeper, gateway_url, keep=keep_replicas)
    api_url = f"http://{host}:{port}"
    # On PostgreSQL, servers sharing the store take turns: the one holding the lease acts, the
    # others stand by (openeas.control_lease; docs/cluster.md).
    lease = LeaseKeeper(Lease(store_url, api_url)) if store_url and is_postgres(store_url) else None
    gateway.lease = lease
    try:
        await gateway.open()  # before the deploy files: a spec's first replicas are routed
        # Before the lease: a standby that takes over has its runtimes (a Ray driver connects in
        # seconds) ready. Servers sharing a store share its replicas (their Ray namespace).
        shared = store_url if lease is not None else None
        runtimes = await asyncio.to_thread(
            build_runtimes, data_dir, registry_auth=registry_auth, shared_store=shared
        )
        log.info("%s", runtimes.summary())
        runtimes.process_warning = users.warning()
        compose = functools.partial(_compose, store, runtimes, users, host_paths, oss_root, gateway_url,
                                    fleet, node, public_metrics, api_sock, keep_replicas, lease,
                                    gateway_workers)  # fmt: skip
        prepared = await _standby(lease, api_sock, stop, compose) if lease is not None else []
        if prepared is None:  # stopped while standing by
            return
        won = time.monotonic()
        _deploy_files(store, deploy, host_paths)
        components = prepared or compose()
        info = {"gateway_url": gateway_url, "api_url": api_url, "pid": os.getpid()}
        server_info = ServerInfo(data_dir, {**info, "admin_token": store.admin_token()}, since=won)
        first: list[Component] = [gateway] if lease is None else [gateway, lease]
        await run_components([*first, *components, server_info], stop)
        if lease is not None and lease.lost:  # the replicas and gateway stay, for the new active
            raise ServerError("the control-plane lease was lost (store session ended); a standby acts now")
    finally:
        (data_dir / "server.json").unlink(missing_ok=True)
        api_sock.close()
        notifier.close()
        fleet.close()
        if not keep_replicas and not (lease is not None and lease.lost):
            keeper.stop()  # idempotent: also when a component failed to start


async def _standby(
    lease: LeaseKeeper, api_sock: socket.socket, stop: asyncio.Event, compose: Callable[[], list[Component]]
) -> list[Component] | None:
    """Wait for the lease as a hot standby: the components are built (constructed, nothing
    started: they do not act on the world) while it waits, so winning only starts them. The
    components (empty: the lease was free at once, build them now); None: stopped meanwhile."""
    prepared: list[Component] = []
    waited = await wait_for_lease(lease.lease, api_sock, stop, prepare=lambda: prepared.extend(compose()))
    if waited is None:
        return None
    log.info("active after %.2f s as a standby (lease won at %.3f, epoch s)", waited, time.time())
    return prepared


async def _replica_users(data_dir: Path, replica_user: str | None) -> ReplicaUsers:
    """Who process replicas run as; sets the data dir's modes to match (before the store opens)."""
    env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}
    users = await asyncio.to_thread(resolve_replica_users, data_dir, replica_user, env)
    if users.problem is None:
        log.info("process replicas run as users of their own (group %s)", users.name)
    else:
        log.warning("%s", users.warning())
    return users


def _compose(
    store: Store,
    runtimes: Runtimes,
    users: ReplicaUsers,
    host_paths: HostPaths,
    oss_root: Path | None,
    gateway_url: str,
    fleet: FleetAcks,
    node: Resources | None,
    public_metrics: bool,
    api_sock: socket.socket,
    keep_replicas: bool,
    lease: LeaseKeeper | None = None,
    gateway_workers: int = 1,
) -> list[Component]:
    """The server's components, wired at construction, in start order (they stop in reverse)."""
    metrics = ControlMetrics(store)
    # The one channel from the gateways: per service arrivals, in flight, held; per replica in flight
    # and routed; every 0.2 s. The autoscaler (a held request wakes it), drain, scale-in, meter read it.
    gateway_stats = GatewayStats(LOOP_CLOCK.now)
    metrics.set_container_engine(runtimes.engine)
    metrics.add_collector(FleetCollector(fleet))  # live gateways, each one's routing-version lag
    cfg = SupervisorConfig(
        data_dir=store.data_dir,
        oss_root=oss_root,
        host_paths=host_paths,
        on_ready=metrics.observe_cold_start,
        gateway_view=gateway_view(gateway_stats),
        replica_users=users,
    )
    reconciler = _reconciler(store, runtimes, cfg, node, gateway_stats)
    autoscaler, idle, requests = _autoscaling(store, gateway_stats, reconciler, metrics)
    metrics.add_collector(CacheCollector(reconciler.cache))  # the node cache's size, hit ratio
    # Staged rollouts of service groups: state in the store, the candidate's counters from the gateway.
    # A rollback's restored routes are acknowledged by the gateways before it says so.
    rollouts = RolloutController(
        store, DatagramGroupCounters(gateway_stats), await_routing=fleet.wait_applied
    )
    # A job stored before the host-path rule (or with folders no longer allowed) fails when run.
    check_files = functools.partial(check_request_files, host_paths)
    batch = BatchRunner(store, gateway_url, on_change=reconciler.wake, check_files=check_files)
    cp = ControlPlane(
        store,
        gateway_url,
        wake=reconciler.wake,
        metrics=metrics,
        runtimes=runtimes,
        autoscaler=autoscaler,
        gateway_stats=gateway_stats,
        rollout_controller=rollouts,
        # Calls that promise a routing change is in effect wait for the gateway's acknowledgement.
        await_routing=fleet.wait_applied,
        batch_wake=batch.wake,
        host_paths=host_paths,
        idle_watch=idle,
        node_cache=reconciler.cache,
        specs=reconciler.specs,
        baker=Baker(store, reconciler.prefetch, runtimes.container_engine, runtimes.engine_problem),
    )

    async def shutdown() -> None:
        # A lost lease leaves the replicas to the server that holds it now.
        await reconciler.shutdown(stop_replicas=not keep_replicas and not (lease is not None and lease.lost))

    data_dir = store.data_dir
    app = create_app(cp, public_metrics=public_metrics)
    console = add_console(app, cp)  # the web console under /console (openeas.console)
    return [
        Loop("reconciler", reconciler.run, on_stop=shutdown),
        Loop("rollouts", rollouts.run),
        Loop("gateway counters", lambda stop: receive(data_dir, gateway_stats, stop)),
        *_remote_counters(store, api_sock, gateway_stats),
        Loop("autoscaler", autoscaler.run),
        # least-waiting / least-kv services: their replicas' engine load, pushed to the gateway.
        Loop("engine load", EngineLoadScraper(store, data_dir, gateway_workers=gateway_workers).run),
        Loop("idle-spend watch", idle.run),
        Loop("request meter", requests.run),  # requests by service and UTC hour, for the meter
        # The 180-day rule (docs/archive.md): dormant services warned, archived, deleted.
        Loop("archiver", Archiver(store, LOOP_CLOCK, wake=reconciler.wake).run),
        Loop("batch runner", batch.run),
        Loop("console", console.run),
        ApiComponent(app, api_sock),
    ]


def _remote_counters(store: Store, api_sock: socket.socket, stats: GatewayStats) -> list[Component]:
    """On a shared store (PostgreSQL), gateways on other machines send signed counters over UDP
    to the API's address (gateway_fleet.receive_remote_stats); on SQLite every gateway is here."""
    if not is_postgres(store.url):
        return []
    host = api_sock.getsockname()[0]
    return [Loop("remote gateway counters", lambda stop: receive_remote_stats(store, host, stats, stop))]


def _reconciler(
    store: Store, runtimes: Runtimes, cfg: SupervisorConfig, node: Resources | None, stats: GatewayStats
) -> Reconciler:
    """The reconciler, admitting replicas on ``node`` (default: this machine's cores and memory;
    on the Ray runtime no bound of ours: Ray places each replica where its resources fit)."""
    if node is None and runtimes.process.name == "ray":
        capacity = Resources(cpu=math.inf, memory_mb=math.inf)
        log.info("replicas are admitted by the Ray cluster's resources (no --node-cpu/--node-memory)")
    else:
        capacity = node or node_capacity()
        log.info("replicas are admitted on %g cores and %.0f MB", capacity.cpu, capacity.memory_mb)
    # Scale-in stops the least busy replica first: each replica's in-flight requests, pushed.
    load = lambda: stats.replica_in_flight(LOOP_CLOCK.now())  # noqa: E731
    return Reconciler(store, runtimes, cfg, replica_load=load, capacity=capacity)


def _autoscaling(
    store: Store, gateway_stats: GatewayStats, reconciler: Reconciler, metrics: ControlMetrics
) -> tuple[Autoscaler, IdleWatch, RequestMeter]:
    """The autoscaler (woken by the gateways' held requests), the idle-spend watch that prices
    its decisions, both with their metrics, and the request meter (the gateways' counts, stored)."""
    backlogs = open_backlog_source(store.data_dir)  # async services' queues: the `backlog` metric
    autoscaler = Autoscaler(
        store,
        traffic=gateway_stats,
        sources=[ReplicaScraper(), ProcessSampler(), NvmlSampler(), QueueBacklog(backlogs)],
        # Async services: a backlog at 0 replicas starts one (autoscaler/activation.py).
        activation=QueueActivation(store, backlogs),
        wake_reconciler=reconciler.wake,
    )
    gateway_stats.on_demand = autoscaler.wake
    metrics.add_collector(autoscaler.collector())
    # The idle-spend alarm (issue 24 §4): the autoscaler's decisions, priced (api/idle.py).
    idle = IdleWatch(store, autoscaler.status, server_catalog, LOOP_CLOCK)
    metrics.add_collector(idle)
    return autoscaler, idle, RequestMeter(store, gateway_stats, LOOP_CLOCK, interval_s=meter_interval())


def gateway_view(stats: GatewayStats, timeout_s: float = 1.0) -> GatewayViewFn:
    """What a drain asks: a replica as every live gateway reported it in a datagram received after
    the question (so never a report from before the replica left the routing table); None when
    no gateway is alive or none reported within ``timeout_s`` (the drain then waits ``drain_s``)."""

    async def view(replica_id: str) -> GatewayView | None:
        asked = stats.clock()
        while (seen := stats.replica(replica_id, stats.clock(), since=asked)) is None:
            if stats.clock() - asked >= timeout_s:
                return None
            await LOOP_CLOCK.sleep(GATEWAY_VIEW_POLL_S)
        return GatewayView(routed=seen.routed, in_flight=seen.in_flight)

    return view


GATEWAY_VIEW_POLL_S = 0.02  # seconds between two looks for a fresh gateway report (a drain)


class _ApiServer(uvicorn.Server):
    """uvicorn without its own signal handling: this process's handlers only set `stop`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def check_gateway_workers(n: int) -> int:
    """``--gateway-workers``: 1 to 4 per core; a `SpecError` naming the flag otherwise."""
    try:
        return check_workers(n, field="--gateway-workers")
    except ValueError as exc:
        raise SpecError([str(exc)]) from None


def _gateway_args(gateway_limits: Sequence[str], gateway_workers: int) -> list[str]:
    """The gateway's command-line flags; invalid input: exit 2 before anything starts."""
    try:
        gateway_args = gateway_limit_args(gateway_limits)
        check_gateway_workers(gateway_workers)
    except SpecError as exc:
        for line in exc.errors:
            print(f"error: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    return gateway_args + (["--workers", str(gateway_workers)] if gateway_workers > 1 else [])  # workers.py


def _node(node_cpu: float | None, node_memory_mb: float | None) -> Resources | None:
    """None: this machine's resources (embedded) or no bound of ours (Ray places the replicas)."""
    return None if node_cpu is None and node_memory_mb is None else node_capacity(node_cpu, node_memory_mb)


def run_server(
    *,
    data_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    gateway_port: int = 8081,
    deploy: Sequence[Path] = (),
    oss_root: Path | None = None,
    keep_replicas: bool = False,
    public_metrics: bool = False,
    registry_auth: Path | None = None,
    gateway_limits: Sequence[str] = (),
    node_cpu: float | None = None,
    node_memory_mb: float | None = None,
    replica_user: str | None = REPLICA_USER,
    allow_host_paths: Sequence[Path] = (),
    nfs_exports: Sequence[str] = (),
    store_url: str | None = None,
    gateway_workers: int = 1,
) -> None:
    """``store_url``: None for SQLite in the data dir, or ``postgresql://…``;
    ``allow_host_paths``: host folders specs may name (besides the local bucket, ``oss_root``);
    ``nfs_exports``: ``SERVER:/EXPORT=DIR``, where NFS exports are mounted on this node."""
    logging.basicConfig(
        level=os.environ.get("OPENEAS_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    gateway_args = _gateway_args(gateway_limits, gateway_workers)
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    lock: int | None = None
    # Exit codes, as for every `openeas` command: 1 server error, 2 invalid input, 130 Ctrl-C
    # before the server is up (once up, SIGTERM and Ctrl-C are a graceful stop: 0).
    try:
        lock = _lock(data_dir)
        bucket = (oss_root or data_dir / "oss").resolve()
        try:
            host_paths = HostPaths.build([bucket, *allow_host_paths], nfs_exports)
        except ValueError as exc:
            raise SpecError([str(exc)]) from None
        asyncio.run(
            _serve(
                data_dir=data_dir,
                host=host,
                port=port,
                gateway_port=gateway_port,
                deploy=list(deploy),
                oss_root=bucket,
                keep_replicas=keep_replicas,
                public_metrics=public_metrics,
                registry_auth=registry_auth,
                gateway_args=gateway_args,
                node=_node(node_cpu, node_memory_mb),
                replica_user=replica_user,
                host_paths=host_paths,
                store_url=store_url,
                gateway_workers=gateway_workers,
            )
        )
    except SpecError as exc:  # a bad --deploy spec
        print("error: invalid spec", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(2) from None
    except (ServerError, OpenEASError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if lock is not None:
            os.close(lock)
