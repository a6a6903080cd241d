"""What every part of a replica's supervisor shares (controller/replica.py tells its life): the
configuration, the gateway's view of a replica, the exceptions that steer the life loop, and the
row, event and wait helpers over the store and the clock.

The supervisor is one object built in layers, one module each, each a subclass of the one before:
this base, the start phases (controller/startup.py: fetch, prepare, start, probe until ready, warm
up), the standby park and promotion (controller/standby.py), and the life loop with watch,
restart and drain (controller/replica.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Unpack

from openeas.controller.capacity import AdmissionGate
from openeas.controller.probe import Probe, probe_once
from openeas.controller.warmup import WarmupSender, run_warmup
from openeas.kernel.clock import Clock, LoopClock
from openeas.kernel.states import ReplicaPhase
from openeas.runtime import ProcessRef, Runtime
from openeas.runtime.identity import ReplicaUser, ReplicaUsers
from openeas.runtime.select import Runtimes
from openeas.storage import NodeCache
from openeas.storage.cache_index import limit_from_env
from openeas.storage.hostpaths import HostPaths
from openeas.store import ReplicaRow, Store
from openeas.store.schema import ReplicaFields

# How often a starting or Ready replica's process is checked for life (a cheap runtime call), seconds.
ALIVE_CHECK_S = 0.1


class GatewayView(NamedTuple):
    """One replica as the gateway sees it now."""

    routed: bool  # new requests may still be sent to it (the gateway has not applied Draining yet)
    in_flight: int  # requests sent to it and not yet answered (streams included)


# Asks the gateway about one replica id; None when the gateway cannot be reached.
GatewayViewFn = Callable[[str], Awaitable[GatewayView | None]]


@dataclass
class SupervisorConfig:
    data_dir: Path
    oss_root: Path | None
    # The host folders a spec may name (the server's --allow-host-path, its local bucket): checked
    # again at each start, so a version stored before the rule cannot read the host. None: unchecked.
    host_paths: HostPaths | None = None
    # Time between leaving the routing table and SIGTERM when the gateway cannot be asked
    # (`gateway_view` is None or fails), seconds.
    drain_s: float = 1.0
    # What the gateway knows about a replica (routed? requests in flight?): a drain waits on it.
    gateway_view: GatewayViewFn | None = None
    base_env: Mapping[str, str] | None = None
    # Called with (service, cold-start breakdown) when a replica becomes Ready (metrics).
    on_ready: Callable[[str, Mapping[str, float | None]], None] | None = None
    # How supervisors and the reconciler wait, probe and warm up: real by default, fakes in tests.
    clock: Clock = field(default_factory=LoopClock)
    probe: Probe = probe_once
    warmup: WarmupSender = run_warmup
    # Who process replicas run as (openeas.runtime.identity); None: the server's own user.
    replica_users: ReplicaUsers | None = None
    # The node cache's bound, bytes (None: unbounded): `openeas server --cache-limit`, else 20 GiB.
    cache_limit_bytes: int | None = field(default_factory=limit_from_env)


class _Stop(Exception):
    """Raised inside the supervisor when the replica was asked to stop."""


class _Failure(Exception):
    """A start attempt failed in a way that a restart (with backoff) may fix."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Unschedulable(Exception):
    """No node can hold the replica now: it stays Pending and asks again later (no backoff streak)."""


class SupervisorBase:
    def __init__(
        self,
        rid: str,
        store: Store,
        runtime: Runtime | Runtimes,
        cache: NodeCache,
        cfg: SupervisorConfig,
    ) -> None:
        self.rid = rid
        self.store = store
        self.runtimes = runtime if isinstance(runtime, Runtimes) else Runtimes(runtime)
        # The runtime of this replica's current process: set at adoption or start.
        self.runtime: Runtime = self.runtimes.process
        self.cache = cache
        self.cfg = cfg
        self.clock = cfg.clock  # durations and waits only; the store stamps phases in wall time
        self.stop_requested = asyncio.Event()
        self.nudge = asyncio.Event()  # a parked standby looks at its row now (promote, stop)
        self.frozen = False  # its process group may be stopped (SIGSTOP): thaw before any stop
        self.parked = False  # a standby waiting for its promotion (its freeze, if any, done)
        self.promoted_at: float | None = None  # when `promote` reached the parked standby (clock.now)
        self.gate = AdmissionGate()  # the node's capacity: the reconciler opens it (controller/capacity.py)
        self.ref: ProcessRef | None = None
        self.streak = 0  # consecutive failed starts/crashes: drives the backoff, reset when stable
        self.grace_s = 30.0  # eas.termination_grace_period of this replica's version, seconds
        self._env: dict[str, str] = {}  # the process's environment (exec probes run with it)
        self.user: ReplicaUser | None = None  # who the process runs as (None: the server's user)
        self._unschedulable_said = False  # the Unschedulable event is written once, not every retry
        self._lived: tuple[ProcessRef, float] | None = None  # the process seen alive, when (clock.now)

    # ---- helpers --------------------------------------------------------------------------------
    def _row(self) -> ReplicaRow:
        row = self.store.get_replica(self.rid)
        if row is None:
            raise _Stop()
        return row

    def _set(self, **fields: Unpack[ReplicaFields]) -> ReplicaRow:
        row = self.store.update_replica(self.rid, **fields)
        if row is None:
            raise _Stop()
        return row

    def _event(self, row: ReplicaRow, reason: str, message: str, warning: bool = False) -> None:
        self.store.record_event(
            row.service, reason, message, type="Warning" if warning else "Normal", replica=self.rid
        )

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up (raising _Stop) as soon as a stop is requested."""
        if await self.clock.sleep(seconds, until=self.stop_requested):
            raise _Stop()

    def _round_trip_s(self) -> float:
        """A runtime whose answers are round trips (Ray: to the replica's actor) says so with
        ``alive_check_s``, how often it may be asked whether a replica lives; 0 for the others,
        whose answers are a read of /proc."""
        return float(getattr(self.runtime, "alive_check_s", 0.0))

    async def _runtime_call(self, fn: Callable[[ProcessRef], bool], ref: ProcessRef) -> bool:
        """``fn(ref)`` of the runtime: a round trip off the loop (a second or more on a loaded
        machine: a takeover adopting 8 Ray replicas on the loop held the new active's API for
        seconds), a read of /proc on it."""
        if self._round_trip_s():
            return await asyncio.to_thread(fn, ref)
        return fn(ref)

    async def _alive(self) -> bool:
        """Whether the replica's process lives. A round-trip runtime is asked at most every
        ``alive_check_s``; between two asks the process is taken to live, so its death is seen
        that much later at most. The others are asked on every call."""
        assert self.ref is not None
        every = self._round_trip_s()
        now = self.clock.now()
        if every and self._lived is not None and self._lived[0] is self.ref and now - self._lived[1] < every:
            return True
        alive = await self._runtime_call(self.runtime.alive, self.ref)
        self._lived = (self.ref, now) if alive else None
        return alive

    def _drop_process(self) -> None:
        if self.ref is not None:
            self.runtime.forget(self.ref)
            self.ref = None

    def _fail(self, reason: str, message: str) -> None:
        """Enter Failed with `message` (and a Warning event `reason`); the restart follows."""
        row = self._set(phase=ReplicaPhase.FAILED, message=message)
        self._event(row, reason, message, warning=True)
