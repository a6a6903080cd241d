"""``python -m openeas.gateway --workers N``: N gateway processes on one port, and the process
that keeps them running.

Each worker is a whole gateway (``--worker-index K``) listening with SO_REUSEPORT on the shared
port: the kernel spreads new connections over the workers, so the gateway uses N cores. Each
worker reads the same routing source and binds a notification socket of its own (worker 0
``run/gateway.sock``, worker K ``run/gateway.K.sock``): the control plane notifies every one and
waits for every one's acknowledgement (`openeas.gateway.routing.notify.RoutingNotifier`). Each sends its
own counters datagram under its own id; the control plane sums live gateways (the autoscaler and
drains see the sum). /metrics and /groups answer for all workers (`openeas.gateway.telemetry.siblings`).

The supervisor (this module, the process `openeas server` records and adopts) starts the
workers, writes its ``--ready-file`` once all of them listen, starts again a worker that exits,
and on SIGTERM passes the signal on (each worker finishes its requests in flight) and waits for
them. A worker exits when the supervisor is gone (``--parent-pid``).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

log = logging.getLogger("openeas.gateway")

MAX_WORKERS_PER_CORE = 4  # the largest --workers is this many per core
SUPERVISE_S = 0.2  # seconds between two looks at the workers
RESTART_GAP_S = 1.0  # a worker that exits again is started again at most this often (seconds)
READY_TIMEOUT_S = 60.0  # seconds for every worker to listen at start
# Flags of the supervisor's command line that each worker gets a value of its own for.
_OWN_FLAGS = ("--ready-file", "--parent-pid", "--worker-index", "--worker-dir")


def check_workers(n: int, cores: int | None = None, field: str = "--workers") -> int:
    """``n`` when it is a valid worker count (1 to `MAX_WORKERS_PER_CORE` per core), else a
    ValueError that names ``field``."""
    cores = cores or os.cpu_count() or 1
    most = cores * MAX_WORKERS_PER_CORE
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= most:
        raise ValueError(
            f"{field}: expected a whole number from 1 to {most} "
            f"({MAX_WORKERS_PER_CORE} per core, {cores} cores here), got {n!r}"
        )
    return n


def without_flags(argv: Sequence[str], flags: Sequence[str]) -> list[str]:
    """``argv`` less every ``--flag VALUE`` and ``--flag=VALUE`` of ``flags``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.partition("=")[0]
        if name in flags:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def worker_argv(argv: Sequence[str], index: int, supervisor_pid: int, folder: Path) -> list[str]:
    """Worker ``index``'s command line: the supervisor's arguments (``argv``, without the program)
    with a ready file, parent and index of its own, the supervisor's folder (``folder``: ready
    files, counter snapshots) and SO_REUSEPORT."""
    own = without_flags(argv, _OWN_FLAGS)
    reuse = [] if "--reuse-port" in own else ["--reuse-port"]
    return [
        sys.executable, "-m", "openeas.gateway", *own, *reuse,
        "--worker-index", str(index), "--parent-pid", str(supervisor_pid), "--worker-dir", str(folder),
        "--ready-file", str(ready_path(folder, index)),
    ]  # fmt: skip


def ready_path(folder: Path, index: int) -> Path:
    """Written by worker ``index`` once it listens."""
    return Path(folder) / f"worker.{index}.ready"


class Supervisor:
    """Starts ``n`` workers with `worker_argv` and keeps them running until `stop`."""

    def __init__(self, argv: Sequence[str], n: int, grace_s: float) -> None:
        self.argv = list(argv)
        self.n = n
        self.grace_s = grace_s  # the workers' own grace; they get 2 s more before SIGKILL
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * n
        self.started_at = [0.0] * n  # monotonic seconds each worker was last started
        self.restarts = 0  # workers started again after they exited
        self.stopping = threading.Event()
        self._dir = Path(tempfile.mkdtemp(prefix="openeas-gateway-"))

    def _ready(self, k: int) -> Path:
        return ready_path(self._dir, k)

    def spawn(self, k: int) -> None:
        self._ready(k).unlink(missing_ok=True)
        # stdout/stderr: the supervisor's (the gateway log); its own session is the supervisor's.
        argv = worker_argv(self.argv, k, os.getpid(), self._dir)
        self.procs[k] = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        self.started_at[k] = time.monotonic()

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start every worker and wait until each listens; a worker that exits meanwhile, or a
        timeout, stops the others and raises RuntimeError."""
        for k in range(self.n):
            self.spawn(k)
        deadline = time.monotonic() + timeout_s
        while not all(self._ready(k).exists() for k in range(self.n)):
            for k, p in enumerate(self.procs):
                if p is not None and p.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"gateway worker {k} exited with code {p.returncode} at start")
            if time.monotonic() > deadline or self.stopping.is_set():
                self.stop()
                raise RuntimeError(f"the gateway workers did not all listen within {timeout_s:.0f}s")
            time.sleep(0.02)

    def check(self) -> None:
        """Start again each worker that exited (at most once per `RESTART_GAP_S` each)."""
        for k, p in enumerate(self.procs):
            if p is None or p.poll() is None or self.stopping.is_set():
                continue
            if time.monotonic() - self.started_at[k] < RESTART_GAP_S:
                continue
            log.error("gateway worker %d (pid %d) exited (code %s); restarting it", k, p.pid, p.returncode)
            self.spawn(k)
            self.restarts += 1

    def run(self) -> None:
        while not self.stopping.wait(SUPERVISE_S):
            self.check()
        self.stop()

    def stop(self) -> None:
        """SIGTERM to every worker (each finishes its requests in flight); SIGKILL after the grace."""
        self.stopping.set()
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for p in live:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s + 2.0
        for p in live:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


def supervise(argv: Sequence[str], n: int, grace_s: float, ready_file: Path | None) -> int:
    """Run ``n`` workers until SIGTERM/SIGINT; the exit code of the supervisor process."""
    sup = Supervisor(argv, n, grace_s)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        sup.stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        sup.start()
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    log.info("gateway supervisor %d: %d workers listening", os.getpid(), n)
    if ready_file is not None:
        ready_file.write_text(f"{os.getpid()}\n")
    sup.run()
    return 0
