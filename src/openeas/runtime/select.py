"""Which runtime runs a service's replicas, and the set of runtimes a control plane has.

:func:`choose_runtime` is the pure decision (the spec's ``metadata.replica_runtime``, its image,
the engine found at server start), with the reason that ``describe`` and ``deploy --dry-run``
show. :class:`Runtimes` holds the process runtime and, where an engine works, the container
runtime; supervisors get a replica's runtime from it by the name its row records.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from openeas.runtime.base import REPLICA_ADDRESS_MODES, Runtime
from openeas.runtime.container import ContainerRuntime
from openeas.runtime.engine import LIMITS_UNAPPLIED, Engine, detect_engine
from openeas.runtime.process import ProcessRuntime
from openeas.spec.models import ServiceSpec


@dataclass(frozen=True)
class RuntimeChoice:
    name: str | None  # "process" or "container"; None: the spec cannot run here (reason says why)
    reason: str
    warnings: tuple[str, ...] = ()


# A server told to listen on loopback only: inside a container, the published port cannot reach it.
_LOOPBACK_BIND_RE = re.compile(
    r"(?:--host|--bind|--listen|--address|--server\.address)[= ]+[\"']?(?:127\.0\.0\.1|localhost)(?![\w.])"
    r"|(?<![\w.])(?:127\.0\.0\.1|localhost):(?P<port>\d+)"
)


def choose_runtime(
    requested: str,
    image: str | None,
    engine: str | None,
    engine_problem: str | None,
    texts: Sequence[str] = (),
) -> RuntimeChoice:
    """Which runtime runs a service (pure).

    ``requested``: the spec's ``metadata.replica_runtime`` (auto, process, container); ``image``:
    its main container's image; ``engine``: the working engine ("podman 4.3.1") or None, with
    ``engine_problem`` saying why; ``texts``: the command/script, checked for a loopback-only bind.
    """
    if requested == "process":
        return RuntimeChoice("process", "metadata.replica_runtime is 'process': the command runs on the host")
    if requested == "container":
        if engine is None:
            return RuntimeChoice(None, f"metadata.replica_runtime is 'container' but {engine_problem}")
        return RuntimeChoice(
            "container", f"metadata.replica_runtime is 'container' ({engine})", _loopback_warnings(texts)
        )
    if image is None:
        return RuntimeChoice("process", "no image in the spec: the command runs on the host")
    if engine is None:
        return RuntimeChoice("process", f"image set, but {engine_problem}: the command runs on the host")
    return RuntimeChoice("container", f"image set and {engine} present", _loopback_warnings(texts))


def _loopback_warnings(texts: Sequence[str]) -> tuple[str, ...]:
    for text in texts:
        if _LOOPBACK_BIND_RE.search(text or ""):
            return (
                "the command listens on 127.0.0.1/localhost only: inside a container the published "
                "port cannot reach it; listen on 0.0.0.0",
            )
    return ()


class Runtimes:
    """The runtimes of one control plane: ``process`` (or a fake in tests) and maybe ``container``."""

    def __init__(
        self,
        process: Runtime,
        container: Runtime | None = None,
        *,
        engine: str | None = None,
        engine_problem: str | None = None,
        warnings: tuple[str, ...] = (),
    ) -> None:
        self.process = process
        self.container = container
        self.engine = engine  # "podman 4.3.1" when ``container`` is set
        self.engine_problem = engine_problem or ("no container engine" if container is None else None)
        self.warnings = warnings  # about the engine (e.g. limits the host cannot apply)
        # About process replicas (they run as the server's user: openeas.runtime.identity).
        self.process_warning: str | None = None
        # The engine itself (its CLI and environment): what `openeas bake` builds images with.
        self.container_engine: Engine | None = None

    def summary(self) -> str:
        """One line for the server's start and `/healthz`: which engine, or why none."""
        if self.container is None:
            return f"container runtime off: {self.engine_problem}"
        extra = "; ".join(self.warnings)
        return f"container runtime: {self.engine}" + (f" ({extra})" if extra else "")

    def choose(self, spec: ServiceSpec) -> RuntimeChoice:
        c = spec.main
        choice = choose_runtime(
            spec.replica_runtime,
            c.image,
            self.engine if self.container is not None else None,
            self.engine_problem,
            [t for t in (c.command, c.script) if t],
        )
        if choice.name == "process" and self.process_warning:
            return replace(choice, warnings=(*choice.warnings, self.process_warning))
        md = spec.metadata
        if choice.name == "container" and (md.cpu or md.memory) and LIMITS_UNAPPLIED in self.warnings:
            # Said where the user looks (describe, --dry-run), not only in the server's log.
            note = f"metadata.cpu/memory are not enforced on this node: {LIMITS_UNAPPLIED}"
            return replace(choice, warnings=(*choice.warnings, note))
        return choice

    def get(self, name: str) -> Runtime:
        """The runtime a replica row names; rows of older releases (and fakes) mean ``process``."""
        if name == "container":
            if self.container is None:
                raise LookupError(f"this server has no container runtime: {self.engine_problem}")
            return self.container
        return self.process

    def all(self) -> list[Runtime]:
        return [self.process] + ([self.container] if self.container is not None else [])


ENV_RAY_ADDRESS = "OPENEAS_RAY_ADDRESS"  # set by `openeas server --runtime ray --ray-address A`
ENV_REPLICA_ADDRESS = "OPENEAS_REPLICA_ADDRESS"  # set by `openeas server --replica-address MODE`


def build_runtimes(
    data_dir: Path, *, registry_auth: Path | None = None, shared_store: str | None = None
) -> Runtimes:
    """The process runtime, plus the container runtime when an engine works (checked now, once);
    with ``OPENEAS_RAY_ADDRESS`` set, the Ray runtime instead (replicas placed by that cluster).

    ``shared_store``: the URL of a store several servers share (PostgreSQL): the Ray namespace
    of the replicas' actors is that store's, so that a standby adopts them by name."""
    ray_address = os.environ.get(ENV_RAY_ADDRESS)
    if ray_address:
        from openeas.runtime.ray_runtime import RayRuntime  # Ray is an optional dependency

        mode = os.environ.get(ENV_REPLICA_ADDRESS) or REPLICA_ADDRESS_MODES[0]
        ray_runtime = RayRuntime(ray_address, data_dir, scope=shared_store, replica_address=mode)
        return Runtimes(
            ray_runtime, engine_problem=f"the Ray runtime ({ray_address}) runs commands, not images"
        )
    status = detect_engine(data_dir)
    if status.engine is None:
        return Runtimes(ProcessRuntime(), engine_problem=status.problem)
    container = ContainerRuntime(status.engine, data_dir, registry_auth=registry_auth)
    runtimes = Runtimes(
        ProcessRuntime(), container, engine=status.engine.describe(), warnings=status.engine.warnings
    )
    runtimes.container_engine = status.engine
    return runtimes
