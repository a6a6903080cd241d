"""A real `openeas server` in a subprocess, for end-to-end tests (real processes, real HTTP)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from openeas.runtime import free_port
from openeas.runtime.identity import node_tag
from openeas.sdk import Client

PORT_RETRIES = 2  # a server whose port was taken meanwhile starts again on other ports


class PortTaken(RuntimeError):
    """The server exited because its API or gateway port was taken since it was picked."""


@dataclass
class Server:
    data_dir: Path
    port: int
    gateway_port: int
    proc: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)  # only for the server process
    extra_args: list[str] = field(default_factory=list)  # more `openeas server` options
    own_session: bool = False  # a process group of its own, as a shell gives it (Ctrl-C = killpg)
    # --allow-host-path folders; None: this test run's temporary root (specs naming tmp files deploy)
    host_paths: list[Path] | None = None

    @property
    def api_url(self) -> str:
        return self.info["api_url"]

    @property
    def gateway_url(self) -> str:
        return self.info["gateway_url"]

    @property
    def client(self) -> Client:
        return Client(self.api_url, self.info["admin_token"], gateway_url=self.gateway_url)

    def start(self, timeout_s: float = 60, port_retries: int = PORT_RETRIES) -> Server:
        """Start the server and wait for its server.json. A port that another test's process took
        between `free_port` and the server's bind (3 xdist workers pick ports at once) is picked
        again, ``port_retries`` times at most (0: the test means the port to be taken); any other
        exit is an error."""
        for tries_left in range(port_retries, -1, -1):
            try:
                return self._start_once(timeout_s)
            except PortTaken:
                if not tries_left:
                    raise
                self.port, self.gateway_port = free_port(), free_port()
        raise AssertionError("unreachable")

    def _start_once(self, timeout_s: float) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        out_path = self.data_dir / "server.out"
        log = open(out_path, "ab")  # noqa: SIM115
        said_before = log.tell()  # what earlier starts of this data dir wrote
        (self.data_dir / "server.json").unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "openeas.cli",
                "server",
                "--data-dir",
                str(self.data_dir),
                "--port",
                str(self.port),
                "--gateway-port",
                str(self.gateway_port),
                *[a for p in self._host_paths() for a in ("--allow-host-path", str(p))],
                *self.extra_args,
            ],
            stdout=log,
            env={**self.env(), **self.extra_env},  # as users run it: the data dir in the environment
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=self.own_session,
        )
        deadline = time.monotonic() + timeout_s
        info_path = self.data_dir / "server.json"
        while not info_path.exists():
            if self.proc.poll() is not None:
                out = out_path.read_bytes()[said_before:].decode(errors="replace")[-3000:]
                if "is not available (Address already in use)" in out:
                    raise PortTaken(out)
                raise RuntimeError(f"server exited: {out}")
            if time.monotonic() > deadline:
                # A fixture that raises here never reaches its teardown: stop what started (on a
                # loaded machine leaked servers and gateways made every later start slower still).
                stop_and_reap(self)
                raise RuntimeError(f"server did not write server.json within {timeout_s} s")
            time.sleep(0.05)
        self.info = json.loads(info_path.read_text())
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop the server with `sig` (SIGTERM, or SIGINT as Ctrl-C does); its exit status."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return None if self.proc is None else self.proc.returncode

    def _host_paths(self) -> list[Path]:
        if self.host_paths is not None:
            return self.host_paths
        found = [p for p in self.data_dir.resolve().parents if p.parent.name.startswith("pytest-of-")]
        return found[:1] or [self.data_dir.parent]

    def env(self) -> dict[str, str]:
        return {**os.environ, "OPENEAS_DATA_DIR": str(self.data_dir)}


@contextlib.contextmanager
def reachable_tmp() -> Iterator[Path]:
    """A temporary folder other users can traverse, for a data dir whose replicas run as users of
    their own (pytest's tmp folders are 0700 root's: replicas there run as the server's user)."""
    d = Path(tempfile.mkdtemp(prefix="openeas-test-", dir="/tmp"))
    d.chmod(0o711)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def new_server(data_dir: Path) -> Server:
    return Server(data_dir=data_dir, port=free_port(), gateway_port=free_port())


@dataclass(frozen=True)
class Proc:
    """What the test reads itself about a live process in /proc."""

    pid: int
    state: str  # R, S, D, T, Z, ...
    pgrp: int
    cwd: str | None
    env: dict[str, str]


def read_proc(pid: int) -> Proc | None:
    """The process `pid` as /proc shows it, or None when it is gone or a zombie (a dead process
    its parent has not reaped yet: it runs nothing and holds no port)."""
    base = Path("/proc") / str(pid)
    try:
        stat = (base / "stat").read_bytes()
    except OSError:
        return None
    try:
        raw_env = (base / "environ").read_bytes()
    except OSError:  # not ours to read: still a live process
        raw_env = b""
    # comm (field 2) is in parentheses and may contain spaces or ')': count from the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    state, pgrp = fields[0].decode(), int(fields[2])
    if state in ("Z", "X"):
        return None
    try:
        cwd: str | None = os.readlink(base / "cwd")
    except OSError:
        cwd = None
    env = {}
    for item in raw_env.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return Proc(pid, state, pgrp, cwd, env)


def all_procs() -> list[Proc]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and (p := read_proc(int(name))) is not None:
            out.append(p)
    return out


def replica_processes(data_dir: Path) -> list[int]:
    """Pids of live replica processes of `data_dir`, found by the test's own /proc scan (not the
    product's): a process is one when its environment names this data dir and a replica id
    (what every replica is started with: a hash of the path, never the path), or when it runs inside the data dir's replica work
    folders (what a replica that rewrote its own environment still cannot hide)."""
    node = node_tag(data_dir)
    workdirs = str(data_dir / "replicas") + "/"
    pids = []
    for p in all_procs():
        by_env = "OPENEAS_REPLICA_ID" in p.env and p.env.get("OPENEAS_NODE") == node
        by_cwd = p.cwd is not None and (p.cwd + "/").startswith(workdirs)
        if by_env or by_cwd:
            pids.append(p.pid)
    return sorted(pids)


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (not gone, not a zombie)."""
    return read_proc(pid) is not None


def service_spec(name: str, *, replicas: int = 1, args: str = "", **extra: Any) -> dict[str, Any]:
    """A spec written EAS-style for a fixed container port (8000), serving the built-in test server."""
    spec: dict[str, Any] = {
        "metadata": {"name": name, "instance": replicas, "eas": {"termination_grace_period": 5}},
        "containers": [
            {
                "command": f"python -m openeas.testserver --host 127.0.0.1 --port 8000 {args}".strip(),
                "port": 8000,
                "health_check": {"http_get": {"path": "/health"}, "period_seconds": 1},
            }
        ],
    }
    spec.update(extra)
    return spec


def wait_for(predicate: Any, timeout_s: float = 30, poll_s: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(poll_s)


def recorded_gateway_pid(data_dir: Path) -> int | None:
    """The pid of the gateway recorded in DATA/run/gateway.json, if that process still runs."""
    try:
        rec = json.loads((data_dir / "run" / "gateway.json").read_text())
    except (OSError, ValueError):
        return None
    pid = int(rec["pid"])
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    ticks = int(stat[stat.rfind(b")") + 2 :].split()[19])  # field 22: start time
    return pid if alive(pid) and ticks == rec["start_ticks"] else None


def kill_gateway(data_dir: Path) -> None:
    """SIGKILL the recorded gateway of `data_dir` if it still runs (cleanup after a test)."""
    pid = recorded_gateway_pid(data_dir)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_for(lambda: not alive(pid), 10, what=f"gateway {pid} gone")


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid` (a replica and whatever it started), by /proc."""
    return sorted(p.pid for p in all_procs() if p.pgrp == pgid)


def reasons(srv: Server, name: str) -> list[str]:
    return [e["reason"] for e in srv.client.events(name, limit=10_000)]


def event(srv: Server, name: str, reason: str) -> dict[str, Any] | None:
    """The latest event `reason` of service `name`, if any."""
    found = [e for e in srv.client.events(name, limit=10_000) if e["reason"] == reason]
    return found[-1] if found else None


@dataclass
class Load:
    """Answers of a steady load (status codes) and the client errors seen (no answer at all)."""

    results: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@contextlib.contextmanager
def steady_load(url: str, token: str, *, threads: int = 4) -> Iterator[Load]:
    """``threads`` clients POSTing a one-token completion to ``url`` back to back until the block
    ends (then they are joined): what a kill -9 test checks for lost requests."""
    load, stop = Load(), threading.Event()

    def client() -> None:
        s = requests.Session()
        while not stop.is_set():
            try:
                r = s.post(url, json={"prompt": "x", "max_tokens": 1}, headers={"Authorization": token}, timeout=10)
                load.results.append(r.status_code)
            except requests.RequestException as exc:
                load.errors.append(repr(exc))

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for t in workers:
        t.start()
    try:
        yield load
    finally:
        stop.set()
        for t in workers:
            t.join(15)


def kill9_replica_under_load(
    srv: Server, service: str, *, cut_allowed: int = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """kill -9 the first replica of ``service`` (its pid: a process, or a container's main process)
    while 4 clients load the service through the gateway; wait until it is Ready again after one
    restart and 50 more requests were served. Asserts no request failed, except at most
    ``cut_allowed`` answers cut in the middle (headers sent, body not: no gateway can resend those);
    (victim, back) rows."""
    c = srv.client
    victim = c.describe(service)["replicas"][0]
    url = f"{srv.gateway_url}/api/predict/{service}/v1/completions"
    with steady_load(url, c.call_info(service)["token"]) as load:
        wait_for(lambda: len(load.results) >= 50, 30, what="load flowing")
        os.kill(victim["pid"], signal.SIGKILL)

        def restarted() -> dict[str, Any] | None:
            rep = next(r for r in c.describe(service)["replicas"] if r["id"] == victim["id"])
            return rep if rep["phase"] == "Ready" and rep["restart_count"] == 1 else None

        back = wait_for(restarted, 60, what="the killed replica Ready again")
        served = len(load.results)
        wait_for(lambda: len(load.results) >= served + 50, 30, what="load served after the restart")
    cut = [e for e in load.errors if "IncompleteRead" in e]
    assert len(cut) <= cut_allowed and len(load.errors) == len(cut), load.errors[:3]
    results = load.results
    assert results and set(results) == {200}, {code: results.count(code) for code in set(results)}
    assert back["pid"] != victim["pid"]
    return victim, back


def stop_and_reap(srv: Server) -> None:
    """Stop ``srv``, its gateway (a gateway outlives a killed server: not the test, though) and
    whatever replica process a test left behind."""
    srv.stop()
    kill_gateway(srv.data_dir)
    for pid in replica_processes(srv.data_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def replica_in_flight(port: int) -> float:
    """The test server's work requests in flight now (its /metrics), reached at its own port."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("testserver_requests_in_flight"):
            return float(line.split()[-1])
    return 0.0
