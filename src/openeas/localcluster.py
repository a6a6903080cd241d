"""A whole local cluster on this machine, for trying OpenEAS and for the tests (``openeas cluster``).

``up`` starts a supervisor process (``python -m openeas.localcluster --dir D --nodes N``) that owns
every part as its child: a Ray cluster (a head and N-1 worker nodes with different resources, via
``ray.cluster_utils.Cluster``, so that stopping it stops only its own Ray processes), PostgreSQL,
Redis, the active server (``--runtime ray``, its own gateway), a second gateway and a TCP balancer
(openeas.balancer) over both gateways. Once everything answers it writes ``D/cluster.json``:
{api_url, admin_token, gateway_urls, balancer_url, ray_address, store_url, queue_url}. SIGTERM to
the supervisor (``down``) stops the parts in reverse order. Everything listens on 127.0.0.1.
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
from pathlib import Path
from typing import Any

CLUSTER_FILE = "cluster.json"
PID_FILE = "cluster.pid"
UP_TIMEOUT_S = 180.0  # from `cluster up` to every part answering
DOWN_TIMEOUT_S = 60.0  # from SIGTERM to the supervisor gone
NODE_CPUS = (2, 2, 4, 4, 8)  # logical CPUs of node i (head first); the rest get the last


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
    except OSError as exc:  # an HTTP error status still means it answers
        return hasattr(exc, "code")


def _wait(what: str, check: Any, deadline: float, procs: list[subprocess.Popen[bytes]]) -> None:
    while not check():
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: a part exited ({p.args!r}, code {p.returncode})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer within {UP_TIMEOUT_S:.0f} s")
        time.sleep(0.2)


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (scripts/setup.sh installs it)")
    return found


def _as_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


class LocalCluster:
    def __init__(self, root: Path, nodes: int) -> None:
        self.root = root
        self.nodes = node_resources(nodes)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ray: Any = None
        self.pg_root: Path | None = None

    def _spawn(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(self.root / log, "ab") as out:
            p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def _ray(self) -> str:
        from ray.cluster_utils import Cluster

        head, *workers = self.nodes
        self.ray = Cluster(
            initialize_head=True,
            head_node_args={**head, "include_dashboard": False, "node_ip_address": "127.0.0.1"},
        )
        for node in workers:
            self.ray.add_node(**node, node_ip_address="127.0.0.1")
        self.ray.wait_for_nodes()
        # Ray reports the machine's interface address for its head; the nodes listen on loopback
        # here, and nothing of ours talks to another address: the same port on 127.0.0.1.
        return "127.0.0.1:" + str(self.ray.address).rsplit(":", 1)[1]

    def _postgres(self, deadline: float) -> str:
        self.pg_root = Path(tempfile.mkdtemp(prefix="openeas-cluster-pg-"))  # postgres must reach it
        if os.geteuid() == 0:
            shutil.chown(self.pg_root, "postgres")
        data, port = self.pg_root / "data", free_port()
        subprocess.run(
            _as_owner([_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"]),
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        conf = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": str(self.pg_root),
        }
        argv = [
            _pg_bin("postgres"),
            "-D",
            str(data),
            *[a for k, v in conf.items() for a in ("-c", f"{k}={v}")],
        ]
        self._spawn(_as_owner(argv), "postgres.log")
        _wait("PostgreSQL", lambda: _answers_tcp(port), deadline, self.procs)
        url = f"postgresql://postgres@127.0.0.1:{port}"
        for _ in range(50):  # the port answers a moment before the server takes queries
            create = [_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "openeas"]
            if subprocess.run(_as_owner(create), capture_output=True).returncode == 0:
                return url + "/openeas"
            time.sleep(0.2)
        raise RuntimeError("PostgreSQL: cannot create the database 'openeas'")

    def up(self) -> dict[str, Any]:
        deadline = time.monotonic() + UP_TIMEOUT_S
        ray_address = self._ray()
        store_url = self._postgres(deadline)
        redis_port = free_port()
        self._spawn(["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
                     "--appendonly", "no"], "redis.log")  # fmt: skip
        _wait("Redis", lambda: _answers_tcp(redis_port), deadline, self.procs)
        queue_url = f"redis://127.0.0.1:{redis_port}/0"
        data = self.root / "server"
        api, gw0, gw1, lb = free_port(), free_port(), free_port(), free_port()
        common = ["--data-dir", str(data), "--store", store_url, "--queue-url", queue_url]
        self._spawn([sys.executable, "-m", "openeas.cli", "server", *common, "--port", str(api),
                     "--gateway-port", str(gw0), "--runtime", "ray", "--ray-address", ray_address,
                     "--replica-user", "none"], "server.log")  # fmt: skip
        server_file = data / "server.json"
        _wait("the server", lambda: server_file.exists(), deadline, self.procs)
        api_url = f"http://127.0.0.1:{api}"
        _wait("the server's API", lambda: _answers_http(api_url + "/healthz"), deadline, self.procs)
        self._spawn([sys.executable, "-m", "openeas.gateway", *common, "--port", str(gw1)], "gateway.log")
        gateways = [gw0, gw1]
        for port in gateways:
            _wait(f"the gateway on port {port}", lambda p=port: _answers_tcp(p), deadline, self.procs)
        backends = [a for g in gateways for a in ("--backend", f"127.0.0.1:{g}")]
        self._spawn([sys.executable, "-m", "openeas.balancer", "--port", str(lb), *backends], "balancer.log")
        _wait("the balancer", lambda: _answers_tcp(lb), deadline, self.procs)
        return {
            "api_url": api_url,
            "admin_token": json.loads(server_file.read_text())["admin_token"],
            "gateway_urls": [f"http://127.0.0.1:{g}" for g in gateways],
            "balancer_url": f"http://127.0.0.1:{lb}",
            "ray_address": ray_address,
            "store_url": store_url,
            "queue_url": queue_url,
        }

    def down(self) -> None:
        """Every part, newest first: the balancer and gateways, the server (it stops its replicas),
        Redis, PostgreSQL, then the Ray cluster."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        if self.ray is not None:
            self.ray.shutdown()
        if self.pg_root is not None:
            shutil.rmtree(self.pg_root, ignore_errors=True)


