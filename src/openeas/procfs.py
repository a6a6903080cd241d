"""What the kernel says about processes on this host: /proc/<pid>/stat and signal-0 probes.

Standard library only: the gateway process (which must stay light) watches its parent with
``pid_alive``, and the process runtime, the reconciler and the SDK use the same helpers.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

PROC = Path("/proc")
log = logging.getLogger("openeas.procfs")


def read_stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, pgrp, start_ticks)`` of ``pid`` from /proc/<pid>/stat, or None if it is gone.

    The second field (comm) is in parentheses and may itself contain spaces and ')', so the
    fields are counted from the *last* ')'.
    """
    try:
        raw = (PROC / str(pid) / "stat").read_bytes()
    except OSError:  # gone (FileNotFoundError, ProcessLookupError), not ours to read, or /proc away
        return None
    end = raw.rfind(b")")
    if end < 0:
        return None
    rest = raw[end + 1 :].split()
    # rest[0] is field 3 (state), rest[2] field 5 (pgrp), rest[19] field 22 (starttime).
    try:
        return rest[0].decode(), int(rest[2]), int(rest[19])
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int | None) -> bool | None:
    """True/False when `pid` is known on this host; None when it cannot be told."""
    if pid is None or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it is just not ours to signal
    except OSError:
        return None
    return True


def same_process(pid: int, ticks: int | None) -> bool:
    """Whether ``pid`` still is the process that started at ``ticks`` and has not exited
    (a zombie or dead entry counts as exited; another start time means a recycled pid)."""
    st = read_stat(pid)
    return st is not None and st[2] == ticks and st[0] not in ("Z", "X")


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks after boot when the process started)."""
    st = read_stat(pid)
    return None if st is None else st[2]


def group_members(pgid: int) -> list[int]:
    """Pids of live (non-zombie) processes in process group ``pgid`` (a scan of /proc)."""
    members: list[int] = []
    try:
        names = os.listdir(PROC)
    except OSError:
        return members
    for name in names:
        if not name.isdigit():
            continue
        st = read_stat(int(name))
        if st is not None and st[1] == pgid and st[0] != "Z":
            members.append(int(name))
    return members


# Who the OOM killer takes first (runtime/limits.py says why): the control plane last, replicas first.
CONTROL_PLANE_OOM_SCORE_ADJ = -900
"""The server's and the gateway's ``oom_score_adj`` (-1000 would exempt them entirely)."""
REPLICA_OOM_SCORE_ADJ = 800
"""Every process replica's ``oom_score_adj`` (1000 is "always first"; 800 leaves room above)."""


def set_oom_score_adj(value: int, pid: int | str = "self") -> int | None:
    """Write ``value`` to /proc/PID/oom_score_adj; the value in force after (None: unreadable).
    A value the kernel refuses (lowering without the privilege) leaves the old one, logged."""
    path = PROC / str(pid) / "oom_score_adj"
    try:
        path.write_text(str(value))
    except OSError as exc:
        log.info("oom_score_adj %d not applied to %s: %s", value, pid, exc)
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None
