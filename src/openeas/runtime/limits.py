"""Who the kernel's OOM killer takes first, and the memory limit of a process replica.

The control plane must survive a node that runs out of memory, its replicas need not: the
server and the gateway lower their own ``oom_score_adj``
(``openeas.procfs.CONTROL_PLANE_OOM_SCORE_ADJ``, where
the kernel permits it: lowering needs root or CAP_SYS_RESOURCE) and every process replica raises
its own to ``REPLICA_OOM_SCORE_ADJ`` (always permitted) before it runs its command, so a replica
and all it spawns are the OOM killer's first choice.

A spec's ``metadata.memory`` (MB) is also the process replica's limit: ``RLIMIT_DATA`` (the
process's private writable memory: heap and anonymous maps, which is what a model server grows;
``RLIMIT_AS`` would also count the address space a server reserves but never touches, and kills
many servers at start). An allocation past it fails (ENOMEM) instead of taking the node. It is
not a cgroup's memory.max: memory shared with other processes (a file's page cache, shared
maps) is not counted, and each process of the replica has its own limit. Container replicas get
the engine's ``--memory`` instead (runtime/container_args.py).
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal

from openeas.procfs import REPLICA_OOM_SCORE_ADJ

MEMORY_LIMIT_HOW = "RLIMIT_DATA (private writable memory of each process; not a cgroup memory.max)"
"""How a process replica's memory limit is applied, as describe says it."""


_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here, not between fork and exec


def replica_preexec(memory_limit_mb: int | None, die_with_parent: bool = False) -> None:
    """Runs in a process replica between fork and exec: only system calls, no locks, no logging
    (the parent has threads). The OOM killer's first choice; the spec's memory as RLIMIT_DATA;
    with ``die_with_parent`` a SIGKILL when the starting process dies (the Ray runtime's actor:
    a lost Ray node leaves no replica behind)."""
    if die_with_parent:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
        try:
            os.write(fd, str(REPLICA_OOM_SCORE_ADJ).encode())
        finally:
            os.close(fd)
    except OSError:
        pass
    if memory_limit_mb is not None:
        limit = memory_limit_mb * 2**20
        _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit if hard == resource.RLIM_INFINITY else hard))
