"""`openeas server`: control-plane API + reconciler in this process, the gateway in another.

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
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import uvicorn

from openeas.api.app import ControlPlane, create_app
from openeas.api.cost import server_catalog
from openeas.api.idle import IdleWatch
from openeas.autoscaler.backlog import QueueBacklog
from openeas.autoscaler.loop import Autoscaler, replica_load
from openeas.autoscaler.process import NvmlSampler, ProcessSampler
from openeas.autoscaler.scrape import GatewayScrape, ReplicaScraper
from openeas.batch import BatchRunner
from openeas.controller.capacity import Resources, node_capacity
from openeas.controller.reconciler import Reconciler
from openeas.controller.replica import PRIVATE_ENV, GatewayView, GatewayViewFn, SupervisorConfig
from openeas.controller.rollout_loop import RolloutController
from openeas.errors import Conflict, OpenEASError, SpecError
from openeas.gateway.limit_flags import gateway_limit_args
from openeas.gateway.metrics import label_value
from openeas.gateway.notify import RoutingNotifier, socket_path
from openeas.kernel.clock import LOOP_CLOCK
from openeas.kernel.states import ServiceState
from openeas.procfs import CONTROL_PLANE_OOM_SCORE_ADJ, same_process, set_oom_score_adj, start_ticks
from openeas.queue.scale import open_backlog_source, queue_args, wake_from_zero
from openeas.runtime.identity import REPLICA_USER, resolve_replica_users
from openeas.runtime.select import build_runtimes
from openeas.spec import load_spec_file
from openeas.storage.hostpaths import HostPaths, check_spec
from openeas.store import Store
from openeas.store.groups import GroupStore
from openeas.store.secrets import write_private
from openeas.telemetry import ControlMetrics
from openeas.telemetry.gateway_stats import GatewayStats, receive
from openeas.telemetry.group_stats import GatewayGroupStats

log = logging.getLogger("openeas.server")


class ServerError(Exception):
    pass


def _lock(data_dir: Path) -> int:
    fd = os.open(data_dir / "server.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ServerError(f"another OpenEAS server is running on {data_dir}") from None
    return fd


def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"process for {url} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise ServerError(f"{url} did not answer within {timeout_s:.0f}s")


def _bind(host: str, port: int, what: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServerError(f"{what} port {host}:{port} is not available ({exc.strerror})") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _wait_port_free(host: str, port: int, timeout_s: float, what: str) -> None:
    """Wait for `port` to be bindable (a gateway of a killed server may still be going away)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _bind(host, port, what).close()
            return
        except ServerError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


# The gateway's seconds to finish requests in flight after SIGTERM (its --grace).
GATEWAY_GRACE_S = 10.0
# How often the server checks that its gateway still runs, seconds.
GATEWAY_WATCH_S = 0.5


