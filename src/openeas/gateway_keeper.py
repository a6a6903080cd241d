"""The gateway keeper: spawns the gateway process, adopts a running one, replaces or restarts it.

The gateway runs in a session of its own and outlives the server (kill -9 included). It is
recorded in `DIR/run/gateway.json` (pid, start ticks, address, code fingerprint); the next server
adopts it when it is the same code and arguments and answers, or replaces it (the successor
listens on the same port first). A gateway that dies is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from collections.abc import Sequence
from pathlib import Path

from openeas.procfs import same_process, start_ticks
from openeas.queue.scale import queue_args
from openeas.store.secrets import write_private

log = logging.getLogger("openeas.server")


class ServerError(Exception):
    pass


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
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


def bind_listener(host: str, port: int, what: str) -> socket.socket:
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
            bind_listener(host, port, what).close()
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
    # Subpackages included (gateway/http/..., the kernel the gateway shares with the store).
    loaded = [f for d in ("gateway", "queue", "kernel") for f in (pkg / d).rglob("*.py")]
    for f in sorted([*loaded, *(f for f in shared if f.exists())]):
        h.update(str(f.relative_to(pkg)).encode())
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
        # Taken from ``watch`` first: a gateway stopped here is not one that died and is restarted.
        gw, self.gw = self.gw, None
        if gw is not None:
            gw.stop()
        gateway_record_path(self.data_dir).unlink(missing_ok=True)
