"""The container runtime: each replica is a container of the spec's image, run by podman or docker.

It implements the same :class:`~openeas.runtime.base.Runtime` protocol as the process runtime,
so the supervisor treats both alike (start, probe, drain, SIGTERM → grace → SIGKILL, restart
with backoff, adoption after a control-plane restart). How:

- **Start** runs ``<engine> run --detach`` (arguments: :mod:`openeas.runtime.container_args`)
  with the replica's log file as its stdout and stderr: podman passes them to the container
  (``--log-driver passthrough``), so the server's output lands in the replica's log, and so does
  the engine's own error when the container cannot be created (an unknown image, a mount path
  the image cannot take): the start fails with that message. Then ``inspect`` gives the host pid
  of the container's main process.
- **Watching and signals** go to that host pid, checked together with its start time like any
  process (a recycled pid is never signalled): cheap enough for the supervisor's 0.1 s liveness
  check, no engine call. When the main process ends, the kernel ends the whole container.
- **Exit code** comes from ``inspect`` (the container is kept until :meth:`forget` removes it).
- **Adoption and the orphan scan** go by label (``io.openeas.data-dir`` = this data dir,
  ``io.openeas.replica`` = the replica id), never by name: a container started by hand, or by
  another data dir's server, is never touched.
- **Images** are pulled before the start (the supervisor's Pulling phase) and then cached by
  the engine on this node: the next replica and the next version with the same image skip the
  pull. ``dockerAuth`` (or the server's registry credential file) is written to a private auth
  file for that one pull and deleted after it; it never reaches an argument list or a log.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from openeas.procfs import same_process, start_ticks
from openeas.runtime.base import LaunchSpec, ProcessRef, PullError, PullResult, ReplicaProcess
from openeas.runtime.container_args import (
    LABEL_DATA_DIR,
    LABEL_GPUS,
    LABEL_REPLICA,
    LABEL_SIDECAR,
    NAME_PREFIX,
    ContainerLaunch,
    container_name,
    run_args,
    sidecar_run_args,
)
from openeas.runtime.engine import Engine
from openeas.runtime.gpus import GpuError, assign_gpus, node_gpus, parse_held
from openeas.runtime.pulls import PullOnce

# Engine calls other than a pull are quick (tens of ms); this bounds a hung engine, seconds.
ENGINE_CALL_TIMEOUT_S = 60.0
# How much of the log the engine wrote during a failed start becomes the error message, bytes.
ERROR_TAIL_BYTES = 2000
# The name docker reads credentials from (in the folder its --config names); podman reads any file.
AUTH_FILE_NAME = "config.json"


def registry_of(image: str) -> str | None:
    """The registry host an image reference names, or None for a short name ("vllm/vllm-openai")."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


