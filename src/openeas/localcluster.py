"""A whole local cluster on this machine, for trying OpenEAS and for the tests (``openeas cluster``).

``up`` starts a supervisor process (``python -m openeas.localcluster --dir D --nodes N``) that owns
every part as a child in a session of its own: PostgreSQL, Redis, a Ray cluster started the usual
way (``ray start --head --block`` and ``ray start --address … --block`` for N-1 worker nodes with
different resources, all with a Ray temp dir and ports of their own), the active server
(``--runtime ray``, with its gateway), a standby server on the same store (with its gateway), a
store-only second gateway (a folder of its own with a copy of secret.key, as on another machine),
and a TCP balancer (openeas.balancer) over the two
gateways. Once everything answers it writes ``D/cluster.json``: {api_url, admin_token,
gateway_urls, balancer_url, ray_address, store_url, queue_url, standby_api_url, ray_nodes}; and
``D/parts.json`` names each part's pid (what ``down`` stops if the supervisor itself is gone).

SIGTERM to the supervisor (``down``), a part that exits during ``up``, or ``up`` running past its
deadline: the supervisor stops every part it started, newest first, each by its process group
(SIGTERM, then SIGKILL), and the gateways the servers left running. Everything listens on
127.0.0.1; Ray names the machine's interface address for its nodes (it does here too), and
nothing of OpenEAS sends replica traffic there: replicas listen and are reached on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openeas.gateway_keeper import gateway_record_path
from openeas.procfs import same_process

CLUSTER_FILE = "cluster.json"
PID_FILE = "cluster.pid"
PARTS_FILE = "parts.json"  # [{name, pid}] of every part started, newest last
ERROR_FILE = "error.txt"
UP_TIMEOUT_S = 240.0  # default bound from `cluster up` to every part answering, seconds
DOWN_TIMEOUT_S = 90.0  # from SIGTERM to the supervisor gone, seconds
RAY_NODE_TRIES = 3  # starts of one Ray node that exits while starting
PART_STOP_S = 20.0  # one part's graceful stop before SIGKILL of its process group, seconds
NODE_CPUS = (2, 2, 4, 4, 8)  # logical CPUs of node i (head first); the rest get the last


class Stopped(BaseException):
    """SIGTERM/SIGINT reached the supervisor while it was bringing the cluster up."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_resources(nodes: int) -> list[dict[str, Any]]:
    """Each node's Ray arguments (pure): different CPUs, and a custom resource naming the node."""
    if nodes < 1:
        raise ValueError(f"--nodes: {nodes} asked, at least 1 is needed")
    return [
        {"num_cpus": NODE_CPUS[min(i, len(NODE_CPUS) - 1)], "resources": {f"node{i}": 1}}
        for i in range(nodes)
    ]


def ray_start_argv(node: dict[str, Any], *, head_port: int, temp_dir: Path, head: bool) -> list[str]:
    """``ray start --block`` for one node (pure but for the free ports it picks): every port Ray
    would otherwise take by default (dashboard, dashboard agent, metrics, runtime env agent)
    is a free one, so that clusters of several users on one machine do not collide."""
    argv = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats"]
    argv += ["--num-cpus", str(node["num_cpus"]), "--resources", json.dumps(node["resources"])]
    for flag in ("--dashboard-agent-listen-port", "--metrics-export-port", "--runtime-env-agent-port"):
        argv += [flag, str(free_port())]
    if head:
        argv += ["--head", "--port", str(head_port), "--temp-dir", str(temp_dir)]
        argv += ["--include-dashboard=false", "--dashboard-port", str(free_port())]
    else:
        argv += ["--address", f"127.0.0.1:{head_port}"]
    return argv


def _answers_tcp(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _answers_http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError as exc:  # an HTTP error status (a standby's 503) still means it answers
        return hasattr(exc, "code")


def _log_says(log: Path, text: str, offset: int) -> Callable[[], bool]:
    """Whether ``log`` says ``text`` past byte ``offset`` (the log of a part started again holds
    its earlier tries too)."""

    def check() -> bool:
        with open(log, "rb") as f:
            f.seek(offset)
            return text.encode() in f.read()

    return check


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (scripts/setup.sh installs it)")
    return found


def _as_owner(argv: list[str]) -> list[str]:
    """PostgreSQL refuses root: as root it runs as the postgres user."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _stop_group(pid: int, sig: int, wait_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """``sig`` to the process group of ``pid`` (a part started in a session of its own), then
    SIGKILL to the group when its leader has not exited within ``wait_s``."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if (proc.poll() is not None) if proc is not None else not _alive(pid):
            break
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)  # what is left of the group (a part's helpers)
    except (ProcessLookupError, PermissionError):
        pass
    if proc is not None:
        proc.wait(5)


