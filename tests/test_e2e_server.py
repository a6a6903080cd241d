"""End to end, the server itself: restarts after kill -9 (adoption, orphans, stale pids), one
server per data dir, `--deploy` and its exit codes, and secrets kept out of every log.

Processes are checked with the test's own /proc scan (tests.harness), never the product's.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
import requests

from openeas.runtime.identity import node_tag
from tests.harness import Server, alive, new_server, replica_processes, service_spec, stop_and_reap, wait_for

CLI = [sys.executable, "-m", "openeas.cli"]


def _sql(srv: Server, statement: str, *args: object) -> None:
    """Edit the store directly, as only a test may (the server is down)."""
    assert srv.proc is not None and srv.proc.poll() is not None
    with closing(sqlite3.connect(srv.data_dir / "openeas.db")) as db, db:
        db.execute(statement, args)


def test_server_kill9_adopts_its_replicas_and_kills_orphans(tmp_path: Path):
    srv = new_server(tmp_path / "data").start()
    ghost: subprocess.Popen[bytes] | None = None
    try:
        c = srv.client
        c.deploy(service_spec("durable", replicas=2))
        c.wait_ready("durable", 2, timeout_s=60)
        c.update("durable", service_spec("durable", replicas=2, args="--model-name v2"))
        before = c.wait_ready("durable", 2, timeout_s=60)["replicas"]
        assert replica_processes(srv.data_dir) == sorted(r["pid"] for r in before)
        srv.kill9()
        # The replicas outlive the server. Make two real orphans while it is down:
        kept, lost = before
        # 1. a replica whose row is gone (the store no longer knows the process);
        _sql(srv, "DELETE FROM replicas WHERE id = ?", lost["id"])
        # 2. a process started with the replica identity of this data dir that no row knows.
        workdir = srv.data_dir / "replicas" / "durable-ghost"
        workdir.mkdir(parents=True)
        ghost = subprocess.Popen(
            [sys.executable, "-m", "openeas.testserver", "--host", "127.0.0.1", "--port", "0"],
            env={
                **srv.env(),
                "OPENEAS_REPLICA_ID": "durable-ghost",
                "OPENEAS_SERVICE": "durable",
                "OPENEAS_NODE": node_tag(srv.data_dir),
            },
            cwd=workdir,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: ghost.pid in replica_processes(srv.data_dir), 10, what="the ghost seen as a replica")

        srv.start()
        after = srv.client.wait_ready("durable", 2, timeout_s=60)["replicas"]
        assert kept["pid"] in {r["pid"] for r in after}  # adopted, not restarted
        assert ghost.wait(15) == -signal.SIGKILL  # killed by the restarted server
        wait_for(lambda: not alive(lost["pid"]), 15, what="the replica without a row killed")
        # Exactly the replicas the server shows are running: no orphan left, none missing.
        assert replica_processes(srv.data_dir) == sorted(r["pid"] for r in after)
        c = srv.client
        assert [v["version"] for v in c.versions("durable")] == [1, 2]
        assert any(e["reason"] == "Adopted" for e in c.events("durable"))
        r = c.predict(
            "durable",
            {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            path="/v1/chat/completions",
        )
        assert r.json()["model"] == "v2"
        c.delete("durable")
        c.wait_deleted("durable", timeout_s=30)
        wait_for(lambda: not replica_processes(srv.data_dir), 15, what="no replica processes")
    finally:
        stop_and_reap(srv)  # the gateway too: a killed server leaves it running
        if ghost is not None and ghost.poll() is None:
            ghost.kill()
            ghost.wait(5)


def test_stale_pids_are_never_adopted(tmp_path: Path):
    srv = new_server(tmp_path / "data").start()
    stranger = subprocess.Popen(["sleep", "600"])  # an unrelated process, never to be touched
    try:
        srv.client.deploy(service_spec("stale", replicas=2))
        gone, recycled = srv.client.wait_ready("stale", 2, timeout_s=60)["replicas"]
        srv.kill9()
        # While the server is down both replica processes die. One row's pid now belongs to
        # nothing; the other's to another process (as when the kernel recycles a pid).
        for r in (gone, recycled):
            os.killpg(r["pid"], signal.SIGKILL)
        wait_for(lambda: not alive(gone["pid"]) and not alive(recycled["pid"]), 15, what="replicas dead")
        _sql(srv, "UPDATE replicas SET pid = ? WHERE id = ?", stranger.pid, recycled["id"])

        srv.start()
        after = {r["id"]: r for r in srv.client.wait_ready("stale", 2, timeout_s=60)["replicas"]}
        assert set(after) == {gone["id"], recycled["id"]}  # the same replicas, started again
        for r in after.values():
            assert r["pid"] not in (gone["pid"], stranger.pid) and r["restart_count"] == 1
        lost = [e for e in srv.client.events("stale") if e["reason"] == "Lost"]
        assert sorted(e["replica"] for e in lost) == sorted(after)
        assert stranger.poll() is None  # neither adopted nor killed
        assert replica_processes(srv.data_dir) == sorted(r["pid"] for r in after.values())
    finally:
        stop_and_reap(srv)  # the gateway too: a killed server leaves it running
        stranger.kill()
        stranger.wait(5)


def test_second_server_on_the_same_data_dir_exits_with_a_clear_error(server: Server):
    other = new_server(server.data_dir)  # other ports, same data dir
    proc = subprocess.run(
        [*CLI, "server", "--data-dir", str(server.data_dir), "--port", str(other.port),
         "--gateway-port", str(other.gateway_port)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == f"error: another OpenEAS server is running on {server.data_dir}"
    assert "Traceback" not in proc.stderr
    # The first one is untouched: its server.json, its API.
    assert json.loads((server.data_dir / "server.json").read_text()) == server.info
    assert requests.get(f"{server.api_url}/healthz", timeout=5).status_code == 200


def test_deploy_at_start_then_left_as_it_is(tmp_path: Path):
    spec_file = tmp_path / "svc.json"
    spec_file.write_text(json.dumps(service_spec("boot")))
    srv = new_server(tmp_path / "data")
    srv.extra_args = ["--deploy", str(spec_file)]
    srv.start()
    try:
        detail = srv.client.wait_ready("boot", 1, timeout_s=60)
        assert detail["version"] == 1
        srv.stop()
        # The file changed; the service exists: a restart with the same --deploy leaves it alone.
        spec_file.write_text(json.dumps(service_spec("boot", replicas=2)))
        srv.start()
        detail = srv.client.wait_ready("boot", 1, timeout_s=60)
        assert [v["version"] for v in srv.client.versions("boot")] == [1]
        assert detail["desired_replicas"] == 1 and detail["spec"]["metadata"]["instance"] == 1
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("content", "stderr"),
    [
        pytest.param(
            json.dumps({"metadata": {"name": "Bad Name"}, "containers": [{"command": "x", "port": 70000}]}),
            [
                "error: invalid spec {file}",
                "  metadata.name: must start with a lowercase letter and contain only lowercase letters, "
                "digits and '_' (at most 63 characters)",
                "  containers[0].port: must be 1..65535",
            ],
            id="invalid-spec",
        ),
        pytest.param(
            json.dumps({**service_spec("ray_svc"), "runtime": "ray"}),
            [
                "error: invalid spec {file}",
                "  runtime: 'ray': EAS's runtime block is an object ({{\"enable_crash_block\": ...}}); as a "
                "string it is the older spelling of metadata.replica_runtime: 'auto', 'process' or 'container'",
            ],
            id="unknown-runtime",
        ),
        pytest.param(None, ["error: cannot read {file}: No such file or directory"], id="missing-file"),
    ],
)
def test_bad_deploy_file_exits_2_before_anything_starts(tmp_path: Path, content: str | None, stderr: list[str]):
    spec_file = tmp_path / "svc.json"
    if content is not None:
        spec_file.write_text(content)
    data = tmp_path / "data"
    srv = new_server(data)
    proc = subprocess.run(
        [*CLI, "server", "--data-dir", str(data), "--port", str(srv.port), "--gateway-port", str(srv.gateway_port),
         "--deploy", str(spec_file)],
        capture_output=True, text=True, timeout=60, env=srv.env(),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [line.format(file=spec_file) for line in stderr]
    assert not (data / "server.json").exists() and not (data / "logs" / "gateway.log").exists()


def test_tokens_are_never_logged(tmp_path: Path):
    srv = new_server(tmp_path / "data")
    srv.extra_env = {"OPENEAS_LOG_LEVEL": "DEBUG"}  # the most the server ever logs
    srv.start()
    try:
        c = srv.client
        c.deploy(service_spec("given", token="given-token-0123456789", replicas=2))
        c.deploy(service_spec("generated"))
        c.wait_ready("given", 2, timeout_s=60)
        c.wait_ready("generated", 1, timeout_s=60)
        secrets = {srv.info["admin_token"], "given-token-0123456789", c.call_info("generated")["token"]}
        gw = f"{srv.gateway_url}/api/predict"
        for name, token in (("given", "given-token-0123456789"), ("generated", c.call_info("generated")["token"])):
            for auth in (token, f"Bearer {token}"):
                r = requests.post(f"{gw}/{name}/v1/completions", json={"prompt": "x"}, headers={"Authorization": auth}, timeout=10)
                assert r.status_code == 200
        # A wrong token (it might be another service's) and a wrong admin token.
        assert requests.post(f"{gw}/given/echo", headers={"Authorization": "generated-guess-123456"}, timeout=10).status_code == 401
        assert requests.get(f"{srv.api_url}/api/v1/services", headers={"Authorization": "Bearer admin-guess-1234"}, timeout=10).status_code == 401
        secrets |= {"generated-guess-123456", "admin-guess-1234"}
        # Rotate a token: old and new ones both stay out of the logs.
        c.update("given", service_spec("given", token="rotated-token-0123456789", replicas=2))
        c.wait_ready("given", 2, timeout_s=60)
        secrets.add("rotated-token-0123456789")
        r = requests.post(f"{gw}/given/echo", headers={"Authorization": "rotated-token-0123456789"}, timeout=10)
        assert r.status_code == 200
        events = json.dumps([c.events(n) for n in ("given", "generated")])
    finally:
        srv.stop()  # logs complete
    logs = {
        "server": srv.data_dir / "server.out",  # the server's stdout and stderr
        "gateway": srv.data_dir / "logs" / "gateway.log",
        **{f"replica {p.parent.name}": p for p in (srv.data_dir / "replicas").glob("*/replica.log")},
        **{f"other {p.name}": p for p in srv.data_dir.rglob("*.log") if "replicas" not in p.parts and p.name != "gateway.log"},
    }
    texts = {what: path.read_text(errors="replace") for what, path in logs.items()}
    # These are the right files, with content: the search below can find something.
    assert "OpenEAS server ready" in texts["server"] and "DEBUG" in texts["server"]
    assert "gateway listening" in texts["gateway"]
    replica_logs = [t for what, t in texts.items() if what.startswith("replica")]
    assert len(replica_logs) >= 5 and all("listening on" in t for t in replica_logs)
    for secret in secrets:
        assert secret not in events
        for what, text in texts.items():
            assert secret not in text, f"{secret[:6]}… found in the {what} log"
