"""The domain's states, in one place: replica phases and their legal transitions, a service's
desired state and its shown status, and the three facts everyone must agree on.

Everyone imports these: the store (typed updates check transitions), the supervisor and
reconciler (who move replicas), the API and CLI (who show them), the metrics (who count them)
and the gateway's routing source (who routes to them). No dependency beyond the standard
library, so the gateway process can import it too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Protocol, TypeVar


class ReplicaPhase(StrEnum):
    """Where one replica is in its life. Each phase change is timestamped on the replica."""

    PENDING = "Pending"  # waiting to start (first start, or a restart after its backoff)
    PULLING = "Pulling"  # the container runtime pulls the image (skipped when it is on the node)
    FETCHING = "Fetching"  # mounts are prepared (object storage → node cache)
    PREPARING = "Preparing"  # prepare.pythonRequirements are installed (once per node)
    STARTING = "Starting"  # the process runs; readiness probes have not passed yet
    WARMING = "Warming"  # probes passed; warmup requests run before it takes traffic
    READY = "Ready"  # in the routing table
    # Started and warmed but out of the routing table (metadata.standby): a scale-out promotes it
    # (a readiness probe, then Ready) instead of starting a replica cold. Frozen or hot.
    STANDBY = "Standby"
    UNREADY = "Unready"  # its readiness_check fails: out of the routing table, not restarted
    DRAINING = "Draining"  # left the routing table; in-flight requests finish before SIGTERM
    FAILED = "Failed"  # crashed, unhealthy, timed out or failed to start: waits out its backoff
    STOPPED = "Stopped"  # its process is gone; the row is deleted right after


P = ReplicaPhase

# Allowed phase changes: from → to. A supervisor or reconciler asking for anything else is a
# bug, and the store raises IllegalTransition for it.
#  - any phase can fail (→ Failed) or be stopped for good (→ Stopped), except a stopped one;
#  - a control-plane restart resets a replica whose process is gone, or a server stop that
#    takes its replicas down, to Pending (a new start), from any live phase;
#  - a replica adopted after a control-plane restart while not Ready is probed again (→ Starting);
#  - a standby is parked after its warmup (Warming → Standby) and promoted straight into routing
#    (Standby → Ready); it is never routed, so it stops without a drain (Standby → Stopped).
_LIVE = frozenset(p for p in P if p is not P.STOPPED)
TRANSITIONS: Mapping[ReplicaPhase, frozenset[ReplicaPhase]] = {
    P.PENDING: frozenset({P.PULLING, P.FETCHING, P.STARTING, P.FAILED, P.STOPPED}),
    P.PULLING: frozenset({P.FETCHING, P.FAILED, P.PENDING, P.STOPPED}),
    P.FETCHING: frozenset({P.PREPARING, P.STARTING, P.FAILED, P.PENDING, P.STOPPED}),
    P.PREPARING: frozenset({P.STARTING, P.FAILED, P.PENDING, P.STOPPED}),
    P.STARTING: frozenset({P.WARMING, P.FAILED, P.PENDING, P.STOPPED}),
    P.WARMING: frozenset({P.READY, P.STANDBY, P.FAILED, P.PENDING, P.STARTING, P.STOPPED}),
    P.STANDBY: frozenset({P.READY, P.STARTING, P.FAILED, P.PENDING, P.STOPPED}),
    P.READY: frozenset({P.UNREADY, P.DRAINING, P.FAILED, P.PENDING, P.STOPPED}),
    P.UNREADY: frozenset({P.READY, P.DRAINING, P.FAILED, P.PENDING, P.STOPPED}),
    P.DRAINING: frozenset({P.STOPPED, P.FAILED, P.PENDING, P.STARTING}),
    P.FAILED: frozenset({P.PENDING, P.STARTING, P.STOPPED}),
    P.STOPPED: frozenset(),
}
assert set(TRANSITIONS) == set(P) and all(to <= _LIVE | {P.STOPPED} for to in TRANSITIONS.values())


class IllegalTransition(RuntimeError):
    """A phase change the table above does not allow: a bug in whoever asked for it."""


def check_transition(old: str, new: str) -> ReplicaPhase:
    """``new`` as a ReplicaPhase; raises IllegalTransition when ``old → new`` is not allowed."""
    try:
        to = ReplicaPhase(new)
        frm = ReplicaPhase(old)
    except ValueError as exc:
        raise IllegalTransition(f"unknown replica phase: {exc}") from None
    if to is not frm and to not in TRANSITIONS[frm]:
        raise IllegalTransition(f"replica phase {frm} → {to} is not allowed")
    return to


class ServiceState(StrEnum):
    """A service's *desired* state, as the operator set it."""

    RUNNING = "Running"
    STOPPED = "Stopped"
    DELETING = "Deleting"


class ServiceStatus(StrEnum):
    """A service's *shown* status, derived from its desired state and its replicas."""

    RUNNING = "Running"  # desired replicas are Ready on the current version
    PENDING = "Pending"  # replicas are on their way up, nothing has failed
    UPDATING = "Updating"  # replicas of an older version remain (a rollout is under way)
    DEGRADED = "Degraded"  # some replicas Ready, others failing
    FAILED = "Failed"  # replicas are failing and none is Ready
    STOPPED = "Stopped"  # stopped by the operator (its replicas may still be going away)
    DELETING = "Deleting"


