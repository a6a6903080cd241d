"""Replica placement details: ports, the oss:// root, orphans. Real sockets and processes."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from openeas.errors import MountError
from openeas.runtime.base import kill_orphans
from openeas.runtime.identity import node_tag
from openeas.runtime.launch import pick_port, replica_port_range
from openeas.runtime.process import ProcessRuntime
from openeas.storage.oss import resolve_url
from tests.harness import read_proc, wait_for


@pytest.mark.parametrize(
    "url,want",
    [
        ("oss://bucket/models/", "bucket/models/"),
        ("oss://bucket/models/a.gguf", "bucket/models/a.gguf"),
        ("oss://bucket/x/../y", "bucket/y"),
    ],
    ids=["folder", "file", "dotdot-inside"],
)
def test_oss_maps_inside_the_root(tmp_path: Path, url: str, want: str):
    got = resolve_url(url, tmp_path)
    assert got == (tmp_path.resolve() / want).as_uri() + ("/" if want.endswith("/") else "")


@pytest.mark.parametrize("url", ["oss:///etc/passwd", "oss://../../etc", "oss://bucket/../../x"],
                         ids=["absolute", "dotdot", "dotdot-deep"])
def test_oss_escape_is_rejected(tmp_path: Path, url: str):
    with pytest.raises(MountError, match=r"storage\[0\]\.oss\.path: .* escapes the object-storage root"):
        resolve_url(url, tmp_path / "oss", where="storage[0].oss.path")


def test_other_urls_pass_through(tmp_path: Path):
    assert resolve_url("s3://b/k", tmp_path) == "s3://b/k"
    assert resolve_url("/data/models", tmp_path) == "/data/models"


def test_pick_port_stays_in_range_and_skips_used_and_bound():
    lo, hi = replica_port_range()
    assert hi <= 32768  # below Linux's default ephemeral range
    rng = random.Random(7)
    first = pick_port(set(), rng=random.Random(7))
    with socket.socket() as s:
        s.bind(("127.0.0.1", first))  # now taken: the same draw must move on
        again = pick_port(set(), rng=random.Random(7))
    assert again != first and lo <= again < hi
    assert pick_port({first}, rng=rng) != first


def test_pick_port_range_env_is_validated(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENEAS_REPLICA_PORTS", "9-oops")
    with pytest.raises(ValueError, match="OPENEAS_REPLICA_PORTS: expected LO-HI"):
        replica_port_range()


def _fake_replica(data_dir: Path, rid: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OPENEAS_NODE": node_tag(data_dir), "OPENEAS_REPLICA_ID": rid}
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env,
                            start_new_session=True)


def _replica_id(pid: int) -> str | None:
    p = read_proc(pid)
    return None if p is None else p.env.get("OPENEAS_REPLICA_ID")


def test_kill_orphans_keeps_recorded_and_kills_the_rest(tmp_path: Path):
    kept = _fake_replica(tmp_path, "svc-kept")
    unknown = _fake_replica(tmp_path, "svc-unknown")
    unrecorded = _fake_replica(tmp_path, "svc-unrecorded")  # server died before writing its pid
    twin = _fake_replica(tmp_path, "svc-kept")  # a second process for a recorded replica
    other_dir = _fake_replica(tmp_path / "elsewhere", "svc-unknown")
    procs = {kept: "svc-kept", unknown: "svc-unknown", unrecorded: "svc-unrecorded", twin: "svc-kept",
             other_dir: "svc-unknown"}  # fmt: skip
    # Until a child has exec'd, /proc shows the environment it inherited from this test.
    wait_for(lambda: all(_replica_id(p.pid) == rid for p, rid in procs.items()), 10, what="children exec'd")
    try:
        known = {"svc-kept": kept.pid, "svc-unrecorded": None}
        killed = kill_orphans(ProcessRuntime(), tmp_path, known)
        assert sorted(killed) == sorted([unknown.pid, unrecorded.pid, twin.pid])
        for p in (unknown, unrecorded, twin):  # really killed, not just reported
            assert p.wait(10) == -signal.SIGKILL
        assert kept.poll() is None and other_dir.poll() is None
    finally:
        for p in (kept, unknown, unrecorded, twin, other_dir):
            p.kill()
            p.wait()