class LocalCluster:
    def __init__(self, root: Path, nodes: int, timeout_s: float = UP_TIMEOUT_S) -> None:
        self.root = root
        self.nodes = node_resources(nodes)
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.parts: list[tuple[str, subprocess.Popen[bytes], int]] = []  # name, process, stop signal
        self.scratch = Path(tempfile.mkdtemp(prefix="oeas-cluster-"))  # short: Ray's socket paths
        self.data_dirs = [root / "server", root / "server-standby"]

    # ---- parts ----------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], stop: int = signal.SIGTERM) -> subprocess.Popen[bytes]:
        with open(self.root / f"{name}.log", "ab") as out:
            p = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.parts.append((name, p, stop))
        records = [{"name": n, "pid": q.pid} for n, q, _ in self.parts]
        (self.root / PARTS_FILE).write_text(json.dumps(records, indent=1) + "\n")
        return p

    def _wait(self, what: str, check: Callable[[], bool]) -> None:
        while not check():
            for name, p, _ in self.parts:
                if p.poll() is not None:
                    raise RuntimeError(f"{what}: {name} exited (code {p.returncode}; {self.root}/{name}.log)")
            if time.monotonic() > self.deadline:
                raise RuntimeError(f"{what} did not answer within {self.timeout_s:.0f} s")
            time.sleep(0.2)

    def _wait_node(self, i: int, node: subprocess.Popen[bytes], started: Callable[[], bool]) -> None:
        """Until Ray node ``i`` has started or exited; any other part that exits is an error."""
        while not started() and node.poll() is None:
            for name, p, _ in self.parts:
                if p is not node and p.poll() is not None:
                    raise RuntimeError(
                        f"Ray node {i}: {name} exited (code {p.returncode}; {self.root}/{name}.log)"
                    )
            if time.monotonic() > self.deadline:
                raise RuntimeError(f"Ray node {i} did not answer within {self.timeout_s:.0f} s")
            time.sleep(0.2)

    def _postgres(self) -> str:
        pg_root = self.scratch / "pg"  # the postgres user must reach it
        pg_root.mkdir()
        if os.geteuid() == 0:
            os.chmod(self.scratch, 0o755)
            shutil.chown(pg_root, "postgres")
        data, port = pg_root / "data", free_port()
        subprocess.run(
            _as_owner([_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"]),
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        conf = {"listen_addresses": "127.0.0.1", "port": str(port), "unix_socket_directories": str(pg_root),
                "fsync": "off"}  # fmt: skip
        argv = [
            _pg_bin("postgres"),
            "-D",
            str(data),
            *[a for k, v in conf.items() for a in ("-c", f"{k}={v}")],
        ]
        self._spawn("postgres", _as_owner(argv), stop=signal.SIGINT)  # SIGINT: PostgreSQL's fast shutdown
        self._wait("PostgreSQL", lambda: _answers_tcp(port))
        create = [_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "openeas"]
        # the port answers a moment before the server takes queries
        self._wait(
            "PostgreSQL's database",
            lambda: subprocess.run(_as_owner(create), capture_output=True).returncode == 0,
        )
        return f"postgresql://postgres@127.0.0.1:{port}/openeas"

    def _redis(self) -> str:
        redis = shutil.which("redis-server")
        if redis is None:
            raise RuntimeError("redis-server is not installed (scripts/setup.sh installs it)")
        port = free_port()
        self._spawn(
            "redis", [redis, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
        )
        self._wait("Redis", lambda: _answers_tcp(port))
        return f"redis://127.0.0.1:{port}/0"

    def _ray(self) -> str:
        """The head, then each worker node once the one before it has started (started together,
        two nodes' agents on a busy 2-core machine miss Ray's own start deadline). A node that
        exits while starting (Ray's deadline missed on a loaded machine) is started again, up to
        :data:`RAY_NODE_TRIES` times in all, within ``up``'s deadline."""
        head_port = free_port()
        temp_dir = self.scratch / "ray"
        for i, node in enumerate(self.nodes):
            name = f"ray-node{i}"
            argv = ray_start_argv(node, head_port=head_port, temp_dir=temp_dir, head=i == 0)
            log = self.root / f"{name}.log"
            for attempt in range(1, RAY_NODE_TRIES + 1):
                offset = log.stat().st_size if log.exists() else 0
                p = self._spawn(name, argv)
                started = _log_says(log, "Ray runtime started", offset)
                self._wait_node(i, p, started)
                if p.poll() is None:
                    break
                _stop_group(p.pid, signal.SIGKILL, 1.0, p)  # what it left of its own
                self.parts.remove((name, p, signal.SIGTERM))
                if attempt == RAY_NODE_TRIES:
                    raise RuntimeError(
                        f"Ray node {i} exited while starting, {attempt} times ({self.root}/{name}.log)"
                    )
        # Ray names the machine's interface address for the head; it listens on every address
        return f"127.0.0.1:{head_port}"

    def _server(self, index: int, common: list[str], ray_address: str) -> tuple[str, str]:
        data, api, gw = self.data_dirs[index], free_port(), free_port()
        data.mkdir(parents=True, exist_ok=True)
        if index > 0:  # a standby reads the same store: the same secret key
            shutil.copy(self.data_dirs[0] / "secret.key", data / "secret.key")
        name = "server" if index == 0 else "server-standby"
        self._spawn(name, [sys.executable, "-m", "openeas.cli", "server", "--data-dir", str(data), *common,
                           "--port", str(api), "--gateway-port", str(gw), "--runtime", "ray",
                           "--ray-address", ray_address, "--replica-user", "none"])  # fmt: skip
        api_url = f"http://127.0.0.1:{api}"
        self._wait(f"the {name}'s API", lambda: _answers_http(api_url + "/healthz"))
        self._wait(f"the {name}'s gateway", lambda: _answers_tcp(gw))
        return api_url, f"http://127.0.0.1:{gw}"

    def up(self) -> dict[str, Any]:
        store_url, queue_url = self._postgres(), self._redis()
        ray_address = self._ray()
        common = ["--store", store_url, "--queue-url", queue_url]
        api_url, gw0 = self._server(0, common, ray_address)
        server_file = self.data_dirs[0] / "server.json"
        self._wait("the server's server.json", server_file.exists)
        standby_url, standby_gw = self._server(1, common, ray_address)
        # A store-only gateway, as on another machine: a folder of its own holding only secret.key;
        # it registers in the store, acknowledges there and signs its counters over UDP.
        gw1, gw_dir = free_port(), self.root / "gateway"
        gw_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.data_dirs[0] / "secret.key", gw_dir / "secret.key")
        self._spawn("gateway", [sys.executable, "-m", "openeas.gateway", "--data-dir", str(gw_dir),
                                *common, "--port", str(gw1)])  # fmt: skip
        self._wait("the second gateway", lambda: _answers_tcp(gw1))
        gateways = [gw0, f"http://127.0.0.1:{gw1}"]
        lb = free_port()
        backends = [a for g in gateways for a in ("--backend", g.removeprefix("http://"))]
        self._spawn("balancer", [sys.executable, "-m", "openeas.balancer", "--port", str(lb), *backends])
        self._wait("the balancer", lambda: _answers_tcp(lb))
        return {
            "api_url": api_url,
            "admin_token": json.loads(server_file.read_text())["admin_token"],
            "gateway_urls": gateways,
            "balancer_url": f"http://127.0.0.1:{lb}",
            "ray_address": ray_address,
            "store_url": store_url,
            "queue_url": queue_url,
            "standby_api_url": standby_url,
            "standby_gateway_url": standby_gw,
            "ray_nodes": len(self.nodes),
        }

    def down(self) -> None:
        """Every part, newest first, each by its process group; then the gateways the servers
        recorded (they run in sessions of their own and outlive a killed server)."""
        for _name, p, sig in reversed(self.parts):
            if p.poll() is None:
                _stop_group(p.pid, sig, PART_STOP_S, p)
        stop_recorded_gateways(self.data_dirs)
        shutil.rmtree(self.scratch, ignore_errors=True)


def stop_recorded_gateways(data_dirs: list[Path]) -> None:
    for data in data_dirs:
        try:
            rec = json.loads(gateway_record_path(data).read_text())
        except (OSError, ValueError):
            continue
        if same_process(int(rec["pid"]), rec.get("start_ticks")):
            _stop_group(int(rec["pid"]), signal.SIGTERM, PART_STOP_S)


def supervise(root: Path, nodes: int, timeout_s: float = UP_TIMEOUT_S) -> None:
    """The supervisor: bring the cluster up, write cluster.json, hold it until SIGTERM/SIGINT.
    A signal during ``up`` interrupts it (the parts started so far are stopped)."""
    state = {"up": False, "asked": False}

    def _on_signal(_sig: int, _frame: Any) -> None:
        state["asked"] = True
        if not state["up"]:
            raise Stopped

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    cluster = LocalCluster(root, nodes, timeout_s)
    try:
        info = cluster.up()
        (root / CLUSTER_FILE).write_text(json.dumps(info, indent=1) + "\n")
        state["up"] = True
        while not state["asked"]:
            time.sleep(0.2)
    except Stopped:
        (root / ERROR_FILE).write_text("stopped while coming up\n")
    except Exception as exc:  # said in the error file that `up` reads
        (root / ERROR_FILE).write_text(f"{exc}\n")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the stop itself is not interrupted
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        (root / CLUSTER_FILE).unlink(missing_ok=True)
        cluster.down()
        (root / PARTS_FILE).unlink(missing_ok=True)


def up(root: Path, nodes: int, timeout_s: float = UP_TIMEOUT_S) -> dict[str, Any]:
    """Start the supervisor detached and wait for cluster.json; its content."""
    node_resources(nodes)  # the argument's error before anything starts
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    if (root / PID_FILE).exists():
        raise RuntimeError(
            f"--dir: {root} has a cluster already ({PID_FILE}); 'openeas cluster down' it first"
        )
    (root / ERROR_FILE).unlink(missing_ok=True)
    with open(root / "supervisor.log", "ab") as log:
        argv = [sys.executable, "-m", "openeas.localcluster", "--dir", str(root), "--nodes", str(nodes),
                "--timeout", f"{timeout_s:g}"]  # fmt: skip
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)  # fmt: skip
    (root / PID_FILE).write_text(f"{p.pid}\n")
    deadline = time.monotonic() + timeout_s + 30
    while not (root / CLUSTER_FILE).exists():
        if p.poll() is not None or time.monotonic() > deadline:
            down(root)
            why = (root / ERROR_FILE).read_text().strip() if (root / ERROR_FILE).exists() else "timed out"
            raise RuntimeError(f"the local cluster did not come up: {why} (logs in {root})")
        time.sleep(0.3)
    info: dict[str, Any] = json.loads((root / CLUSTER_FILE).read_text())
    return info


def down(root: Path) -> bool:
    """Stop the cluster of ``root``; False when none was running there. When the supervisor does
    not finish in time (or is gone), the parts it recorded are stopped from here."""
    pid_file = root / PID_FILE
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + DOWN_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # our child when `up` ran in this process
        except ChildProcessError:
            done = 0 if _alive(pid) else pid
        if done:
            break
        time.sleep(0.2)
    _stop_leftovers(root)
    pid_file.unlink(missing_ok=True)
    return True


def _stop_leftovers(root: Path) -> None:
    """The parts a supervisor that died (or did not finish) left: by the pids it recorded."""
    try:
        parts = json.loads((root / PARTS_FILE).read_text())
    except (OSError, ValueError):
        parts = []
    for part in reversed(parts):
        if _alive(int(part["pid"])):
            sig = signal.SIGINT if part["name"] == "postgres" else signal.SIGTERM
            _stop_group(int(part["pid"]), sig, PART_STOP_S)
    stop_recorded_gateways([root / "server", root / "server-standby"])
    (root / PARTS_FILE).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (a finished child not yet reaped) is not alive
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m openeas.localcluster")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--timeout", type=float, default=UP_TIMEOUT_S, help="seconds for every part to answer")
    args = p.parse_args()
    supervise(args.dir, args.nodes, args.timeout)


if __name__ == "__main__":
    main()
