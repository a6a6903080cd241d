"""`openeas server`: control-plane API + reconciler in this process, the gateway in a child.

The gateway is the hot path, so it runs in a process of its own (pinnable to a core, unaffected
by control-plane work) and reads the routing table from the store. Once both answer,
`DIR/server.json` (mode 0600) tells the CLI and scripts where they are (docs/cli.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import fcntl
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
from openeas.controller.reconciler import Reconciler
from openeas.controller.replica import GatewayView, GatewayViewFn, SupervisorConfig
from openeas.errors import Conflict, OpenEASError, SpecError
from openeas.gateway.notify import RoutingNotifier, socket_path
from openeas.runtime import get_runtime
from openeas.spec import load_spec_file
from openeas.states import ServiceState
from openeas.store import Store
from openeas.store.secrets import write_private
from openeas.telemetry import ControlMetrics

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


def _die_with_parent() -> None:
    """In the gateway child: the kernel kills it when the server dies, even by kill -9, so a
    restarted server finds its port free. The gateway holds no state worth a graceful exit."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


PR_SET_PDEATHSIG = 1


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


def start_gateway(data_dir: Path, host: str, port: int) -> subprocess.Popen[bytes]:
    _wait_port_free(host, port, 10.0, "gateway")
    (data_dir / "logs").mkdir(exist_ok=True)
    logf = open(data_dir / "logs" / "gateway.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openeas.gateway",
            "--host",
            host,
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--parent-pid",
            str(os.getpid()),
        ],
        stdout=logf,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    logf.close()
    return proc


def _deploy_files(store: Store, files: Sequence[Path]) -> None:
    for f in files:
        spec = load_spec_file(f)
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
) -> None:
    store = Store(data_dir)
    # Routing changes are pushed: after each commit that changed what is routed, a datagram tells
    # the gateway to re-read the store now (it also polls, slowly, as a safety net).
    notifier = RoutingNotifier(socket_path(data_dir))
    store.add_routing_listener(notifier)
    gateway_url = f"http://{host}:{gateway_port}"
    api_url = f"http://{host}:{port}"
    api_sock = _bind(host, port, "API")  # first: a taken port fails before anything starts
    gateway = start_gateway(data_dir, host, gateway_port)
    reconciler: Reconciler | None = None
    try:
        await asyncio.to_thread(_wait_http, f"{gateway_url}/healthz", 30.0, gateway)
        _deploy_files(store, deploy)
        metrics = ControlMetrics(store)
        cfg = SupervisorConfig(
            data_dir=data_dir,
            oss_root=oss_root,
            on_ready=metrics.observe_cold_start,
            gateway_view=gateway_view(host, gateway_port),
        )
        reconciler = Reconciler(store, get_runtime("process"), cfg)
        cp = ControlPlane(store, gateway_url, wake=reconciler.wake, metrics=metrics)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)  # handlers only record the signal
        config = uvicorn.Config(create_app(cp), log_level="warning", access_log=False, lifespan="off")
        api = _ApiServer(config)
        api_task = asyncio.create_task(api.serve(sockets=[api_sock]))
        while not api.started:
            if api_task.done():
                raise ServerError(f"the API server stopped while starting: {api_task.exception()!r}")
            await asyncio.sleep(0.02)
        rec_task = asyncio.create_task(reconciler.run(stop))
        server_info = {"gateway_url": gateway_url, "api_url": api_url, "pid": os.getpid()}
        write_private(
            data_dir / "server.json",
            json.dumps({**server_info, "admin_token": cp.admin_token}, indent=2).encode(),
        )
        print(f"OpenEAS server ready: api {api_url}  gateway {gateway_url}  data {data_dir}", flush=True)
        done_task = asyncio.create_task(stop.wait())
        await asyncio.wait(
            {done_task, api_task, rec_task, asyncio.create_task(_watch(gateway))},
            return_when=asyncio.FIRST_COMPLETED,
        )
        stop.set()
        (data_dir / "server.json").unlink(missing_ok=True)
        api.should_exit = True
        await asyncio.gather(api_task, rec_task, return_exceptions=True)
    finally:
        (data_dir / "server.json").unlink(missing_ok=True)
        if reconciler is not None:
            await reconciler.shutdown(stop_replicas=not keep_replicas)
        api_sock.close()
        gateway.terminate()
        try:
            gateway.wait(5)
        except subprocess.TimeoutExpired:
            gateway.kill()


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
    label = '{replica="' + replica_id.replace("\\", "\\\\").replace('"', '\\"') + '"} '
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


async def _watch(proc: subprocess.Popen[bytes]) -> None:
    while proc.poll() is None:
        await asyncio.sleep(0.5)
    log.error("gateway exited with code %s; stopping the server", proc.returncode)


def run_server(
    *,
    data_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    gateway_port: int = 8081,
    deploy: Sequence[Path] = (),
    oss_root: Path | None = None,
    keep_replicas: bool = False,
) -> None:
    logging.basicConfig(
        level=os.environ.get("OPENEAS_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    lock: int | None = None
    # Exit codes, as for every `openeas` command: 1 server error, 2 invalid input, 130 Ctrl-C
    # before the server is up (once up, SIGTERM and Ctrl-C are a graceful stop: 0).
    try:
        lock = _lock(data_dir)
        asyncio.run(
            _serve(
                data_dir=data_dir,
                host=host,
                port=port,
                gateway_port=gateway_port,
                deploy=list(deploy),
                oss_root=(oss_root or data_dir / "oss").resolve(),
                keep_replicas=keep_replicas,
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
