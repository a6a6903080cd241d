"""A runtime and a clock you can fake: replica life without processes, sockets or waiting.

:class:`FakeRuntime` keeps an in-memory process table. Each process behaves as its
:class:`Behaviour` says (ready after some seconds or never, exits by itself, ignores SIGTERM or
takes a while to stop, fails to start at all, stops answering its probes), and a test can
crash it or make it unhealthy at any moment. Its :meth:`FakeRuntime.probe` and
:meth:`FakeRuntime.warmup` answer for the replicas the way a real server would, so a
supervisor's readiness comes from the fake process's health, without sockets.
Time is :class:`openeas.kernel.clock.FakeClock`'s: concurrent supervisors and the reconciler
share one virtual timeline and minutes of replica life take milliseconds.

It lives in the package, not under tests/, so that tests and future work (simulations of the
reconciler, capability checks without a model server) share one fake. It is deliberately not in
``openeas.runtime.RUNTIMES``: that registry is what a spec may select, and a server whose
replicas are fakes would route traffic to nothing.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from openeas.kernel.checks import ProbeResult, WarmupReport, WarmupRequest
from openeas.kernel.clock import Clock
from openeas.runtime.base import LaunchSpec, ProcessRef, ReplicaProcess
from openeas.runtime.identity import node_tag
from openeas.spec.models import HealthCheck

# ---- processes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Behaviour:
    """How one fake replica process behaves. Times are seconds after its start (or after the
    SIGTERM), on the runtime's clock."""

    ready_after_s: float | None = 0.0  # probes pass from then on; None: it never gets ready
    unhealthy_after_s: float | None = None  # probes fail from then on (it hangs but runs)
    exit_after_s: float | None = None  # it exits by itself then (a crash, or an exit during start)
    exit_code: int = 1  # the status of that exit
    term_exit_s: float | None = 0.0  # how long SIGTERM takes to end it; None: SIGTERM is ignored
    start_error: str | None = None  # start() raises OSError with this message (cannot exec)


@dataclass
class FakeProcess:
    """One entry of the fake process table; a replica leads its own group, so ``pgid == pid``."""

    pid: int
    start_ticks: int
    launch: LaunchSpec
    behaviour: Behaviour
    started_at: float
    healthy: bool = True  # set False to make a running process fail its probes
    signals: list[tuple[float, int]] = field(default_factory=list)  # (when, signal) delivered
    term_at: float | None = None
    forced_end: tuple[float, int] | None = None  # (when, status) of a SIGKILL or crash()

    @property
    def pgid(self) -> int:
        return self.pid

    @property
    def replica_id(self) -> str:
        return self.launch.replica_id

    def end(self) -> tuple[float, int] | None:
        """``(when, exit status)`` of its end as far as it is decided, earliest first."""
        b = self.behaviour
        ends = [self.forced_end] if self.forced_end is not None else []
        if b.exit_after_s is not None:
            ends.append((self.started_at + b.exit_after_s, b.exit_code))
        if self.term_at is not None and b.term_exit_s is not None:
            ends.append((self.term_at + b.term_exit_s, -signal.SIGTERM))
        return min(ends, default=None)

    def running(self, now: float) -> bool:
        end = self.end()
        return end is None or now < end[0]

    def ready(self, now: float) -> bool:
        b, age = self.behaviour, now - self.started_at
        if not (self.running(now) and self.healthy) or b.ready_after_s is None or age < b.ready_after_s:
            return False
        return b.unhealthy_after_s is None or age < b.unhealthy_after_s


