"""The process runtime: replicas are local processes, each the leader of its own session.

A replica runs in a new session (``start_new_session=True``): it survives a ``kill -9`` of the
control plane, and the whole tree it spawns (a shell and its server, a server and its workers)
is one process group that is signalled at once. A :class:`ProcessRef` stores the pid together
with the kernel's start time of the process (field 22 of ``/proc/<pid>/stat``), so a restarted
control plane adopts exactly the processes it started and never signals a recycled pid.

The orphan scan reads each process's environment from /proc: a replica carries
``OPENEAS_REPLICA_ID`` and ``OPENEAS_NODE`` (a hash of the data dir's path, never the path: set
last by the supervisor, so a spec's env cannot hide it), which tells replica processes of one
data dir apart from everything else.

With ``LaunchSpec.user`` the replica runs as that uid and gid with no supplementary groups and
umask 077 (:mod:`openeas.runtime.identity`). Its log is opened by the server, never through a
symlink (the replica owns the folder the log is in).
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

# The /proc helpers live in openeas.procfs (standard library only, so the gateway can use them);
# they stay importable from here for existing callers.
from openeas.procfs import (
    PROC,
    REPLICA_OOM_SCORE_ADJ,
    group_members,
    pid_alive,
    read_stat,
    same_process,
    set_oom_score_adj,
    start_ticks,
)
from openeas.runtime.base import LaunchSpec, ProcessRef, ReplicaProcess
from openeas.runtime.identity import node_tag
from openeas.runtime.limits import replica_preexec

__all__ = ["ProcessRuntime", "group_members", "pid_alive", "read_stat", "start_ticks"]


class ProcessRuntime:
    """Runs each replica as a local process group; see the module docstring."""

    name = "process"

    def __init__(self, *, die_with_parent: bool = False) -> None:
        # Set where a Ray actor starts the replica: the replica dies with the actor (ray_runtime).
        self.die_with_parent = die_with_parent
        # Our own children, by pid: polling them reaps zombies and records exit codes. A ref
        # whose pid is not here was adopted from an earlier control plane.
        self._children: dict[int, tuple[int, subprocess.Popen[bytes]]] = {}

    def start(self, launch: LaunchSpec) -> ProcessRef:
        log = Path(launch.log_path)
        log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        who: dict[str, Any] = {}
        if launch.user is not None:
            who = {"user": launch.user[0], "group": launch.user[1], "extra_groups": [], "umask": 0o077}
        try:
            proc = subprocess.Popen(
                launch.argv,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                env=dict(launch.env),
                cwd=launch.cwd,
                start_new_session=True,
                close_fds=True,
                # The OOM killer's first choice, and the spec's memory as its limit (runtime/limits.py).
                preexec_fn=functools.partial(replica_preexec, launch.memory_limit_mb, self.die_with_parent),
                **who,
            )
        finally:
            os.close(fd)
        if launch.user is not None:
            # A child that switched user is no longer dumpable, so its own write to
            # /proc/self/oom_score_adj (in replica_preexec) is refused: the parent sets it.
            set_oom_score_adj(REPLICA_OOM_SCORE_ADJ, proc.pid)
        ticks = start_ticks(proc.pid)
        if ticks is None:  # pragma: no cover - /proc always has a not yet reaped child
            raise RuntimeError(f"cannot read /proc/{proc.pid}/stat of the replica just started")
        self._children[proc.pid] = (ticks, proc)
        return ProcessRef(pid=proc.pid, start_ticks=ticks)

    def _child(self, ref: ProcessRef) -> subprocess.Popen[bytes] | None:
        entry = self._children.get(ref.pid)
        if entry is None or entry[0] != ref.start_ticks:
            return None
        return entry[1]

    def adopt(self, ref: ProcessRef) -> bool:
        """A process of an earlier control plane is known by its pid and start ticks alone: it is
        not our child, so nothing is recorded and its exit code will never be known."""
        return self.alive(ref)

    def alive(self, ref: ProcessRef) -> bool:
        """True while the replica's leader process runs (zombies count as exited)."""
        child = self._child(ref)
        if child is not None:
            return child.poll() is None
        return same_process(ref.pid, ref.start_ticks)

    def group_alive(self, ref: ProcessRef) -> bool:
        """True while the leader or any other process of the replica's group still runs.

        A shell leader can exit on SIGTERM while the server it started is still shutting down;
        :func:`openeas.runtime.stop` waits for the whole group.
        """
        if self.alive(ref):
            return True
        if not self._group_is_ours(ref):
            return False
        return bool(group_members(ref.pid))

    def exit_code(self, ref: ProcessRef) -> int | None:
        """The exit status (negative: killed by that signal) of our own child, else None."""
        child = self._child(ref)
        if child is None:
            return None
        return child.poll()

    def _group_is_ours(self, ref: ProcessRef) -> bool:
        """Whether process group ``ref.pid`` can only be the replica's group.

        While the leader exists (running or zombie) its start ticks decide. Once the leader is
        gone, Linux does not hand its pid to a new process while a group with that id still has
        members, so a pid that is in use again with other start ticks means our group is empty
        and the number belongs to someone else. (Left: the pid being reused *and* its new owner
        already gone while it leads a group of its own; that needs a full pid wrap-around.)
        """
        child = self._child(ref)
        if child is not None:
            child.poll()  # reap the leader if it exited; the group may live on
        st = read_stat(ref.pid)
        return st is None or st[2] == ref.start_ticks

    def forget(self, ref: ProcessRef) -> None:
        entry = self._children.get(ref.pid)
        if entry is not None and entry[0] == ref.start_ticks:
            del self._children[ref.pid]

    def signal(self, ref: ProcessRef, sig: int) -> None:
        """Send ``sig`` to the replica's process group; never to a recycled pid."""
        if not self._group_is_ours(ref):
            return
        try:
            os.killpg(ref.pid, sig)
        except ProcessLookupError:
            pass

    def replica_processes(self, data_dir: Path) -> list[ReplicaProcess]:
        return replica_processes(data_dir)

    def kill(self, proc: ReplicaProcess) -> bool:
        """SIGKILL ``proc.pid`` unless it is gone or no longer in ``proc.pgid`` (pid reused)."""
        st = read_stat(proc.pid)
        if st is None or st[0] == "Z" or st[1] != proc.pgid:
            return False
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True


def _environ(pid: int) -> dict[str, str]:
    """The two variables of /proc/<pid>/environ that mark a replica process (empty if unreadable)."""
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep and k in (b"OPENEAS_NODE", b"OPENEAS_REPLICA_ID"):
            out[k.decode()] = v.decode(errors="replace")
    return out


def replica_processes(data_dir: Path) -> list[ReplicaProcess]:
    """Every live process on this host started as a replica for ``data_dir`` (a /proc scan).

    Only replica processes carry a replica id; the server and gateway may share the data-dir env.
    """
    out = []
    me = os.getpid()
    tag = node_tag(data_dir)
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        env = _environ(pid)
        rid = env.get("OPENEAS_REPLICA_ID")
        if rid is None or env.get("OPENEAS_NODE") != tag:
            continue
        st = read_stat(pid)
        if st is not None and st[0] != "Z":
            out.append(ReplicaProcess(pid=pid, replica_id=rid, pgid=st[1]))
    return out
