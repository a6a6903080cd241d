"""From a spec to the engine's `run` command for one replica: faithful to the spec, no rewriting.

What the spec says is what the container gets (unlike the process runtime, nothing in the
command is rewritten):

- **Port.** The container keeps its own port (``containers[].port``, 8000 stays 8000 inside);
  each replica is published on its own free host port on 127.0.0.1 (``-p 127.0.0.1:H:8000``).
- **Mounts** are bind mounts at ``mount_path`` exactly: ``oss`` is the node-cache entry,
  read-only unless ``readOnly: false``, which gives an overlay (writes stay in the replica and
  never reach the shared cache: podman's ``:O`` bind option; docker has none, so there it is an
  overlay volume with the upper layer in the replica's directory); ``nfs`` is the folder the
  export is mounted on (an operator's ``--nfs-export`` or an allowed host folder:
  storage/hostpaths.py), read-only with ``readOnly: true``; ``empty_dir`` is a per-replica
  directory, or a tmpfs of ``size_limit`` with ``medium: memory``.
- **Command.** ``command`` runs as ``/bin/sh -c "exec <command>"`` inside the image (``exec`` only
  for a simple command), ``script`` as ``/bin/sh -c "<script>"``; the image's entrypoint is
  replaced by the shell. An init runs as PID 1 (``--init``: podman's catatonit, docker's tini):
  the kernel ignores a signal to a namespace's PID 1 that installed no handler for it, so a
  server that is PID 1 itself never ends on SIGTERM and every stop waits out the grace period;
  the init forwards SIGTERM to the server and ends with it.
- **Env** is the spec's env (values go through the engine CLI's own environment, ``-e NAME``,
  so they never appear in a process list), plus ``PORT`` = the container port unless the spec sets it.
- **Resources:** ``metadata.cpu`` → ``--cpus``, ``metadata.memory`` (MB) → ``--memory``,
  ``metadata.gpu`` = N → exactly N GPUs, the ones this node's other replicas do not hold
  (podman: one CDI ``--device nvidia.com/gpu=<index>`` each; docker: ``--gpus device=<i>,<j>``);
  see :mod:`openeas.runtime.gpus`.
- **Identity:** the container is named ``openeas-<replica id>`` and labelled with the replica id,
  the service and the data dir: adoption and the orphan scan go by label, never by name.
- **Several containers** run as one replica, as in an EAS instance: the others
  (``openeas-<replica id>-<n>``) join the main container's network namespace, so they reach each
  other on localhost at the ports the spec names; only the main container's port is published
  (it receives the service's traffic); every container gets the spec's mounts.

The weights stay in the mount and the server in the image: the two layers are kept apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from openeas.runtime.shellwords import is_simple_command
from openeas.spec.models import ServiceSpec

LABEL_REPLICA = "io.openeas.replica"
LABEL_SERVICE = "io.openeas.service"
LABEL_DATA_DIR = "io.openeas.data-dir"
LABEL_SIDECAR = "io.openeas.sidecar"  # on the other containers of a replica: their index
LABEL_GPUS = "io.openeas.gpus"  # the GPU indices a replica holds ("0,1")
NAME_PREFIX = "openeas-"
CONTAINER_SHELL = "/bin/sh"


@dataclass(frozen=True)
class Volume:
    source: str  # a directory on the host
    target: str  # mount_path, exactly as the spec writes it
    mode: str  # "ro", "rw", or "O" (an overlay: writable in the container, the source untouched)
    # For "O" under docker: the replica's folder that holds the overlay's upper and work layers.
    overlay_dir: str | None = None


@dataclass(frozen=True)
class Tmpfs:
    target: str
    size_bytes: int | None


@dataclass(frozen=True)
class ContainerLaunch:
    """Everything the container runtime needs beyond a process launch (see the module docstring)."""

    name: str
    image: str
    container_port: int
    host_ip: str
    host_port: int
    argv: list[str]  # the shell and its arguments, run inside the image
    env: dict[str, str]
    labels: dict[str, str]
    volumes: list[Volume] = field(default_factory=list)
    tmpfs: list[Tmpfs] = field(default_factory=list)
    cpus: float | None = None
    memory_mb: int | None = None
    gpus: int | None = None  # how many GPUs metadata.gpu asks for
    gpu_ids: tuple[int, ...] = ()  # which ones (set by the runtime at start: openeas.runtime.gpus)
    pidfile: str | None = None  # podman writes the main process's host pid here (no inspect call)
    # The spec's other containers, in the main container's network namespace (as in an EAS
    # instance, they reach each other on localhost at the ports the spec names).
    sidecars: list[Sidecar] = field(default_factory=list)


@dataclass(frozen=True)
class Sidecar:
    name: str
    image: str  # the container's own image, else the main one's
    argv: list[str]
    env: dict[str, str]


def container_name(replica_id: str) -> str:
    return NAME_PREFIX + replica_id


def container_argv(command: str | None, script: str | None) -> list[str]:
    if command:
        text = command.strip()
        return [CONTAINER_SHELL, "-c", "exec " + text if is_simple_command(text) else text]
    if script:
        return [CONTAINER_SHELL, "-c", script]
    raise ValueError("one of 'command' or 'script' is required")


def build_container_launch(
    spec: ServiceSpec,
    *,
    replica_id: str,
    data_dir: str,
    host_port: int,
    mounts: Mapping[str, str],
    workdir: str,
    host_ip: str = "127.0.0.1",
) -> ContainerLaunch:
    """The container of one replica of ``spec``. ``mounts``: mount_path (without a trailing '/')
    → host directory, from :func:`openeas.storage.prepare_mounts`; ``workdir``: the replica's
    directory on the host."""
    c = spec.main
    if not c.image:
        raise ValueError("containers[0].image: required by the container runtime")
    volumes: list[Volume] = []
    tmpfs: list[Tmpfs] = []
    shadowed = spec.shadowed_mounts()  # a later entry at the same mount_path is mounted instead
    for i, m in enumerate(spec.storage):
        if i in shadowed:
            continue
        target = m.mount_path.rstrip("/")  # "/mnt/data/" and "/mnt/data" are the same directory
        if m.empty_dir is not None and m.empty_dir.in_memory:
            tmpfs.append(Tmpfs(target, m.empty_dir.size_bytes()))
            continue
        source = mounts[target]
        # oss: shared node-cache content, read-only or an overlay; git and cache: read-only;
        # nfs: as its readOnly says (EAS: writable unless readOnly: true); empty_dir: writable.
        if m.oss is not None:
            mode = "ro" if m.oss.readOnly else "O"
        elif m.nfs is not None:
            mode = "ro" if m.nfs.get("readOnly") is True else "rw"
        else:
            mode = "ro" if (m.git is not None or m.cache is not None) else "rw"
        for what, path in (("source", source), ("mount_path", target)):
            if ":" in path or "," in path:  # a stored spec from before the rule, or a host folder
                raise ValueError(f"storage: the {what} {path!r} holds ':' or ',' (engine volume syntax)")
        overlay = f"{workdir}/overlay/{len(volumes)}" if mode == "O" else None
        volumes.append(Volume(source, target, mode, overlay))
    env = c.env_dict()
    env.setdefault("PORT", str(c.port))
    sidecars = []
    for i, side in enumerate(spec.containers[1:], start=1):
        side_env = side.env_dict()
        if "port" in side.model_fields_set:
            side_env.setdefault("PORT", str(side.port))
        sidecars.append(
            Sidecar(
                name=f"{container_name(replica_id)}-{i}",
                image=side.image or c.image,
                argv=container_argv(side.command, side.script),
                env=side_env,
            )
        )
    md = spec.metadata
    return ContainerLaunch(
        name=container_name(replica_id),
        image=c.image,
        container_port=c.port,
        host_ip=host_ip,
        host_port=host_port,
        argv=container_argv(c.command, c.script),
        env=env,
        labels={LABEL_REPLICA: replica_id, LABEL_SERVICE: spec.name, LABEL_DATA_DIR: data_dir},
        volumes=volumes,
        tmpfs=tmpfs,
        cpus=float(md.cpu) if md.cpu else None,
        memory_mb=md.memory,
        gpus=md.gpu or None,
        pidfile=f"{workdir}/container.pid",
        sidecars=sidecars,
    )


def run_args(
    launch: ContainerLaunch, *, engine: str = "podman", limits: bool = True, init: bool = True
) -> list[str]:
    """The arguments after the engine binary: ``run --detach ... IMAGE ARGV`` (pure).

    ``engine``: podman hands the container the CLI's stdout/stderr (``passthrough``: its output
    goes straight into the replica's log); docker keeps its own log, which the runtime follows
    into the replica's log (``docker logs --follow``).
    ``limits``: pass cpu/memory limits (False where the host's cgroups cannot apply them). The
    image is never pulled here (``--pull never``): the runtime pulls it first, in Pulling.
    """
    extra = ["--pidfile", launch.pidfile] if engine == "podman" and launch.pidfile else []
    extra += ["--publish", f"{launch.host_ip}:{launch.host_port}:{launch.container_port}"]
    if limits and launch.cpus:
        extra += ["--cpus", f"{launch.cpus:g}"]
    if limits and launch.memory_mb:
        extra += ["--memory", f"{launch.memory_mb}m"]
    extra += gpu_args(launch.gpu_ids, engine)
    return _run(launch, launch.name, launch.image, launch.argv, launch.env, extra, engine, init)


def gpu_args(ids: tuple[int, ...], engine: str) -> list[str]:
    """Exactly the GPUs ``ids``, never all of them (pure)."""
    if not ids:
        return []
    if engine == "docker":
        return ["--gpus", "device=" + ",".join(str(i) for i in ids)]
    return [arg for i in ids for arg in ("--device", f"nvidia.com/gpu={i}")]


def volume_args(vol: Volume, engine: str) -> list[str]:
    """One bind mount (pure). Docker has no overlay bind option (podman's ``:O``): a writable
    oss mount is an overlay volume there, its upper layer in the replica's own folder."""
    if vol.mode == "O" and engine == "docker":
        layers = vol.overlay_dir or ""
        opts = f"lowerdir={vol.source},upperdir={layers}/upper,workdir={layers}/work"
        return ["--mount", f'type=volume,dst={vol.target},volume-opt=type=overlay,'
                f'volume-opt=device=overlay,"volume-opt=o={opts}"']  # fmt: skip
    return ["--volume", f"{vol.source}:{vol.target}:{vol.mode}"]


def sidecar_run_args(
    launch: ContainerLaunch, side: Sidecar, *, engine: str = "podman", init: bool = True
) -> list[str]:
    """``run`` arguments of one other container: same labels and mounts as the main one, in its
    network namespace (``--network container:<main>``: localhost is shared, nothing published)."""
    index = side.name.rsplit("-", 1)[1]
    extra = ["--label", f"{LABEL_SIDECAR}={index}", "--network", f"container:{launch.name}"]
    return _run(launch, side.name, side.image, side.argv, side.env, extra, engine, init)


def _run(
    launch: ContainerLaunch,
    name: str,
    image: str,
    argv: list[str],
    env: dict[str, str],
    extra: list[str],
    engine: str,
    init: bool = True,
) -> list[str]:
    """What every container of a replica gets: its name, the log, labels, mounts, env names."""
    # --init: an init as PID 1 forwards SIGTERM to the server (module docstring).
    args = ["run", "--detach", *(["--init"] if init else []), "--pull", "never", "--name", name]
    if engine == "podman":
        args += ["--log-driver", "passthrough"]
    for k, v in sorted(launch.labels.items()):
        args += ["--label", f"{k}={v}"]
    args += extra
    for vol in launch.volumes:
        args += volume_args(vol, engine)
    for t in launch.tmpfs:
        size = f",size={t.size_bytes}" if t.size_bytes else ""
        args += ["--tmpfs", f"{t.target}:rw{size}"]
    for var in sorted(env):
        args += ["--env", var]  # the value comes from the CLI's environment (not the process list)
    return [*args, "--entrypoint", argv[0], image, *argv[1:]]
