"""The process runtime: replicas are local processes, each the leader of its own session.

A replica runs in a new session (``start_new_session=True``): it survives a ``kill -9`` of the
control plane, and the whole tree it spawns (a shell and its server, a server and its workers)
is one process group that is signalled at once. A :class:`ProcessRef` stores the pid together
with the kernel's start time of the process (field 22 of ``/proc/<pid>/stat``), so a restarted
control plane adopts exactly the processes it started and never signals a recycled pid.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

# The /proc helpers live in openeas.procfs (standard library only, so the gateway can use them);
# they stay importable from here for existing callers.
from openeas.procfs import group_members, pid_alive, read_stat, start_ticks
from openeas.runtime.base import LaunchSpec, ProcessRef

__all__ = ["ProcessRuntime", "group_members", "pid_alive", "read_stat", "start_ticks"]


class ProcessRuntime:
    """Runs each replica as a local process group; see the module docstring."""

    name = "process"

    def __init__(self) -> None:
        # Our own children, by pid: polling them reaps zombies and records exit codes. A ref
        # whose pid is not here was adopted from an earlier control plane.
        self._children: dict[int, tuple[int, subprocess.Popen[bytes]]] = {}

    def start(self, launch: LaunchSpec) -> ProcessRef:
        log = Path(launch.log_path)
        log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
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
            )
        finally:
            os.close(fd)
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

    def alive(self, ref: ProcessRef) -> bool:
        """True while the replica's leader process runs (zombies count as exited)."""
        child = self._child(ref)
        if child is not None:
            return child.poll() is None
        st = read_stat(ref.pid)
        return st is not None and st[2] == ref.start_ticks and st[0] != "Z"

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
