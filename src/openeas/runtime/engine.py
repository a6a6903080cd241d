"""Container engines (podman, docker): finding a working one, and choosing a service's runtime.

The container runtime drives an engine through its command line; podman and docker take the same
commands for everything OpenEAS uses. :func:`detect_engine` runs once at server start and says
plainly what is missing when no engine works (neither installed, docker's client without its
daemon, podman failing its own `info`). ``OPENEAS_CONTAINER_ENGINE`` (``podman``, ``docker`` or
``none``) overrides the search.

Podman reads a ``containers.conf`` of OpenEAS's own (``DATA/run/containers.conf``, passed with
``CONTAINERS_CONF``; never ``/etc`` edited): containers inherit the engine's resource limits
(``default_ulimits = []``: podman's defaults can exceed a sandbox's hard limits, and then every
container fails with ``setrlimit``), and the ``runc`` OCI runtime is used where it is installed
(``crun`` refuses hybrid cgroup hosts). A ``CONTAINERS_CONF`` already set by the operator wins.

"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ENGINE_ENV = "OPENEAS_CONTAINER_ENGINE"
ENGINES = ("podman", "docker")
INSTALL_HINT = "install podman (Debian: apt-get install podman runc) or start docker's daemon"
# `podman info` / `docker info` may take a while on a cold engine; a server start waits this long, seconds.
INFO_TIMEOUT_S = 20.0
LIMITS_UNAPPLIED = "cgroups v1 without root: metadata.cpu/memory cannot be applied as container limits"


@dataclass(frozen=True)
class Engine:
    """A container engine that answered its `info` command."""

    name: str  # "podman" or "docker"
    binary: str  # absolute path of its CLI
    version: str
    env: Mapping[str, str] = field(default_factory=dict)  # added to the CLI's environment
    warnings: tuple[str, ...] = ()  # e.g. resource limits the host's cgroups cannot apply
    limits: bool = True  # False: the host cannot apply cpu/memory limits (they are not passed)
    init: bool = True  # False: no init binary for --init (containers run without one)

    def describe(self) -> str:
        return f"{self.name} {self.version}".strip()


@dataclass(frozen=True)
class EngineStatus:
    engine: Engine | None
    problem: str | None = None  # why no engine is usable (names podman/docker and what is missing)


Run = Callable[..., subprocess.CompletedProcess[str]]


PODMAN_INIT = "/usr/libexec/podman/catatonit"  # where podman looks for its --init binary
NO_INIT = (
    "no init binary for --init (apt-get install catatonit): a server that is the container's PID 1 "
    "ignores SIGTERM, so stopping a replica waits out its grace period"
)


def podman_init(
    which: Callable[[str], str | None] = shutil.which, exists: Callable[[str], bool] = os.path.exists
) -> str | None:
    """The init podman's ``--init`` runs: its own catatonit, else one on the PATH, else None."""
    if exists(PODMAN_INIT):
        return PODMAN_INIT
    return next((found for name in ("catatonit", "tini") if (found := which(name))), None)


def containers_conf(data_dir: Path, which: Callable[[str], str | None] = shutil.which) -> Path:
    """Write OpenEAS's containers.conf for podman (module docstring) and return its path."""
    lines = ["[containers]", "default_ulimits = []"]
    init = podman_init(which)
    if init and init != PODMAN_INIT:
        lines.append(f'init_path = "{init}"')
    if which("runc"):
        lines += ["[engine]", 'runtime = "runc"']
    path = Path(data_dir) / "run" / "containers.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def engine_env(name: str, data_dir: Path, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """What the engine's CLI gets added to its environment."""
    if name == "podman" and not environ.get("CONTAINERS_CONF"):
        return {"CONTAINERS_CONF": str(containers_conf(data_dir))}
    return {}


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def _try(name: str, binary: str, data_dir: Path, run: Run, environ: Mapping[str, str]) -> Engine | str:
    env = engine_env(name, data_dir, environ)
    try:
        res = run(
            [binary, "info", "--format", "{{json .}}"],  # docker 20.10 reads "json" as a template
            capture_output=True,
            text=True,
            timeout=INFO_TIMEOUT_S,
            env={**environ, **env},
        )
    except subprocess.TimeoutExpired:
        return f"`{name} info` did not answer within {INFO_TIMEOUT_S:.0f}s"
    except OSError as exc:
        return f"cannot run {binary}: {exc}"
    if res.returncode != 0:
        why = _first_line(res.stderr or res.stdout)
        if name == "docker":
            return f"docker is installed but its daemon does not answer ({why})"
        return f"`podman info` failed: {why}"
    try:
        info = json.loads(res.stdout)
    except ValueError:
        info = {}
    warnings = _warnings(name, info)
    init = name == "docker" or podman_init() is not None  # docker ships its own (docker-init)
    if not init:
        warnings += (NO_INIT,)
    return Engine(
        name=name,
        binary=binary,
        version=_version(name, info),
        env=env,
        warnings=warnings,
        limits=LIMITS_UNAPPLIED not in warnings,
        init=init,
    )


def _version(name: str, info: Mapping[str, object]) -> str:
    if name == "podman":
        v = info.get("version")
        return str(v.get("Version", "")) if isinstance(v, dict) else ""
    return str(info.get("ServerVersion", ""))


def _warnings(name: str, info: Mapping[str, object]) -> tuple[str, ...]:
    host = info.get("host") if name == "podman" else None
    if isinstance(host, dict) and host.get("cgroupVersion") == "v1" and os.geteuid() != 0:
        return (LIMITS_UNAPPLIED,)
    return ()


def detect_engine(
    data_dir: Path,
    *,
    which: Callable[[str], str | None] = shutil.which,
    run: Run = subprocess.run,
    environ: Mapping[str, str] = os.environ,
) -> EngineStatus:
    """The first engine that answers `info` (podman first), or why there is none."""
    wanted = environ.get(ENGINE_ENV, "").strip().lower()
    if wanted == "none":
        return EngineStatus(None, f"container engines are disabled ({ENGINE_ENV}=none)")
    if wanted and wanted not in ENGINES:
        return EngineStatus(None, f"{ENGINE_ENV}={wanted!r}: expected podman, docker or none")
    problems = []
    for name in (wanted,) if wanted else ENGINES:
        binary = which(name)
        if binary is None:
            problems.append(f"{name} is not installed")
            continue
        found = _try(name, binary, data_dir, run, environ)
        if isinstance(found, Engine):
            return EngineStatus(found)
        problems.append(found)
    return EngineStatus(None, f"no container engine: {'; '.join(problems)}; {INSTALL_HINT}")
