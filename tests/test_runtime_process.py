"""The process runtime with real processes: start, watch, adopt, signal, stop."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from openeas.runtime import (
    RUNTIMES,
    LaunchSpec,
    ProcessRef,
    ProcessRuntime,
    get_runtime,
    stop,
)
from openeas.runtime.base import ReplicaProcess
from openeas.runtime.identity import node_tag
from openeas.runtime.process import read_stat, start_ticks


def wait_for(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def launch(tmp_path: Path, argv: list[str], name: str = "r1", **env: str) -> LaunchSpec:
    return LaunchSpec(
        replica_id=name,
        argv=argv,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        cwd=str(tmp_path),
        log_path=str(tmp_path / "logs" / name / "replica.log"),
        port=0,
    )


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


@pytest.fixture
def rt() -> ProcessRuntime:
    return ProcessRuntime()


def test_start_alive_log_env_cwd_and_exit_code(tmp_path: Path, rt: ProcessRuntime) -> None:
    spec = launch(tmp_path, py("import os,sys; print(os.getcwd(), os.environ['X']); sys.exit(3)"), X="hello")
    ref = rt.start(spec)
    assert ref.start_ticks == start_ticks(ref.pid)
    wait_for(lambda: not rt.alive(ref))
    assert rt.exit_code(ref) == 3
    assert Path(spec.log_path).read_text().strip() == f"{tmp_path} hello"


def test_new_session_and_stdin_devnull(tmp_path: Path, rt: ProcessRuntime) -> None:
    ref = rt.start(
        launch(tmp_path, py("import sys,time; print(repr(sys.stdin.read()), flush=True); time.sleep(30)"))
    )
    try:
        st = read_stat(ref.pid)
        assert st is not None and st[1] == ref.pid  # leads its own process group
        assert os.getsid(ref.pid) == ref.pid  # and its own session
        log = tmp_path / "logs" / "r1" / "replica.log"
        wait_for(lambda: log.exists() and "''" in log.read_text())
    finally:
        rt.signal(ref, signal.SIGKILL)


def test_log_is_appended_and_stderr_captured(tmp_path: Path, rt: ProcessRuntime) -> None:
    for word in ("first", "second"):
        code = f"import sys; print('{word}', flush=True); print('err', file=sys.stderr)"
        ref = rt.start(launch(tmp_path, py(code)))
        wait_for(lambda ref=ref: not rt.alive(ref))
    text = (tmp_path / "logs" / "r1" / "replica.log").read_text().split()
    assert text == ["first", "err", "second", "err"]


def test_adopted_ref_in_a_fresh_runtime(tmp_path: Path, rt: ProcessRuntime) -> None:
    ref = rt.start(launch(tmp_path, ["sleep", "30"]))
    other = ProcessRuntime()  # a restarted control plane: not our child any more
    stored = ProcessRef(pid=ref.pid, start_ticks=ref.start_ticks)
    assert other.adopt(stored) and other.alive(stored)
    assert not other.adopt(ProcessRef(pid=ref.pid, start_ticks=ref.start_ticks + 1))  # a recycled pid
    assert other.exit_code(stored) is None  # only children report exit codes
    other.signal(stored, signal.SIGTERM)
    # The leader is a zombie until its parent (rt) reaps it: adopted alive() must say False.
    wait_for(lambda: not other.alive(stored))
    assert rt.exit_code(ref) == -signal.SIGTERM


def test_recycled_pid_is_never_signalled(tmp_path: Path, rt: ProcessRuntime) -> None:
    # The process answers SIGUSR1 by appending to a file: an answer after the stale SIGKILLs
    # proves none of them reached it (a SIGKILL ends a process before any later signal).
    seen = tmp_path / "usr1"
    code = (
        "import pathlib, signal, time\n"
        f"f = pathlib.Path({str(seen)!r})\n"
        "signal.signal(signal.SIGUSR1, lambda *_: f.write_text(f.read_text() + 'x' if f.exists() else 'x'))\n"
        "print('armed', flush=True)\n"
        "time.sleep(30)\n"
    )
    ref = rt.start(launch(tmp_path, py(code)))
    log = tmp_path / "logs" / "r1" / "replica.log"
    try:
        wait_for(lambda: log.exists() and "armed" in log.read_text())
        stale = ProcessRef(pid=ref.pid, start_ticks=ref.start_ticks + 1)  # "another" process
        for runtime in (rt, ProcessRuntime()):
            assert not runtime.alive(stale)
            runtime.signal(stale, signal.SIGKILL)
        rt.signal(ref, signal.SIGUSR1)
        wait_for(lambda: seen.exists() and seen.read_text() == "x")
        assert rt.alive(ref)  # untouched
    finally:
        rt.signal(ref, signal.SIGKILL)


def test_signal_to_a_gone_process_is_ignored(tmp_path: Path, rt: ProcessRuntime) -> None:
    ref = rt.start(launch(tmp_path, ["true"]))
    wait_for(lambda: not rt.alive(ref))
    rt.signal(ref, signal.SIGTERM)  # no error
    ProcessRuntime().signal(ProcessRef(pid=ref.pid, start_ticks=ref.start_ticks), signal.SIGTERM)


def test_read_stat_with_spaces_and_parens_in_comm(tmp_path: Path, rt: ProcessRuntime) -> None:
    sleep = shutil.which("sleep")
    assert sleep is not None
    odd = tmp_path / "a) b (c"  # the comm field becomes "(a) b (c)"
    shutil.copy(sleep, odd)
    ref = rt.start(launch(tmp_path, [str(odd), "30"]))
    try:
        st = read_stat(ref.pid)
        assert st is not None
        state, pgrp, ticks = st
        assert state in "RSD" and pgrp == ref.pid and ticks == ref.start_ticks
        assert (Path("/proc") / str(ref.pid) / "comm").read_text().strip() == "a) b (c"
    finally:
        rt.signal(ref, signal.SIGKILL)


IGNORE_TERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.mark.parametrize(
    ("argv", "ready", "grace_s", "expected"),
    [
        (["sleep", "30"], None, 5.0, "terminated"),
        (py(IGNORE_TERM), "ready", 0.3, "killed"),
    ],
    ids=["exits-on-sigterm", "ignores-sigterm"],
)
async def test_stop(
    tmp_path: Path, rt: ProcessRuntime, argv: list[str], ready: str | None, grace_s: float, expected: str
) -> None:
    spec = launch(tmp_path, argv)
    ref = rt.start(spec)
    if ready:
        wait_for(lambda: ready in Path(spec.log_path).read_text())
    t0 = time.monotonic()
    assert await stop(rt, ref, grace_s) == expected
    assert not rt.alive(ref)
    assert not rt.group_alive(ref)
    if expected == "killed":
        assert rt.exit_code(ref) == -signal.SIGKILL
        assert time.monotonic() - t0 >= grace_s


async def test_stop_waits_for_the_group_after_the_shell_leader_exits(
    tmp_path: Path, rt: ProcessRuntime
) -> None:
    # bash (the leader) dies on SIGTERM at once; its child needs 0.5 s to shut down cleanly.
    child = tmp_path / "child.py"
    child.write_text(
        "import signal, sys, time\n"
        "def term(*_):\n"
        "    time.sleep(0.5)\n"
        "    open('clean', 'w').write('yes')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, term)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    spec = launch(tmp_path, ["/bin/bash", "-c", f"{sys.executable} {child}; echo after"])
    ref = rt.start(spec)
    wait_for(lambda: "ready" in Path(spec.log_path).read_text())
    assert await stop(rt, ref, 5.0) == "terminated"
    assert (tmp_path / "clean").read_text() == "yes"


async def test_stop_kills_the_whole_group(tmp_path: Path, rt: ProcessRuntime) -> None:
    spec = launch(tmp_path, ["/bin/bash", "-c", "sleep 60 & echo $! > child.pid; wait"])
    ref = rt.start(spec)
    pid_file = tmp_path / "child.pid"
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "")
    child = int(pid_file.read_text())
    assert await stop(rt, ref, 5.0) == "terminated"
    st = read_stat(child)
    assert st is None or st[0] == "Z"


async def test_stop_of_a_gone_replica(tmp_path: Path, rt: ProcessRuntime) -> None:
    ref = rt.start(launch(tmp_path, ["true"]))
    wait_for(lambda: not rt.alive(ref))
    assert await stop(rt, ref, 1.0) == "terminated"


def test_registry() -> None:
    assert isinstance(get_runtime("process"), ProcessRuntime)
    assert "process" in RUNTIMES
    assert "fake" not in RUNTIMES  # openeas.runtime.fake is for tests, never for a spec
    with pytest.raises(ValueError, match=r"unknown runtime 'ray' \(known: process\)"):
        get_runtime("ray")


def test_forget_drops_only_the_matching_child(tmp_path: Path):
    rt = ProcessRuntime()
    launch = LaunchSpec(replica_id="r", argv=[sys.executable, "-c", "pass"], env={}, cwd=str(tmp_path),
                        log_path=str(tmp_path / "log"), port=1)
    ref = rt.start(launch)
    wait_for(lambda: not rt.alive(ref))
    assert rt.exit_code(ref) == 0
    rt.forget(ProcessRef(pid=ref.pid, start_ticks=ref.start_ticks + 1))  # another process's ref: kept
    assert rt.exit_code(ref) == 0
    rt.forget(ref)
    assert rt.exit_code(ref) is None  # nothing kept about it any more


def test_scan_finds_replicas_of_this_data_dir_and_kill_checks_the_group(tmp_path: Path, rt: ProcessRuntime) -> None:
    env = {"OPENEAS_REPLICA_ID": "svc-1", "OPENEAS_NODE": node_tag(tmp_path)}
    ref = rt.start(launch(tmp_path, ["sleep", "30"], **env))
    elsewhere = rt.start(launch(tmp_path, ["sleep", "30"], name="r2", **{**env, "OPENEAS_NODE": node_tag(Path("/x"))}))
    try:
        wait_for(lambda: bool(rt.replica_processes(tmp_path)))  # once exec'd, its env is readable
        found = rt.replica_processes(tmp_path)
        assert found == [ReplicaProcess(pid=ref.pid, replica_id="svc-1", pgid=ref.pid)]
        assert not rt.kill(found[0]._replace(pgid=ref.pid + 1))  # the pid is someone else's now
        assert rt.alive(ref)
        assert rt.kill(found[0])
        wait_for(lambda: not rt.alive(ref))
        assert rt.exit_code(ref) == -signal.SIGKILL and rt.alive(elsewhere)
    finally:
        for r in (ref, elsewhere):
            rt.signal(r, signal.SIGKILL)