class GatewayProcess:
    """The gateway: a child of this server, or adopted from an earlier one (pid + start ticks).

    It runs in a session of its own and outlives the server (kill -9 included): the data plane
    keeps serving the last routing table in the store while no control plane runs.
    """

    def __init__(self, pid: int, ticks: int | None, proc: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.start_ticks = ticks
        self.proc = proc  # None: adopted, not our child (watched by pid + start ticks)

    @property
    def adopted(self) -> bool:
        return self.proc is None

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None  # reaps it
        return same_process(self.pid, self.start_ticks)

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def wait(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self, grace_s: float = GATEWAY_GRACE_S) -> None:
        """SIGTERM: it stops accepting and finishes its requests in flight; SIGKILL after grace."""
        self.signal(signal.SIGTERM)
        if not self.wait(grace_s + 2.0):
            self.signal(signal.SIGKILL)
            self.wait(5.0)


def gateway_record_path(data_dir: Path) -> Path:
    """Where the running gateway is recorded (pid, start ticks, address, code fingerprint)."""
    return data_dir / "run" / "gateway.json"


def recorded_gateway(data_dir: Path) -> tuple[GatewayProcess, dict[str, object]] | None:
    """The gateway an earlier server recorded, if that very process (pid + start ticks) still runs."""
    try:
        rec = json.loads(gateway_record_path(data_dir).read_text())
        gw = GatewayProcess(int(rec["pid"]), int(rec["start_ticks"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (gw, rec) if gw.alive() else None


def _gateway_argv(data_dir: Path, host: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "openeas.gateway",
        "--host",
        host,
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--reuse-port",
        "--grace",
        str(GATEWAY_GRACE_S),
        *queue_args(),
        *extra,
    ]


def _gateway_fingerprint(argv: list[str]) -> str:
    """Same fingerprint = same gateway code and arguments: a running gateway can be adopted."""
    h = hashlib.sha256(json.dumps(argv).encode())
    pkg = Path(__file__).parent
    shared = [pkg / "procfs.py", pkg / "unixdgram.py", pkg / "telemetry" / "gateway_stats.py"]
    for f in sorted([*(pkg / "gateway").glob("*.py"), *(pkg / "queue").glob("*.py"), *shared]):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _spawn_gateway(
    data_dir: Path, host: str, port: int, extra: Sequence[str] = (), timeout_s: float = 30.0
) -> GatewayProcess:
    """Start a gateway and wait until it listens (its ready file: another gateway may answer on
    the same port meanwhile)."""
    (data_dir / "logs").mkdir(exist_ok=True)
    (data_dir / "run").mkdir(mode=0o700, exist_ok=True)
    ready = data_dir / "run" / f"gateway.ready.{os.getpid()}.{time.monotonic_ns()}"
    logf = open(data_dir / "logs" / "gateway.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [*_gateway_argv(data_dir, host, port, extra), "--ready-file", str(ready)],
        stdout=logf,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        # Its own session: neither the server's death nor a Ctrl-C to its process group stops it.
        start_new_session=True,
    )
    logf.close()
    deadline = time.monotonic() + timeout_s
    try:
        while not ready.exists():
            if proc.poll() is not None:
                raise ServerError(f"the gateway exited with code {proc.returncode} (see logs/gateway.log)")
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise ServerError(f"the gateway did not listen on {host}:{port} within {timeout_s:.0f}s")
            time.sleep(0.02)
    finally:
        ready.unlink(missing_ok=True)
    return GatewayProcess(proc.pid, start_ticks(proc.pid), proc)


def _record(data_dir: Path, gw: GatewayProcess, host: str, port: int, fingerprint: str) -> None:
    rec = {
        "pid": gw.pid,
        "start_ticks": gw.start_ticks,
        "host": host,
        "port": port,
        "fingerprint": fingerprint,
    }
    write_private(gateway_record_path(data_dir), json.dumps(rec, indent=2).encode())


def start_gateway(data_dir: Path, host: str, port: int, extra: Sequence[str] = ()) -> GatewayProcess:
    """The gateway for this server: the running one of an earlier server on ``data_dir`` when it
    is compatible (same code and arguments) and answers, else a new one.

    An incompatible running gateway on the same address is replaced without a refused
    connection: the new one listens on the same port (SO_REUSEPORT) first, then the old one gets
    SIGTERM (it stops accepting and finishes its requests in flight)."""
    fingerprint = _gateway_fingerprint(_gateway_argv(data_dir, host, port, extra))
    found = recorded_gateway(data_dir)
    if found is not None:
        old, rec = found
        if rec.get("fingerprint") == fingerprint and _answers(f"http://{host}:{port}/healthz"):
            log.info("adopted the running gateway (pid %d)", old.pid)
            return old
        if (rec.get("host"), rec.get("port")) == (host, port):
            try:
                new = _spawn_gateway(data_dir, host, port, extra)
            except ServerError as exc:  # e.g. the old one does not share its port
                log.warning("could not start a gateway next to the running one (%s); replacing it", exc)
            else:
                _record(data_dir, new, host, port, fingerprint)
                log.info("replacing the running gateway (pid %d) by pid %d", old.pid, new.pid)
                old.stop()
                return new
        log.info("stopping the running gateway (pid %d): other code or address", old.pid)
        old.stop()
    _wait_port_free(host, port, 10.0, "gateway")
    new = _spawn_gateway(data_dir, host, port, extra)
    _record(data_dir, new, host, port, fingerprint)
    return new


class GatewayKeeper:
    """Keeps a gateway running for this server: restarts one that died (the server goes on)."""

    def __init__(self, data_dir: Path, host: str, port: int, extra: Sequence[str] = ()) -> None:
        self.data_dir, self.host, self.port = data_dir, host, port
        self.extra = list(extra)  # more gateway flags (its client limits)
        self.gw: GatewayProcess | None = None

    def start(self) -> GatewayProcess:
        self.gw = start_gateway(self.data_dir, self.host, self.port, self.extra)
        return self.gw

    def name(self) -> str:
        """The gateway, as an answer that it did not acknowledge names it."""
        gw = self.gw
        pid = f"pid {gw.pid}" if gw is not None and gw.alive() else "not running"
        return f"the gateway on {self.host}:{self.port} ({pid}, {self.data_dir / 'run' / 'gateway.sock'})"

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(GATEWAY_WATCH_S)
            gw = self.gw
            if gw is None or gw.alive():
                continue
            code = gw.proc.returncode if gw.proc is not None else None
            log.error("the gateway (pid %d) exited (code %s); starting a new one", gw.pid, code)
            try:
                self.gw = await asyncio.to_thread(self.start)
            except ServerError as exc:
                log.error("could not restart the gateway: %s; trying again", exc)
                await asyncio.sleep(2.0)

    def stop(self) -> None:
        if self.gw is not None:
            self.gw.stop()
            self.gw = None
        gateway_record_path(self.data_dir).unlink(missing_ok=True)


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
) -> None:
    host_paths = host_paths or HostPaths.build([oss_root] if oss_root else [])
    # A node out of memory loses replicas, never the control plane that can scale them back.
    set_oom_score_adj(CONTROL_PLANE_OOM_SCORE_ADJ)
    # Who process replicas run as; sets the data dir's modes to match (before the store opens).
    env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}
    users = await asyncio.to_thread(resolve_replica_users, data_dir, replica_user, env)
    if users.problem is None:
        log.info("process replicas run as users of their own (group %s)", users.name)
    else:
        log.warning("%s", users.warning())
    store = Store(data_dir)
    # Routing changes are pushed: after each commit that changed what is routed, a datagram tells
    # the gateway to re-read the store now (it also polls, slowly, as a safety net).
    keeper = GatewayKeeper(data_dir, host, gateway_port, gateway_args)
    notifier = RoutingNotifier(socket_path(data_dir), keeper.name)
    store.add_routing_listener(notifier)
    gateway_url = f"http://{host}:{gateway_port}"
    api_url = f"http://{host}:{port}"
    api_sock = _bind(host, port, "API")  # first: a taken port fails before anything starts
    reconciler: Reconciler | None = None
    try:
        gateway = await asyncio.to_thread(keeper.start)
        await asyncio.to_thread(_wait_http, f"{gateway_url}/healthz", 30.0, gateway.proc)
        _deploy_files(store, deploy, host_paths)
        metrics = ControlMetrics(store)
        cfg = SupervisorConfig(
            data_dir=data_dir,
            oss_root=oss_root,
            host_paths=host_paths,
            on_ready=metrics.observe_cold_start,
            gateway_view=gateway_view(host, gateway_port),
            replica_users=users,
        )
        runtimes = await asyncio.to_thread(build_runtimes, data_dir, registry_auth=registry_auth)
        log.info("%s", runtimes.summary())
        runtimes.process_warning = users.warning()
        metrics.set_container_engine(runtimes.engine)
        # The gateway's /metrics, scraped: each replica's in-flight requests (scale-in stops the
        # least busy replica first).
        gw_scrape = GatewayScrape(gateway_url)
        capacity = node or node_capacity()
        log.info("replicas are admitted on %g cores and %.0f MB", capacity.cpu, capacity.memory_mb)
        reconciler = Reconciler(store, runtimes, cfg, replica_load=replica_load(gw_scrape), capacity=capacity)
        # The gateways' per-service counters (arrivals, in flight, held), pushed every 0.2 s, in time
        # windows: what the autoscaler reads; a held request wakes it at once (scale from zero).
        gateway_stats = GatewayStats(LOOP_CLOCK.now)
        backlogs = open_backlog_source(data_dir)  # async services' queues: the `backlog` metric
        autoscaler = Autoscaler(
            store,
            traffic=gateway_stats,
            gateway=gw_scrape,
            sources=[ReplicaScraper(), ProcessSampler(), NvmlSampler(), QueueBacklog(backlogs)],
            wake_reconciler=reconciler.wake,
        )
        gateway_stats.on_demand = autoscaler.wake
        metrics.add_collector(autoscaler.collector())
        cp = ControlPlane(
            store,
            gateway_url,
            wake=reconciler.wake,
            metrics=metrics,
            runtimes=runtimes,
            autoscaler=autoscaler,
        )
        cp.host_paths = host_paths
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)  # handlers only record the signal
        app = create_app(cp, public_metrics=public_metrics)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        api = _ApiServer(config)
        api_task = asyncio.create_task(api.serve(sockets=[api_sock]))
        while not api.started:
            if api_task.done():
                raise ServerError(f"the API server stopped while starting: {api_task.exception()!r}")
            await asyncio.sleep(0.02)
        rec_task = asyncio.create_task(reconciler.run(stop))
        # Staged rollouts of service groups: state in the store, the candidate's counters from the gateway.
        rollouts = RolloutController(store, GatewayGroupStats(gateway_url, GroupStore(store).token))
        cp.rollout_controller = rollouts
        # Calls that promise a routing change is in effect wait for the gateway's acknowledgement.
        cp.await_routing = notifier.wait_applied
        rollout_task = asyncio.create_task(rollouts.run(stop))
        cp.gateway_stats = gateway_stats
        stats_task = asyncio.create_task(receive(data_dir, gateway_stats, stop))
        scaler_task = asyncio.create_task(autoscaler.run(stop))
        # The idle-spend alarm (issue 24 §4): the autoscaler's decisions, priced (api/idle.py).
        cp.idle_watch = IdleWatch(store, autoscaler.status, server_catalog, LOOP_CLOCK)
        metrics.add_collector(cp.idle_watch)
        idle_task = asyncio.create_task(cp.idle_watch.run(stop))
        # Async services: a backlog at 0 replicas starts one (openeas.queue.scale).
        files_rule = cp.request_file_problems
        batch = BatchRunner(store, gateway_url, on_change=reconciler.wake, check_files=files_rule)
        cp.batch_wake = batch.wake
        batch_task = asyncio.create_task(batch.run(stop))
        queue_task = asyncio.create_task(
            wake_from_zero(store, backlogs, stop, on_wake=lambda _: reconciler.wake())
        )
        server_info = {"gateway_url": gateway_url, "api_url": api_url, "pid": os.getpid()}
        write_private(
            data_dir / "server.json",
            json.dumps({**server_info, "admin_token": cp.admin_token}, indent=2).encode(),
        )
        print(f"OpenEAS server ready: api {api_url}  gateway {gateway_url}  data {data_dir}", flush=True)
        done_task = asyncio.create_task(stop.wait())
        await asyncio.wait(
            {
                done_task,
                api_task,
                rec_task,
                stats_task,
                rollout_task,
                queue_task,
                batch_task,
                asyncio.create_task(keeper.watch()),
            },
            return_when=asyncio.FIRST_COMPLETED,
        )
        stop.set()
        (data_dir / "server.json").unlink(missing_ok=True)
        api.should_exit = True
        tasks = (api_task, rec_task, stats_task, scaler_task, rollout_task, queue_task, batch_task, idle_task)
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        (data_dir / "server.json").unlink(missing_ok=True)
        if reconciler is not None:
            await reconciler.shutdown(stop_replicas=not keep_replicas)
        api_sock.close()
        notifier.close()
        if not keep_replicas:
            keeper.stop()  # after the replicas: their drains ask the gateway about requests in flight


def gateway_view(host: str, port: int, timeout_s: float = 1.0) -> GatewayViewFn:
    """What a drain asks: the gateway's per-replica gauges from its /metrics (None: unreachable)."""

    async def view(replica_id: str) -> GatewayView | None:
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection(host, port)
                try:
                    writer.write(b"GET /metrics HTTP/1.1\r\nHost: openeas\r\nConnection: close\r\n\r\n")
                    raw = await reader.read()
                finally:
                    writer.close()
        except (OSError, TimeoutError):
            return None
        head, _, body = raw.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            return None
        return parse_replica_view(body.decode("utf-8", "replace"), replica_id)

    return view


def parse_replica_view(metrics_text: str, replica_id: str) -> GatewayView:
    """A replica's `GatewayView` from the gateway's /metrics text; absent = neither routed nor busy."""
    label = '{replica="' + label_value(replica_id) + '"} '
    routed, in_flight = False, 0
    for line in metrics_text.splitlines():
        if line.startswith("openeas_gateway_replica_in_flight" + label):
            in_flight = int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("openeas_gateway_replica_routed" + label):
            routed = line.rsplit(" ", 1)[1] != "0"
    return GatewayView(routed=routed, in_flight=in_flight)


class _ApiServer(uvicorn.Server):
    """uvicorn without its own signal handling: this process's handlers only set `stop`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


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
) -> None:
    """``allow_host_paths``: host folders specs may name (besides the local bucket, ``oss_root``);
    ``nfs_exports``: ``SERVER:/EXPORT=DIR``, where NFS exports are mounted on this node."""
    logging.basicConfig(
        level=os.environ.get("OPENEAS_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        gateway_args = gateway_limit_args(gateway_limits)  # invalid input: exit 2 before anything starts
    except SpecError as exc:
        for line in exc.errors:
            print(f"error: {line}", file=sys.stderr)
        raise SystemExit(2) from None
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
                node=node_capacity(node_cpu, node_memory_mb),
                replica_user=replica_user,
                host_paths=host_paths,
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