class ContainerRuntime:
    """Runs each replica as a container; see the module docstring."""

    name = "container"

    def __init__(self, engine: Engine, data_dir: Path, *, registry_auth: Path | None = None) -> None:
        self.engine = engine
        self.data_dir = Path(data_dir)
        self.registry_auth = registry_auth  # the server's credential file (containers-auth JSON)
        self._pulls = PullOnce()
        self._children: list[subprocess.Popen[bytes]] = []
        self._images: set[str] = set()  # images known to be on this node
        self._gpu_count: int | None = None
        self._sidecar_names: dict[str, list[str]] = {}  # a replica's other containers (pause)

    # ---- engine calls ---------------------------------------------------------------------------
    def _env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {**os.environ, **self.engine.env}
        if extra:
            env.update(extra)
        return env

    def _call(self, *args: str, timeout_s: float = ENGINE_CALL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.engine.binary, *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=self._env(),
            stdin=subprocess.DEVNULL,
        )

    @staticmethod
    def _name(ref: ProcessRef) -> str:
        name = ref.extra.get("container")
        if name:
            return name
        rid = ref.extra.get("replica")
        if not rid:
            raise ValueError("a container ref needs extra['container'] or extra['replica']")
        return container_name(rid)

    # ---- the Runtime protocol -------------------------------------------------------------------
    def start(self, launch: LaunchSpec) -> ProcessRef:
        c = launch.container
        if c is None:
            raise ValueError("the container runtime needs a container launch (containers[0].image)")
        self._reap()
        if c.pidfile:
            Path(c.pidfile).unlink(missing_ok=True)
        for vol in c.volumes:
            if vol.overlay_dir:  # docker's overlay volume needs its layers' folders
                for sub in ("upper", "work"):
                    Path(vol.overlay_dir, sub).mkdir(parents=True, exist_ok=True)
        c = self._with_gpus(c)
        log = Path(launch.log_path)
        log.parent.mkdir(parents=True, exist_ok=True)
        error = self._run(c, log)
        if error is not None and "already in use" in error:
            # A container left from an earlier attempt of this replica (its removal was lost).
            self._remove(c.name)
            error = self._run(c, log)
        names = [c.name]
        for side in c.sidecars:
            if error is not None:
                break
            args = sidecar_run_args(c, side, engine=self.engine.name, init=self.engine.init)
            error = self._run(c, log, args, side.env)
            names.append(side.name)
        if error is not None:
            self._remove(c.name)
            self._images.discard(c.image)  # removed behind our back? the next start checks again
            raise OSError(f"{self.engine.name} could not start the container: {error}")
        if self.engine.name == "docker":
            for name in names:
                self._follow_log(name, log)
        return self._ref(c.name, c.pidfile)

    def _with_gpus(self, c: ContainerLaunch) -> ContainerLaunch:
        """``c`` with the GPUs it gets (exactly ``metadata.gpu``, free ones; GpuError names why not),
        recorded in a label so that the next start, even after a restart, sees them held."""
        if not c.gpus:
            return c
        res = self._call(
            "ps", "--no-trunc", "--filter", f"label={LABEL_DATA_DIR}={self.data_dir}",
            "--format", '{{index .Labels "' + LABEL_SIDECAR + '"}}|{{index .Labels "' + LABEL_GPUS + '"}}',
        )  # fmt: skip
        rows = [line.partition("|") for line in res.stdout.split()] if res.returncode == 0 else []
        held = parse_held(gpus for side, _, gpus in rows if side in ("", "<no value>"))
        try:
            ids = assign_gpus(c.gpus, self.gpu_count(), held)
        except GpuError as exc:
            raise OSError(str(exc)) from None
        labels = {**c.labels, LABEL_GPUS: ",".join(map(str, ids))}
        return dataclasses.replace(c, gpu_ids=ids, labels=labels)

    def _follow_log(self, name: str, log: Path) -> None:
        """Docker keeps a container's output in its own log: follow it into the replica's log
        (the follower ends when the container does; its own session, so it outlives a crash of
        the control plane like the container)."""
        with open(log, "ab") as out:
            self._children.append(
                subprocess.Popen(
                    [self.engine.binary, "logs", "--follow", name],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    env=self._env(),
                    start_new_session=True,
                )
            )

    def _remove(self, name: str) -> None:
        """Remove a replica's container and the others in its network namespace, at once."""
        self._call(*remove_args(self.engine.name, name, self._sidecars_of(name)))

    def _sidecars_of(self, name: str) -> list[str]:
        """Docker has no ``rm --depend``: the replica's other containers, by their label."""
        if self.engine.name != "docker":
            return []
        rid = name[len(NAME_PREFIX) :] if name.startswith(NAME_PREFIX) else name
        res = self._call(
            "ps", "--all", "--quiet", "--no-trunc", "--filter", f"label={LABEL_DATA_DIR}={self.data_dir}",
            "--filter", f"label={LABEL_REPLICA}={rid}", "--filter", f"label={LABEL_SIDECAR}",
        )  # fmt: skip
        return res.stdout.split() if res.returncode == 0 else []

    def _run(
        self, c: ContainerLaunch, log: Path, args: list[str] | None = None, env: dict[str, str] | None = None
    ) -> str | None:
        """``<engine> run`` (the main container, or ``args``) with the replica log as its output;
        None, or the engine's error."""
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            offset = os.lseek(fd, 0, os.SEEK_END)
            res = subprocess.run(
                [self.engine.binary, *(args if args is not None else self._run_args(c))],
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                env=self._env(env if env is not None else c.env),
                timeout=ENGINE_CALL_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            return f"{self.engine.name} run did not return within {ENGINE_CALL_TIMEOUT_S:.0f}s"
        finally:
            os.close(fd)
        return None if res.returncode == 0 else _tail(log, offset)

    def _run_args(self, c: ContainerLaunch) -> list[str]:
        return run_args(c, engine=self.engine.name, limits=self.engine.limits, init=self.engine.init)

    def gpu_count(self) -> int:
        """This node's GPUs (counted once)."""
        if self._gpu_count is None:
            self._gpu_count = node_gpus()
        return self._gpu_count

    def _ref(self, name: str, pidfile: str | None = None) -> ProcessRef:
        pid = _read_pid(pidfile) or self._pid(name)
        ticks = start_ticks(pid) if pid else None
        return ProcessRef(pid=pid, start_ticks=ticks or 0, extra={"container": name})

    def _pid(self, name: str) -> int:
        res = self._call("inspect", "--format", "{{.State.Pid}}", name)
        try:
            return int(res.stdout.strip()) if res.returncode == 0 else 0
        except ValueError:
            return 0

    def adopt(self, ref: ProcessRef) -> bool:
        return self.alive(ref)

    def alive(self, ref: ProcessRef) -> bool:
        return ref.pid > 1 and same_process(ref.pid, ref.start_ticks)

    def group_alive(self, ref: ProcessRef) -> bool:
        # The container's main process is the init of its pid namespace: when it ends, the kernel
        # ends every other process in the container.
        return self.alive(ref)

    def exit_code(self, ref: ProcessRef) -> int | None:
        res = self._call("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", self._name(ref))
        status, _, code = res.stdout.strip().partition(" ")
        if res.returncode != 0 or status in ("running", "created", "") or not code.lstrip("-").isdigit():
            return None
        return int(code)

    def signal(self, ref: ProcessRef, sig: int) -> None:
        if not self.alive(ref):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(ref.pid, sig)

    # ---- frozen standbys (controller/standby.py) -------------------------------------------------
    def pause(self, ref: ProcessRef) -> str | None:
        """Freeze the replica's containers (the engine's `pause`: the cgroup freezer, no CPU,
        memory kept); None when done or already paused, else the engine's error."""
        return self._set_paused(ref, True)

    def unpause(self, ref: ProcessRef) -> str | None:
        """Thaw the replica's containers; None when done or already running, else the error."""
        return self._set_paused(ref, False)

    def _set_paused(self, ref: ProcessRef, paused: bool) -> str | None:
        name = self._name(ref)
        names = [name, *self._replica_sidecars(name)]
        verb, wanted = ("pause", "paused") if paused else ("unpause", "running")
        res = self._call(verb, *names)
        if res.returncode == 0:
            return None
        state = self._call("inspect", "--format", "{{.State.Status}}", *names)
        if state.returncode == 0 and set(state.stdout.split()) == {wanted}:
            return None  # it already was (an adopted standby, a second thaw)
        said = (res.stderr.strip().splitlines() or [f"exit status {res.returncode}"])[-1]
        return f"{self.engine.name} {verb} {name}: {said}"

    def _replica_sidecars(self, name: str) -> list[str]:
        """The replica's other containers (any engine), remembered: a thaw is on the promotion's
        critical path and a `ps` costs tens of milliseconds."""
        if name not in self._sidecar_names:
            rid = name[len(NAME_PREFIX) :] if name.startswith(NAME_PREFIX) else name
            res = self._call(
                "ps", "--all", "--quiet", "--no-trunc", "--filter", f"label={LABEL_DATA_DIR}={self.data_dir}",
                "--filter", f"label={LABEL_REPLICA}={rid}", "--filter", f"label={LABEL_SIDECAR}",
            )  # fmt: skip
            if res.returncode != 0:
                return []
            self._sidecar_names[name] = res.stdout.split()
        return self._sidecar_names[name]

    def forget(self, ref: ProcessRef) -> None:
        """Remove the container (in the background: a removal must not hold up the supervisor)."""
        self._reap()
        name = self._name(ref)
        self._sidecar_names.pop(name, None)
        self._children.append(
            subprocess.Popen(
                [self.engine.binary, *remove_args(self.engine.name, name, self._sidecars_of(name))],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=self._env(),
            )
        )

    def _reap(self) -> None:
        self._children = [p for p in self._children if p.poll() is None]

    def replica_processes(self, data_dir: Path) -> list[ReplicaProcess]:
        """Every container labelled with ``data_dir`` (running or not; a stopped one has pid 0)."""
        ids = self._call(
            "ps", "--all", "--quiet", "--no-trunc", "--filter", f"label={LABEL_DATA_DIR}={data_dir}"
        )
        found = ids.stdout.split()
        if ids.returncode != 0 or not found:
            return []
        labels = "".join('|{{index .Config.Labels "' + k + '"}}' for k in (LABEL_REPLICA, LABEL_SIDECAR))
        res = self._call("inspect", "--format", "{{.Id}}|{{.State.Pid}}" + labels, *found)
        out = []
        for line in res.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) != 4 or not parts[1].isdigit():
                continue
            cid, pid, rid, sidecar = parts[0], int(parts[1]), parts[2], parts[3]
            if sidecar not in ("", "<no value>"):
                continue  # a replica's other containers go with its main one (removed with --depend)
            out.append(ReplicaProcess(pid=pid, replica_id=rid, pgid=pid, handle=cid))
        return out

    def kill(self, proc: ReplicaProcess) -> bool:
        """Remove the scanned container (by its id) with its processes."""
        if not proc.handle:
            return False
        sidecars = self._sidecars_of(NAME_PREFIX + proc.replica_id)
        return self._call(*remove_args(self.engine.name, proc.handle, sidecars)).returncode == 0

    def exec_argv(self, ref: ProcessRef, argv: list[str]) -> list[str]:
        """The engine command that runs ``argv`` inside the replica's main container."""
        return [self.engine.binary, "exec", self._name(ref), *argv]

    # ---- images ---------------------------------------------------------------------------------
    def has_image(self, image: str) -> bool:
        """Whether the engine has ``image``; a yes is remembered (an engine call costs tens of ms
        of every cold start), and forgotten when a start then fails for want of the image."""
        if image in self._images:
            return True
        found = self._call("image", "inspect", "--format", "{{.Id}}", image).returncode == 0
        if found:
            self._images.add(image)
        return found

    async def pull(
        self,
        image: str,
        *,
        docker_auth: tuple[str, str] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> PullResult:
        """Pull ``image`` unless this node has it; one pull per image at a time (the second
        replica waits for the first and then finds the image). PullError with the engine's reason."""

        async def do_pull() -> None:
            with self._auth_file(image, docker_auth) as authfile:
                code, last = await self._pull(pull_args(self.engine.name, image, authfile), progress)
            if code != 0:
                raise PullError(last or f"{self.engine.name} pull exited with {code}")

        return await self._pulls.pull(image, self.has_image, do_pull)

    async def _pull(self, args: list[str], progress: Callable[[str], None] | None) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            self.engine.binary,
            *args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self._env(),
        )
        last = ""
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line:
                last = line
                if progress is not None:
                    progress(line)
        return await proc.wait(), last

    @contextlib.contextmanager
    def _auth_file(self, image: str, docker_auth: tuple[str, str] | None) -> Iterator[Path | None]:
        """A private auth file for one pull: the spec's dockerAuth, else the server's file, else
        none. It lives in a private folder (0700, the file 0600) named ``config.json`` (docker
        reads only that name), deleted with the folder after the pull."""
        if docker_auth is None:
            if self.registry_auth is None or self.engine.name != "docker":
                yield self.registry_auth  # podman reads the server's file where it is
                return
            content = Path(self.registry_auth).read_text()
        else:
            registry = registry_of(image)
            if registry is None:
                raise PullError(
                    f"dockerAuth needs an image that names its registry host (host/name:tag), not {image!r}"
                )
            token = base64.b64encode(f"{docker_auth[0]}:{docker_auth[1]}".encode()).decode()
            content = json.dumps({"auths": {registry: {"auth": token}}})
        folder = self.data_dir / "run" / f"pull-{secrets.token_hex(8)}"
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir(mode=0o700)
        try:
            path = folder / AUTH_FILE_NAME
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(content)
            yield path
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def pull_args(engine: str, image: str, authfile: Path | None) -> list[str]:
    """The engine's pull command with an auth file (pure): podman ``pull --authfile F``; docker
    has no such option, it reads ``config.json`` from the folder its global ``--config`` names."""
    if authfile is None:
        return ["pull", image]
    if engine == "docker":
        return ["--config", str(authfile.parent), "pull", image]
    return ["pull", "--authfile", str(authfile), image]


def remove_args(engine: str, name: str, sidecars: list[str]) -> list[str]:
    """The engine's command that removes a replica's containers at once, without a grace period
    (pure): podman removes the ones in the main one's namespace with it (``--depend``); docker
    has no such option and is given them first, with their anonymous (overlay) volumes."""
    if engine == "docker":
        return ["rm", "--force", "--volumes", *sidecars, name]
    return ["rm", "--force", "--depend", "--time", "0", name]


def _read_pid(pidfile: str | None) -> int:
    try:
        return int(Path(pidfile).read_text().strip()) if pidfile else 0
    except (OSError, ValueError):
        return 0


def _tail(log: Path, offset: int) -> str:
    """What the engine wrote to the log from ``offset`` on, the last lines only."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read()[-ERROR_TAIL_BYTES:].decode(errors="replace")
    except OSError:
        return "no output"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " ".join(lines[-3:]) if lines else "no output"
