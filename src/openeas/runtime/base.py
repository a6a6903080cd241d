"""The runtime protocol: start, watch and stop replica processes. Serving lives elsewhere."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one replica, already rewritten for this node (ports, mounts)."""

    replica_id: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    log_path: str  # stdout and stderr of the replica go here (appended)
    port: int  # the port this replica listens on (after rewriting)


@dataclass(frozen=True)
class ProcessRef:
    """Identifies a running replica across control-plane restarts.

    ``start_ticks`` is field 22 of /proc/<pid>/stat: a recycled pid has another value, so a
    stored ref never adopts an unrelated process.
    """

    pid: int
    start_ticks: int
    extra: dict[str, str] = field(default_factory=dict)


class Runtime(Protocol):
    name: str

    def start(self, launch: LaunchSpec) -> ProcessRef:
        """Start the replica in its own session (it survives a crash of the control plane)."""
        ...

    def alive(self, ref: ProcessRef) -> bool:
        """True while the process runs; reaps it if it is our child."""
        ...

    def exit_code(self, ref: ProcessRef) -> int | None:
        """The exit status if we saw it exit (children only), else None."""
        ...

    def signal(self, ref: ProcessRef, sig: int) -> None:
        """Send a signal to the replica's whole process group; no error if it is gone."""
        ...

    def forget(self, ref: ProcessRef) -> None:
        """Drop what the runtime keeps about a replica process that is gone for good."""
        ...
