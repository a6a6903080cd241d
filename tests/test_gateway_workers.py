"""``--workers N`` / ``openeas server --gateway-workers N``: N gateway processes on one port
(gateway/workers.py), each notified of routing changes (gateway/routing/notify.py), /metrics and
/groups/<g> answered for all of them (gateway/telemetry/siblings.py).

Pure parts on tables; one real server with two workers end to end: requests spread over both,
a routing change acknowledged by both, a killed worker started again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from openeas.errors import SpecError
from openeas.gateway.__main__ import _parse
from openeas.gateway.routing.notify import RoutingNotifier, socket_path, socket_paths
from openeas.gateway.telemetry.siblings import add_member, merge_expositions, merge_members, with_worker
from openeas.gateway.workers import check_workers, without_flags, worker_argv
from openeas.server import check_gateway_workers
from openeas.unixdgram import worker_path
from tests.harness import new_server, recorded_gateway_pid, service_spec, stop_and_reap, wait_for


@pytest.mark.parametrize(
    ("n", "cores", "ok"),
    [
        pytest.param(1, 1, True, id="one"),
        pytest.param(8, 2, True, id="four-per-core"),
        pytest.param(9, 2, False, id="over-four-per-core"),
        pytest.param(0, 2, False, id="zero"),
        pytest.param(-1, 2, False, id="negative"),
        pytest.param(True, 2, False, id="bool"),
    ],
)
def test_worker_count_is_1_to_4_per_core(n: int, cores: int, ok: bool) -> None:
    if ok:
        assert check_workers(n, cores) == n
    else:
        with pytest.raises(ValueError, match=rf"--workers: expected a whole number from 1 to {cores * 4} "):
            check_workers(n, cores)


def test_a_bad_gateway_workers_names_the_flag() -> None:
    with pytest.raises(SpecError) as e:
        check_gateway_workers(0)
    assert e.value.errors[0].startswith("--gateway-workers: expected a whole number from 1 to ")


@pytest.mark.parametrize(
    ("argv", "default"),
    [
        pytest.param(["--routing-file", "r.json"], 1, id="gateway-default-1"),
        pytest.param(["--routing-file", "r.json", "--workers", "2"], 2, id="gateway-two"),
    ],
)
def test_the_gateway_runs_one_process_by_default(argv: list[str], default: int) -> None:
    assert _parse(argv).workers == default


def test_the_server_runs_one_gateway_process_by_default() -> None:
    import inspect

    from openeas.cli.server import server
    from openeas.server import run_server

    assert inspect.signature(server).parameters["gateway_workers"].default == 1
    assert inspect.signature(run_server).parameters["gateway_workers"].default == 1


def test_a_bad_workers_flag_is_refused_before_anything_starts(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "openeas.gateway", "--routing-file", str(tmp_path / "r"), "--workers", "0"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 2
    assert "--workers: expected a whole number from 1 to" in r.stderr


@pytest.mark.parametrize(
    ("argv", "flags", "expected"),
    [
        pytest.param(["--port", "1", "--ready-file", "x"], ["--ready-file"], ["--port", "1"], id="spaced"),
        pytest.param(["--ready-file=x", "--port", "1"], ["--ready-file"], ["--port", "1"], id="equals"),
        pytest.param(["--reuse-port"], ["--ready-file"], ["--reuse-port"], id="none-there"),
    ],
)
def test_without_flags(argv: list[str], flags: list[str], expected: list[str]) -> None:
    assert without_flags(argv, flags) == expected


def test_a_worker_gets_its_own_index_parent_folder_and_reuse_port() -> None:
    argv = worker_argv(
        ["--port", "9", "--workers", "2", "--ready-file", "/r", "--parent-pid", "5"], 1, 77, Path("/d")
    )
    assert argv[1:] == [
        "-m", "openeas.gateway", "--port", "9", "--workers", "2", "--reuse-port",
        "--worker-index", "1", "--parent-pid", "77", "--worker-dir", "/d", "--ready-file", "/d/worker.1.ready",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        pytest.param(0, "gateway.sock", id="worker-0-keeps-the-name"),
        pytest.param(3, "gateway.3.sock", id="worker-3"),
    ],
)
def test_each_worker_has_a_socket_of_its_own(index: int, expected: str) -> None:
    assert worker_path(Path("/d/run/gateway.sock"), index).name == expected
    assert socket_path(Path("/d"), index).name == expected


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        pytest.param('a_total{code="200"} 3', 'a_total{worker="1",code="200"} 3', id="labelled"),
        pytest.param("a_total 3", 'a_total{worker="1"} 3', id="bare"),
        pytest.param("a_total{} 3", 'a_total{worker="1"} 3', id="empty-labels"),
        pytest.param('a{x="b c"} 3', 'a{worker="1",x="b c"} 3', id="space-in-value"),
    ],
)
def test_with_worker(sample: str, expected: str) -> None:
    assert with_worker(sample, 1) == expected


def test_expositions_merge_by_family_with_one_header_each() -> None:
    w0 = "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n# HELP g G.\n# TYPE g gauge\ng 5\n"
    w1 = "# HELP a_total A.\n# TYPE a_total counter\na_total 2\n# HELP g G.\n# TYPE g gauge\n"
    assert merge_expositions([(0, w0), (1, w1)]) == (
        "# HELP a_total A.\n# TYPE a_total counter\n"
        'a_total{worker="0"} 1\na_total{worker="1"} 2\n'
        '# HELP g G.\n# TYPE g gauge\ng{worker="0"} 5\n'
    )


def _member(
    codes: dict[str, int], buckets: list[int], count: int, pairs: int, samples: int
) -> dict[str, Any]:
    traffic = {"by_code": codes, "buckets": buckets, "sum_s": 0.5 * count, "count": count}
    compare = {"pairs": pairs, "status_differ": 1, "body_differ": 0, "latency_delta_sum_s": 0.1,
               "samples": [{"n": i} for i in range(samples)]}  # fmt: skip
    return {"live": traffic, "mirror": traffic, "mirror_in_flight": 1, "mirror_dropped": {"full": 2},
            "compare": compare}  # fmt: skip


def test_two_workers_counters_of_a_member_add_up() -> None:
    a = _member({"200": 3}, [1, 2, 0], 3, pairs=2, samples=8)
    b = _member({"200": 1, "500": 1}, [0, 1, 1], 2, pairs=1, samples=8)
    m = add_member(a, b)
    assert m["live"] == {"by_code": {"200": 4, "500": 1}, "buckets": [1, 3, 1], "sum_s": 2.5, "count": 5}
    assert m["mirror_in_flight"] == 2 and m["mirror_dropped"] == {"full": 4}
    assert m["compare"]["pairs"] == 3 and m["compare"]["status_differ"] == 2
    assert len(m["compare"]["samples"]) == 10  # the newest COMPARE_SAMPLES
    merged = merge_members([{"x": a}, {"x": b, "y": a}])
    assert list(merged) == ["x", "y"] and merged["x"]["live"]["count"] == 5 and merged["y"] == a


def test_a_change_is_in_effect_once_every_worker_acknowledged(tmp_path: Path) -> None:
    """Two workers' sockets: one acknowledgement is not enough; a restarted worker (new pid) counts."""
    from openeas.gateway.routing.notify import NotifyListener

    notifier = RoutingNotifier(socket_paths(tmp_path, 2), lambda: "the test gateway")
    listeners = [NotifyListener(socket_path(tmp_path, k), lambda: None) for k in range(2)]
    try:
        import asyncio

        loop = asyncio.new_event_loop()
        for lst in listeners:
            lst.start(loop)
        notifier(7)
        loop.run_until_complete(asyncio.sleep(0.05))
        listeners[0].applied(7)
        assert not notifier.wait_applied(7, timeout_s=0.3).acknowledged
        listeners[1].applied(7)
        assert notifier.wait_applied(7, timeout_s=2).acknowledged
        loop.close()
    finally:
        for lst in listeners:
            lst.close()
        notifier.close()


