"""The local cluster's pure parts, its TCP balancer over real HTTP servers, and (slow) a real
`openeas cluster up` of 2 Ray nodes, PostgreSQL, Redis, a server and two gateways."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator

import pytest

from openeas.balancer import parse_backend
from openeas.cli.cluster import nodes_view
from openeas.localcluster import free_port, node_resources


@pytest.mark.parametrize(
    ("text", "want"),
    [
        pytest.param("127.0.0.1:8081", ("127.0.0.1", 8081), id="host-port"),
        pytest.param("8081", "--backend: '8081' is not HOST:PORT with a port 1-65535", id="no-host"),
        pytest.param("h:0", "--backend: 'h:0' is not HOST:PORT with a port 1-65535", id="port-zero"),
    ],
)
def test_parse_backend(text: str, want: object) -> None:
    if isinstance(want, str):
        with pytest.raises(ValueError, match="^" + want.replace("(", r"\(").replace(")", r"\)") + "$"):
            parse_backend(text)
    else:
        assert parse_backend(text) == want


@pytest.mark.parametrize(
    ("nodes", "cpus"),
    [
        pytest.param(1, [2], id="head-only"),
        pytest.param(3, [2, 2, 4], id="three"),
        pytest.param(6, [2, 2, 4, 4, 8, 8], id="six"),
    ],
)
def test_node_resources_differ_and_name_the_node(nodes: int, cpus: list[int]) -> None:
    got = node_resources(nodes)
    assert [n["num_cpus"] for n in got] == cpus
    assert [n["resources"] for n in got] == [{f"node{i}": 1} for i in range(nodes)]


def test_node_resources_refuses_zero() -> None:
    with pytest.raises(ValueError, match=r"^--nodes: 0 asked, at least 1 is needed$"):
        node_resources(0)


def test_nodes_view_counts_replicas_per_node_and_service() -> None:
    details = [
        {"name": "a", "replicas": [{"node": "n1"}, {"node": "n2"}, {"node": "n1"}]},
        {"name": "b", "replicas": [{"node": None}, {"node": "n2"}]},
    ]
    assert nodes_view(details) == [
        {"node": "local", "replicas": 1, "services": {"b": 1}},
        {"node": "n1", "replicas": 2, "services": {"a": 2}},
        {"node": "n2", "replicas": 2, "services": {"a": 1, "b": 1}},
    ]


def _backend(name: str) -> tuple[http.server.HTTPServer, int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(name)))
            self.end_headers()
            self.wfile.write(name.encode())

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, srv.server_address[1]


@pytest.fixture
def balancer() -> Iterator[tuple[int, list[int]]]:
    (a, pa), (b, pb) = _backend("a"), _backend("b")
    dead = free_port()  # nothing listens there: skipped
    port = free_port()
    argv = [sys.executable, "-m", "openeas.balancer", "--port", str(port)]
    for p in (pa, dead, pb):
        argv += ["--backend", f"127.0.0.1:{p}"]
    proc = subprocess.Popen(argv)
    try:
        yield port, [pa, pb]
    finally:
        proc.terminate()
        proc.wait(10)
        a.shutdown()
        b.shutdown()


def _get(url: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return str(r.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_balancer_round_robin_skips_a_dead_backend(balancer: tuple[int, list[int]]) -> None:
    port, _ = balancer
    got = Counter(_get(f"http://127.0.0.1:{port}/") for _ in range(12))
    # 3 backends in turn, the dead one's turn goes to the next: a 4 times, b 8 times
    assert got == {"a": 4, "b": 8}

