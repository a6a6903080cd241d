"""``openeas server --gateway-limit NAME=VALUE`` sets its gateway's client limits (docs/cli.md):
the parser (every bad one named at once, exit 2 before anything starts), and a real server whose
gateway answers 414 to a request target over the limit it was given."""

from __future__ import annotations

import http.client
import subprocess
import sys
from pathlib import Path

import pytest

from openeas.errors import SpecError
from openeas.gateway.limit_flags import GATEWAY_LIMITS, gateway_limit_args
from tests.harness import new_server, stop_and_reap


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        pytest.param([], [], id="none-the-gateway-defaults"),
        pytest.param(["max_url_bytes=1024"], ["--max-url-bytes", "1024"], id="int"),
        pytest.param(["head-timeout-s=2.5"], ["--head-timeout", "2.5"], id="dashes-and-float"),
        pytest.param(
            ["max_connections=50", "keepalive_timeout_s=5"],
            ["--max-connections", "50", "--keepalive-timeout", "5.0"],
            id="several",
        ),
    ],
)
def test_gateway_limit_args(pairs: list[str], expected: list[str]) -> None:
    assert gateway_limit_args(pairs) == expected


def test_every_bad_limit_is_named_at_once() -> None:
    with pytest.raises(SpecError) as e:
        gateway_limit_args(["max_url_bytes=big", "nope=1", "max_headers=0", "body_timeout_s"])
    known = ", ".join(GATEWAY_LIMITS)
    assert e.value.errors == [
        "--gateway-limit max_url_bytes: expected an integer, got 'big'",
        f"--gateway-limit 'nope=1': expected NAME=VALUE with NAME one of {known}",
        "--gateway-limit max_headers: must be greater than 0, got '0'",
        f"--gateway-limit 'body_timeout_s': expected NAME=VALUE with NAME one of {known}",
    ]


def test_a_bad_limit_is_invalid_input_before_the_server_starts(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "openeas.cli", "server", "--data-dir", str(tmp_path / "d"), "--gateway-limit", "max_url_bytes=x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert "error: --gateway-limit max_url_bytes: expected an integer, got 'x'" in r.stderr
    assert not (tmp_path / "d" / "server.json").exists()


def _status(port: int, target: str) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", target)
        return c.getresponse().status
    finally:
        c.close()


@pytest.mark.slow
def test_the_servers_gateway_takes_the_limit(tmp_path: Path) -> None:
    srv = new_server(tmp_path / "data")
    srv.extra_args = ["--gateway-limit", "max_url_bytes=1024"]
    srv.start()
    try:
        port = srv.gateway_port
        # 1,500 bytes: under the 8 KiB default, over the 1,024 given.
        assert _status(port, "/api/predict/none?q=" + "a" * 1480) == 414
        assert _status(port, "/api/predict/none?q=" + "a" * 900) == 404  # routed: no such service
        metrics = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        metrics.request("GET", "/metrics")
        text = metrics.getresponse().read().decode()
        metrics.close()
        assert 'openeas_gateway_limit{name="max_url_bytes"} 1024' in text
    finally:
        stop_and_reap(srv)