# --- end to end --------------------------------------------------------------------------------------


def _workers(supervisor: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{supervisor}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return sorted(kids)


def _listening(worker: int) -> bool:
    """Whether ``worker`` wrote its ready file (it listens, its notification socket is bound)."""
    argv = Path(f"/proc/{worker}/cmdline").read_bytes().split(b"\0")
    return Path(argv[argv.index(b"--ready-file") + 1].decode()).exists()


def _fresh_calls(info: dict[str, str], n: int) -> list[int]:
    """``n`` requests, each on a new connection (SO_REUSEPORT spreads connections, not requests)."""
    return [
        requests.get(info["endpoint"] + "/", headers={"Authorization": info["token"], "Connection": "close"},
                     timeout=10).status_code
        for _ in range(n)
    ]  # fmt: skip


def _per_worker(metrics_text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in metrics_text.splitlines():
        if line.startswith("openeas_gateway_group_requests_total{"):
            worker = line.split('worker="', 1)[1].split('"', 1)[0]
            out[worker] = out.get(worker, 0) + int(line.rsplit(" ", 1)[1])
    return out


@pytest.mark.slow
def test_two_workers_share_the_port_the_routing_and_survive_a_kill(tmp_path: Path) -> None:
    srv = new_server(tmp_path / "data")
    srv.extra_args = ["--gateway-workers", "2"]
    srv.start()
    try:
        c = srv.client
        c.deploy(service_spec("w"))
        c.wait_ready("w", 1, timeout_s=90)
        supervisor = recorded_gateway_pid(srv.data_dir)
        assert supervisor is not None
        workers = _workers(supervisor)
        assert len(workers) == 2
        # A routing change: in effect only once both workers acknowledged it.
        created = c.group_create({"name": "g", "routes": [{"service": "w", "weight": 1000}]})
        assert created["routing"]["acknowledged"] is True, created["routing"]
        info = c.group_call_info("g")
        assert _fresh_calls(info, 40) == [200] * 40
        # Spread over both: each worker counted some; /groups (the rollout's source) sums them.
        metrics_url = f"{srv.gateway_url}/metrics"
        seen = wait_for(
            lambda: (d := _per_worker(requests.get(metrics_url, timeout=5).text)) and sum(d.values()) == 40 and d,
            10, what="both workers' snapshots",
        )  # fmt: skip
        assert set(seen) == {"0", "1"} and min(seen.values()) > 0, seen
        # /groups sums them too (another worker's share is at most 1 s old).
        wait_for(lambda: c.group("g")["stats"]["w"]["live"]["requests"] == 40, 5, what="/groups summed")
        # A killed worker is started again by the supervisor; the gateway keeps serving.
        os.kill(workers[1], signal.SIGKILL)
        wait_for(lambda: len(w := _workers(supervisor)) == 2 and workers[1] not in w, 15, what="a new worker")
        wait_for(lambda: all(_listening(p) for p in _workers(supervisor)), 30, what="the new worker listening")
        wait_for(lambda: _fresh_calls(info, 10) == [200] * 10, 15, what="both workers serving")
        left = c.group_delete("g")
        assert left["routing"]["acknowledged"] is True, left["routing"]  # the new worker answers too
        assert recorded_gateway_pid(srv.data_dir) == supervisor  # the server kept its gateway
    finally:
        stop_and_reap(srv)
    assert all(not Path(f"/proc/{p}").exists() for p in workers)


# --- the control plane reads a gateway of workers as the sum of its workers' datagrams ---------


@pytest.mark.parametrize(
    ("replica", "routed", "in_flight"),
    [pytest.param("a-1", True, 5, id="summed-routed-by-any"), pytest.param("a-2", False, 0, id="absent")],
)
def test_the_control_plane_sums_the_workers_datagrams(replica: str, routed: bool, in_flight: int) -> None:
    """Each worker sends its own counters datagram (an id of its own); the control plane's view
    (autoscaler, drain, rollout) is their sum: in flight summed, routed by any, a replica no worker
    names neither routed nor busy."""
    from openeas.kernel.clock import FakeClock
    from openeas.telemetry.gateway_stats import GatewayStats, ReplicaSample, ServiceSample, decode_all, encode

    g = GatewayStats(FakeClock(0.0).now)
    for worker, n, on in ((0, 2, False), (1, 3, True)):
        for data in encode(f"w{worker}", 0.1, {"a": ServiceSample(n, n, 0)}, replicas={"a-1": ReplicaSample(n, on)}):
            d = decode_all(data)
            g.observe(d.gateway_id, d.samples, 0.0, uptime_s=d.uptime_s, replicas=d.replicas)
    assert g.replica_in_flight(0.5) == {"a-1": 5}
    assert g.replica(replica, 0.5, since=-1.0) == ReplicaSample(in_flight, routed)
    assert g.mean_in_flight("a", 0.0, 0.5) == pytest.approx(5.0)