class ReplicaFacts(Protocol):
    """What the derived facts read of a replica (a store row has these attributes)."""

    @property
    def phase(self) -> str: ...
    @property
    def stopping(self) -> int: ...  # 0/1 or a bool
    @property
    def version(self) -> int: ...
    @property
    def restart_count(self) -> int: ...


def desired_replicas(state: str, desired: int) -> int:
    """How many replicas should run: none while the service is stopped or being deleted."""
    return desired if state == ServiceState.RUNNING else 0


def routable(phase: str, stopping: bool | int, port: int | None) -> bool:
    """Whether the gateway may send traffic to a replica: Ready, not being stopped, with a port.

    The gateway's routing source selects exactly these (its SQL is ROUTABLE_SQL, kept in step).
    """
    return phase == ReplicaPhase.READY and not stopping and port is not None


# The same predicate as `routable`, for a query over the replicas table.
ROUTABLE_SQL = "phase='Ready' AND stopping=0 AND port IS NOT NULL"


def service_status(
    state: str, current_version: int, desired: int, replicas: Iterable[ReplicaFacts]
) -> ServiceStatus:
    """The status shown for a service (``ls``, ``describe``, the API)."""
    reps = list(replicas)
    live = [r for r in reps if not r.stopping]
    if state == ServiceState.DELETING:
        return ServiceStatus.DELETING
    if state == ServiceState.STOPPED:
        return ServiceStatus.STOPPED
    ready = sum(r.phase == ReplicaPhase.READY for r in live)
    if any(r.version != current_version for r in reps):
        return ServiceStatus.UPDATING
    if ready >= desired_replicas(state, desired):
        return ServiceStatus.RUNNING
    failing = any(
        r.phase in (ReplicaPhase.FAILED, ReplicaPhase.UNREADY)
        or (r.restart_count > 0 and r.phase != ReplicaPhase.READY)
        for r in live
    )
    if failing:
        return ServiceStatus.DEGRADED if ready else ServiceStatus.FAILED
    return ServiceStatus.PENDING


class BatchState(StrEnum):
    """Where a batch job is (docs/batch.md). Running: shards are being served (also right after
    submit and after a restart)."""

    RUNNING = "Running"
    SUCCEEDED = "Succeeded"  # every line has an output or an error line; the files are written
    FAILED = "Failed"  # the job could not go on (service deleted, output not writable); resumable
    CANCELLED = "Cancelled"  # by its owner; resumable


B = BatchState
BATCH_FINAL = frozenset({B.SUCCEEDED, B.FAILED, B.CANCELLED})
# Allowed batch job state changes: from → to (the store checks each write). A failed or cancelled
# job resumes (→ Running); a cancelled one can still fail (its runner's last shard errs as the
# owner cancels); a succeeded job is done. Writing the state a job already has is allowed
# (a new message).
BATCH_TRANSITIONS: Mapping[BatchState, frozenset[BatchState]] = {
    B.RUNNING: frozenset({B.SUCCEEDED, B.FAILED, B.CANCELLED}),
    B.FAILED: frozenset({B.RUNNING}),
    B.CANCELLED: frozenset({B.RUNNING, B.FAILED}),
    B.SUCCEEDED: frozenset(),
}


E = TypeVar("E", bound=StrEnum)


def check_table(kind: type[E], table: Mapping[E, frozenset[E]], what: str, old: str, new: str) -> E:
    """``new`` as a ``kind``; raises IllegalTransition when ``table`` does not allow ``old → new``
    (the same state again is always allowed). ``what`` names the entity's state in the message."""
    try:
        to, frm = kind(new), kind(old)
    except ValueError as exc:
        raise IllegalTransition(f"unknown {what}: {exc}") from None
    if to is not frm and to not in table[frm]:
        raise IllegalTransition(f"{what} {frm} → {to} is not allowed")
    return to


def check_batch_transition(old: str, new: str) -> BatchState:
    """``new`` as a BatchState; raises IllegalTransition when ``old → new`` is not allowed."""
    return check_table(BatchState, BATCH_TRANSITIONS, "batch job state", old, new)


class StressState(StrEnum):
    """Where a stress run is (docs/stress.md). A run in the server is stored ``running`` when it
    starts; a run in the CLI is stored once, finished."""

    RUNNING = "running"
    COMPLETED = "completed"  # its plan ran to the end (or found saturation and stopped there)
    INTERRUPTED = "interrupted"  # stopped early: by its owner, or cut by a restart of the server
    FAILED = "failed"  # the run itself erred


S = StressState
STRESS_FINAL = frozenset({S.COMPLETED, S.INTERRUPTED, S.FAILED})
# Allowed stress run state changes: from → to (the store checks each write). A finished run's
# report is final; storing the same state again is allowed (an upload retried).
STRESS_TRANSITIONS: Mapping[StressState, frozenset[StressState]] = {
    S.RUNNING: STRESS_FINAL,
    S.COMPLETED: frozenset(),
    S.INTERRUPTED: frozenset(),
    S.FAILED: frozenset(),
}


def check_stress_transition(old: str, new: str) -> StressState:
    """``new`` as a StressState; raises IllegalTransition when ``old → new`` is not allowed."""
    return check_table(StressState, STRESS_TRANSITIONS, "stress run state", old, new)