class FakeRuntime:
    """An in-memory :class:`~openeas.runtime.base.Runtime` (see the module docstring)."""

    name = "fake"

    def __init__(
        self, clock: Clock, behaviour: Behaviour = Behaviour(), *, table: dict[int, FakeProcess] | None = None
    ) -> None:
        self.clock = clock
        self.behaviour = behaviour  # for every start that `queue` did not plan
        self.queued: list[Behaviour] = []
        # The host's processes: shared with the runtime of a restarted control plane.
        self.table: dict[int, FakeProcess] = {} if table is None else table
        # Started here and not forgotten: like the process runtime's children, the only ones
        # whose exit status is known.
        self.children: dict[int, FakeProcess] = {}
        self.started: list[FakeProcess] = []  # every start by this runtime, in order
        self.probes: list[tuple[float, int, bool]] = []  # (when, port, ok) of every probe answered

    def next_control_plane(self) -> FakeRuntime:
        """The runtime of a control plane restarted on the same host: same processes, no children."""
        return FakeRuntime(self.clock, self.behaviour, table=self.table)

    def queue(self, *behaviours: Behaviour) -> None:
        """The behaviours of the next starts, in order (then ``self.behaviour`` again)."""
        self.queued.extend(behaviours)

    # ---- the Runtime protocol ---------------------------------------------------------------
    def start(self, launch: LaunchSpec) -> ProcessRef:
        b = self.queued.pop(0) if self.queued else self.behaviour
        if b.start_error is not None:
            raise OSError(b.start_error)
        now = self.clock.now()
        pid = max(self.table, default=1000) + 1  # never reused: a stale ref finds nothing
        proc = FakeProcess(pid=pid, start_ticks=int(now * 100), launch=launch, behaviour=b, started_at=now)
        self.table[pid] = self.children[pid] = proc
        self.started.append(proc)
        return ProcessRef(pid=pid, start_ticks=proc.start_ticks)

    def _proc(self, ref: ProcessRef) -> FakeProcess | None:
        p = self.table.get(ref.pid)
        return p if p is not None and p.start_ticks == ref.start_ticks else None

    def adopt(self, ref: ProcessRef) -> bool:
        return self.alive(ref)

    def alive(self, ref: ProcessRef) -> bool:
        p = self._proc(ref)
        return p is not None and p.running(self.clock.now())

    def group_alive(self, ref: ProcessRef) -> bool:
        return self.alive(ref)

    def exit_code(self, ref: ProcessRef) -> int | None:
        p = self.children.get(ref.pid)
        end = p.end() if p is not None and p.start_ticks == ref.start_ticks else None
        return end[1] if end is not None and self.clock.now() >= end[0] else None

    def signal(self, ref: ProcessRef, sig: int) -> None:
        p = self._proc(ref)
        now = self.clock.now()
        if p is not None and p.running(now):
            self._deliver(p, sig, now)

    def _deliver(self, p: FakeProcess, sig: int, now: float) -> None:
        p.signals.append((now, sig))
        if sig == signal.SIGTERM and p.term_at is None:
            p.term_at = now
        elif sig == signal.SIGKILL:
            p.forced_end = (now, -signal.SIGKILL)

    def forget(self, ref: ProcessRef) -> None:
        p = self.children.get(ref.pid)
        if p is not None and p.start_ticks == ref.start_ticks:
            del self.children[ref.pid]

    def replica_processes(self, data_dir: Path) -> list[ReplicaProcess]:
        return [
            ReplicaProcess(pid=p.pid, replica_id=p.launch.env["OPENEAS_REPLICA_ID"], pgid=p.pgid)
            for p in self.live()
            if "OPENEAS_REPLICA_ID" in p.launch.env and p.launch.env.get("OPENEAS_NODE") == node_tag(data_dir)
        ]

    def kill(self, proc: ReplicaProcess) -> bool:
        p = self.table.get(proc.pid)
        now = self.clock.now()
        if p is None or p.pgid != proc.pgid or not p.running(now):
            return False
        self._deliver(p, signal.SIGKILL, now)
        return True

    # ---- what the replicas answer on their ports ----------------------------------------------
    def _listening(self, port: int) -> FakeProcess | None:
        return next((p for p in reversed(self.live()) if p.launch.port == port), None)

    async def probe(self, host: str, port: int, check: HealthCheck | None) -> ProbeResult:
        """A probe answered by the process on ``port``: ok once it is ready and healthy."""
        now = self.clock.now()
        p = self._listening(port)
        ok = p is not None and p.ready(now)
        self.probes.append((now, port, ok))
        if p is None:
            return ProbeResult(False, f"connection refused by {host}:{port}")
        return ProbeResult(ok, "fake: ready" if ok else "fake: not ready")

    async def warmup(
        self, host: str, port: int, requests: Iterable[WarmupRequest], *, timeout_s: float
    ) -> WarmupReport:
        """Every warmup request succeeds if the process on ``port`` is ready, else all fail."""
        total = sum(r.count for r in requests)
        p = self._listening(port)
        if p is not None and p.ready(self.clock.now()):
            return WarmupReport(sent=total, failed=0, duration_s=0.0)
        return WarmupReport(sent=total, failed=total, duration_s=0.0, errors=("fake: not ready",))

    # ---- for tests --------------------------------------------------------------------------
    def live(self) -> list[FakeProcess]:
        """The running processes, oldest first."""
        now = self.clock.now()
        return [p for p in self.table.values() if p.running(now)]

    def latest(self, replica_id: str) -> FakeProcess | None:
        """The newest process started for ``replica_id`` (running or not)."""
        return next((p for p in reversed(self.table.values()) if p.replica_id == replica_id), None)

    def crash(self, replica_id: str, code: int = 1) -> FakeProcess:
        """End the replica's running process now with status ``code``."""
        p = self.latest(replica_id)
        now = self.clock.now()
        assert p is not None and p.running(now), f"replica {replica_id} has no running process"
        p.forced_end = (now, code)
        return p