def supervise(root: Path, nodes: int) -> None:
    """The supervisor: bring the cluster up, write cluster.json, hold it until SIGTERM/SIGINT."""
    stop = {"asked": False}

    def _record(_sig: int, _frame: Any) -> None:
        stop["asked"] = True  # the handler only records the signal

    signal.signal(signal.SIGTERM, _record)
    signal.signal(signal.SIGINT, _record)
    cluster = LocalCluster(root, nodes)
    try:
        info = cluster.up()
        (root / CLUSTER_FILE).write_text(json.dumps(info, indent=1) + "\n")
        while not stop["asked"]:
            time.sleep(0.2)
    except Exception as exc:  # said in the error file that `up` reads
        (root / "error.txt").write_text(f"{exc}\n")
    finally:
        (root / CLUSTER_FILE).unlink(missing_ok=True)
        cluster.down()


def up(root: Path, nodes: int) -> dict[str, Any]:
    """Start the supervisor detached and wait for cluster.json; its content."""
    node_resources(nodes)  # the argument's error before anything starts
    root.mkdir(parents=True, exist_ok=True)
    if (root / PID_FILE).exists():
        raise RuntimeError(
            f"--dir: {root} has a cluster already ({PID_FILE}); 'openeas cluster down' it first"
        )
    (root / "error.txt").unlink(missing_ok=True)
    with open(root / "supervisor.log", "ab") as log:
        p = subprocess.Popen(
            [sys.executable, "-m", "openeas.localcluster", "--dir", str(root), "--nodes", str(nodes)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    (root / PID_FILE).write_text(f"{p.pid}\n")
    deadline = time.monotonic() + UP_TIMEOUT_S + 30
    while not (root / CLUSTER_FILE).exists():
        if p.poll() is not None or time.monotonic() > deadline:
            down(root)
            why = (root / "error.txt").read_text().strip() if (root / "error.txt").exists() else "timed out"
            raise RuntimeError(f"the local cluster did not come up: {why} (logs in {root})")
        time.sleep(0.3)
    info: dict[str, Any] = json.loads((root / CLUSTER_FILE).read_text())
    return info


def down(root: Path) -> bool:
    """Stop the cluster of ``root``; False when none was running there."""
    pid_file = root / PID_FILE
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return False
    deadline = time.monotonic() + DOWN_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # our child when `up` ran in this process
        except ChildProcessError:
            done = 0 if _alive(pid) else pid
        if done:
            break
        time.sleep(0.2)
    pid_file.unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m openeas.localcluster")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--nodes", type=int, default=3)
    args = p.parse_args()
    supervise(args.dir, args.nodes)


if __name__ == "__main__":
    main()
