"""The runtime protocol: everything that touches replica processes, and nothing else.

A :class:`Runtime` starts a replica, tells whether it still runs and how it ended, signals it,
adopts a process recorded by an earlier control plane, and scans the host for replica
processes (the orphan scan). The controllers (reconciler, supervisors) only ever go through it:
they never read /proc or send signals themselves. What a replica serves is not the runtime's
business. :func:`orphans` is the pure decision of which scanned processes no replica row
accounts for; the runtime only finds and kills them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    from openeas.runtime.container_args import ContainerLaunch


@dataclass(frozen=True)
class Demand:
    """What one replica asks of the node it runs on (the spec's metadata); a placing runtime
    (openeas.runtime.ray_runtime) turns it into the cluster's resource request."""

    cpu: float | None = None  # cores (metadata.cpu)
    memory_mb: int | None = None  # MB (metadata.memory)
    gpu: int | None = None  # whole GPUs (metadata.gpu)
    instance_type: str | None = None  # cloud.computing.instance_type: a custom resource of that name


LOOPBACK = "127.0.0.1"
REPLICA_ADDRESS_MODES = ("loopback", "node")  # the first is the default


def replica_address(mode: str, node_ip: str | None) -> str:
    """The address a replica listens on and is reached at (pure).

    ``mode``: ``loopback`` (127.0.0.1: reached only from its own machine; the embedded runtimes
    always) or ``node`` (``node_ip``, the address the Ray cluster reports for the node the replica
    landed on: reached by gateways on other machines). ``node_ip`` empty or None with ``node`` is
    an error: the replica would be recorded where no one can reach it."""
    if mode == "loopback":
        return LOOPBACK
    if mode != "node":
        raise ValueError(f"replica address: expected one of {', '.join(REPLICA_ADDRESS_MODES)}, got {mode!r}")
    if not node_ip:
        raise ValueError("replica address 'node': Ray reported no address for the replica's node")
    return node_ip


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one replica, already rewritten for this node (ports, mounts)."""

    replica_id: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    log_path: str  # stdout and stderr of the replica go here (appended)
    port: int  # the port this replica listens on (after rewriting); a container's published host port
    container: ContainerLaunch | None = None  # set for the container runtime (argv/env/cwd then unused)
    memory_limit_mb: int | None = None  # the spec's metadata.memory: the process's limit (runtime/limits.py)
    # (uid, gid) the process runtime switches to (no supplementary groups); None: the server's own
    user: tuple[int, int] | None = None
    demand: Demand = field(default_factory=Demand)  # resources to place it with (the Ray runtime)


@dataclass(frozen=True)
class ProcessRef:
    """Identifies a running replica across control-plane restarts.

    ``start_ticks`` tells two processes with the same pid apart: for the process runtime it is
    field 22 of /proc/<pid>/stat (clock ticks after boot), so a stored ref never adopts or
    signals an unrelated process that got a recycled pid.
    """

    pid: int
    start_ticks: int
    extra: dict[str, str] = field(default_factory=dict)


class Unschedulable(Exception):
    """No node of the cluster can ever hold the replica (a placing runtime's answer to ``start``):
    the replica stays Pending with this message, which names the resource that is short."""


class ReplicaProcess(NamedTuple):
    """A live process that a runtime's scan found started as a replica for one data dir."""

    pid: int
    replica_id: str  # its OPENEAS_REPLICA_ID
    pgid: int  # its process group: the pid a replica row records, since replicas lead their group
    handle: str = ""  # the runtime's own id for it (a container id), when the pid is not enough


def kill_orphans(runtime: Runtime, data_dir: Path, known: Mapping[str, int | None]) -> list[int]:
    """Scan ``data_dir``'s replica processes with ``runtime``, SIGKILL the :func:`orphans` among
    them (``known``: replica id → recorded pid), and return the pids killed."""
    return [p.pid for p in orphans(runtime.replica_processes(data_dir), known) if runtime.kill(p)]


def orphans(found: Iterable[ReplicaProcess], known: Mapping[str, int | None]) -> list[ReplicaProcess]:
    """The scanned processes that no replica row accounts for (pure).

    ``known`` maps each replica id in the store to the pid it recorded. A process is an orphan
    when its replica id is unknown, when its row recorded no pid (a control plane died between
    the start and the write), or when it is outside the recorded process group (a second process
    for the same replica).
    """
    return [p for p in found if known.get(p.replica_id) != p.pgid]


class Runtime(Protocol):
    name: str

    def start(self, launch: LaunchSpec) -> ProcessRef:
        """Start the replica in its own session (it survives a crash of the control plane).

        Raises OSError (or ValueError) when it cannot be started at all.
        """
        ...

    def adopt(self, ref: ProcessRef) -> bool:
        """Take over a process an earlier control plane recorded as ``ref``.

        True when that very process still runs (pid *and* start match); from then on it is
        watched and signalled like one this runtime started. False when it is gone.
        """
        ...

    def alive(self, ref: ProcessRef) -> bool:
        """True while the replica's leader process runs; reaps it if it is our child."""
        ...

    def group_alive(self, ref: ProcessRef) -> bool:
        """True while the leader or any other process of the replica's group still runs."""
        ...

    def exit_code(self, ref: ProcessRef) -> int | None:
        """The exit status (negative: killed by that signal) if we saw it exit, else None."""
        ...

    def signal(self, ref: ProcessRef, sig: int) -> None:
        """Send a signal to the replica's whole process group; no error if it is gone."""
        ...

    def forget(self, ref: ProcessRef) -> None:
        """Drop what the runtime keeps about a replica process that is gone for good."""
        ...

    def replica_processes(self, data_dir: Path) -> list[ReplicaProcess]:
        """Every live process started as a replica for ``data_dir``, by any control plane."""
        ...

    def kill(self, proc: ReplicaProcess) -> bool:
        """SIGKILL one scanned process (not its group); False when it was already gone."""
        ...


class NodePorts(NamedTuple):
    """Where a placed replica will be reached: the address and the ports free on its node."""

    host: str  # the address the replica listens on and is reached at (runtime/base.replica_address)
    ports: list[int]  # free on the replica's node when asked: the main port first, then sidecars'


@runtime_checkable
class PlacingRuntime(Protocol):
    """A runtime whose replicas run on nodes other than the server's (the Ray runtime): it places
    the replica first and the replica's ports are chosen free *on that node*, not on the server's
    machine; the supervisor stores them and builds the launch with them, then calls ``start``."""

    def place(
        self,
        replica_id: str,
        demand: Demand,
        count: int,
        avoid: set[int],
        siblings: Mapping[str, int] | None = None,
    ) -> NodePorts:
        """Place replica ``replica_id`` (Unschedulable when it fits on no node) and return
        ``count`` ports free on its node, none of them in ``avoid`` (ports other replicas
        recorded). ``siblings``: the nodes the service's other replicas run on (node id → how
        many), so that one node's loss takes as few of them as it can. The next ``start`` of that
        replica runs on that node."""
        ...


def port_clash(chosen: NodePorts, taken: Iterable[tuple[str, int]]) -> int | None:
    """The first of ``chosen``'s ports that another replica already holds at the same address
    (pure), or None. ``taken``: (host, port) of the other replicas. Two nodes of one machine
    (the local cluster) share an address and so their ports; nodes of different addresses do not."""
    held = set(taken)
    return next((p for p in chosen.ports if (chosen.host, p) in held), None)


class PullError(Exception):
    """The image could not be pulled; the message is the engine's reason."""


@dataclass(frozen=True)
class PullResult:
    pulled: bool  # False: the image was already on this node
    seconds: float


@runtime_checkable
class ImageRuntime(Protocol):
    """A runtime that runs images: the supervisor pulls the image (phase Pulling) before a start."""

    def has_image(self, image: str) -> bool:
        """True when the image is on this node already (no pull, no Pulling phase)."""
        ...

    async def pull(
        self,
        image: str,
        *,
        docker_auth: tuple[str, str] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> PullResult:
        """Pull ``image`` onto this node; PullError with the engine's reason."""
        ...
