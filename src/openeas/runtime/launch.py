"""From a spec to a :class:`LaunchSpec`: ports and mount paths rewritten for this node.

A spec is written for one container: ``vllm serve /mnt/data/Qwen --port 8000`` with container
port 8000 and object storage mounted at ``/mnt/data``. The process runtime runs several replicas
of it side by side on one machine, without containers, so two things are rewritten per replica:

**Ports.** Each replica gets its own free host port (chosen by the caller, see
:func:`free_port`). In the command or script, every occurrence of the container port that
stands *as a port* is replaced by the replica's port:

- after a port-like flag, with a space or ``=``: ``--port 8000``, ``--port=8000``, ``-p 8000``,
  ``--listen 8000``, ``--bind 8000``, ``--http-port "8000"``, ``--server.port 8000`` (a flag is
  port-like when one of its words is ``port``, ``listen`` or ``bind``, or it is ``-p``);
- after a host and a colon: ``0.0.0.0:8000``, ``--bind 127.0.0.1:8000``, ``localhost:8000``,
  ``http://host:8000/v1``, ``[::]:8000``, ``--bind :8000``;
- in an assignment to a name whose last word is ``port``: ``PORT=8000``,
  ``GRADIO_SERVER_PORT=8000``, ``uvicorn.run(app, port=8000)``.

Any other number is left alone (``--max-tokens 8000``, ``text[:8000]``, ``--port 80001``). The
replica's environment also carries ``PORT`` and ``OPENEAS_REPLICA_PORT`` = the replica's port,
and a spec env variable whose name ends in ``PORT`` with the container port as its value gets the
replica's port. A server that takes its port as a positional argument
(``python -m http.server 8000``) is not rewritten: write ``--port 8000`` or ``$PORT`` instead.

**Mounts.** Every ``storage[].mount_path`` is a whole-path prefix to rewrite: in the command or
script and in the values of the spec's env variables, ``/mnt/data``, ``/mnt/data/`` and
``/mnt/data/Qwen/x`` become the local directory that backs the mount on this node (the node
cache for ``oss``, a per-replica directory for ``empty_dir``), while ``/mnt/database``,
``/mnt/data.bak`` and ``/opt/mnt/data`` are left alone. ``file:///mnt/data/x`` is rewritten too.
The local directory is pasted into shell text, so it must consist of shell-safe characters
(letters, digits and ``_@%+=:,./-``); a data directory with spaces is a clear error.

**Running.** A ``command`` runs as ``/bin/bash -c "exec <command>"`` when it is a simple command
(so the server itself leads the replica's process group and gets its signals directly), and as
``/bin/bash -c "<command>"`` when it uses shell control operators (``&&``, ``;``, ``|``…) or
starts with a variable assignment or shell keyword; a ``script`` runs as
``/bin/bash -c "<script>"``. The environment is the caller's base environment, then the spec's
env, then ``PORT``/``OPENEAS_REPLICA_PORT``; ``PATH`` starts with the directory of the running
Python interpreter, so ``python`` and ``openeas`` resolve to the project's own. The replica runs
in its own work directory.
"""

from __future__ import annotations

import os
import random
import re
import shlex
import socket
import sys
from collections.abc import Mapping

from openeas.errors import MountError
from openeas.runtime.base import Demand, LaunchSpec
from openeas.runtime.shellwords import is_simple_command
from openeas.spec.models import ServiceSpec

# --- ports -------------------------------------------------------------------------------

_PORT_RE = re.compile(
    # 1. a flag, then a space or '=', then an optionally quoted number
    r"(?P<flag>(?<![\w-])--?[A-Za-z][\w.-]*)(?P<fsep>\s*=\s*|\s+)[\"']?(?P<fnum>\d+)(?![\w.:])"
    # 2. an assignment: NAME=number, name = number
    r"|(?P<name>(?<![\w.$-])[A-Za-z_]\w*)\s*=\s*[\"']?(?P<anum>\d+)(?![\w.:])"
    # 3. host:number, or :number at the start of a word (not after '[', a quote or a word char)
    r"|(?:(?<![\w.\[:-])(?:\[[0-9A-Fa-f:.]*\]|[A-Za-z0-9](?:[A-Za-z0-9-]*)(?:\.[A-Za-z0-9-]+)*)"
    r"|(?<![^\s=/]))"
    r":(?P<cnum>\d+)(?!\d)"
)
_WORD_RE = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_PORT_FLAG_WORDS = {"port", "listen", "bind"}


def _words(name: str) -> list[str]:
    """``--server.http-port`` → [server, http, port]; ``serverPort`` → [server, port]."""
    return [w.lower() for w in _WORD_RE.findall(name)]


def _port_like_flag(flag: str) -> bool:
    return flag == "-p" or any(w in _PORT_FLAG_WORDS for w in _words(flag))


def _port_like_name(name: str) -> bool:
    words = _words(name)
    return bool(words) and words[-1] == "port"


def rewrite_port(text: str, container_port: int, port: int) -> str:
    """Replace ``container_port`` where it stands as a port in shell text (module docstring)."""
    if container_port == port:
        return text
    old, new = str(container_port), str(port)

    def sub(m: re.Match[str]) -> str:
        for group, ok in (
            ("fnum", lambda: _port_like_flag(m.group("flag"))),
            ("anum", lambda: _port_like_name(m.group("name"))),
            ("cnum", lambda: True),
        ):
            if m.group(group) is not None:
                if m.group(group) != old or not ok():
                    return m.group(0)
                start, end = m.span(group)
                base = m.start()
                s = m.group(0)
                return s[: start - base] + new + s[end - base :]
        return m.group(0)  # pragma: no cover - one group always matches

    return _PORT_RE.sub(sub, text)


def rewrite_port_env(name: str, value: str, container_port: int, port: int) -> str:
    """A spec env variable named ``*PORT`` whose value is the container port → the replica's."""
    if _port_like_name(name) and value.strip() == str(container_port):
        return str(port)
    return value


# --- mounts ------------------------------------------------------------------------------

_SHELL_SAFE_RE = re.compile(r"[\w@%+=:,./-]+")


def _mount_re(mounts: Mapping[str, str]) -> tuple[re.Pattern[str], dict[str, str]] | None:
    table: dict[str, str] = {}
    for mount_path, local in mounts.items():
        key = mount_path.rstrip("/")
        if not key.startswith("/"):
            raise MountError(f"mount_path {mount_path!r}: must be an absolute path other than '/'")
        table[key] = local.rstrip("/") or "/"
    if not table:
        return None
    alts = "|".join(re.escape(k) for k in sorted(table, key=len, reverse=True))
    # A whole path: not inside another path or word before it, not longer after it.
    pattern = re.compile(r"(?:(?<=file://)|(?<![\w.~/$})-]))(?P<m>" + alts + r")(?![\w.-])")
    return pattern, table


def rewrite_mounts(text: str, mounts: Mapping[str, str], *, shell: bool = True) -> str:
    """Replace each mount path prefix in ``text`` by its local directory (module docstring).

    ``mounts`` maps mount_path → local directory. With ``shell`` (command or script text) a
    local directory that is not shell-safe raises :class:`MountError` instead of being pasted.
    """
    compiled = _mount_re(mounts)
    if compiled is None:
        return text
    pattern, table = compiled

    def sub(m: re.Match[str]) -> str:
        local = table[m.group("m")]
        if shell and not _SHELL_SAFE_RE.fullmatch(local):
            raise MountError(
                f"mount {m.group('m')!r}: local directory {local!r} has characters that are not "
                "safe in a shell command (use a data directory of letters, digits and _@%+=:,./-)"
            )
        return local

    return pattern.sub(sub, text)


# --- argv and env ------------------------------------------------------------------------


def shell() -> str:
    return "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"


def build_argv(command: str | None, script: str | None) -> list[str]:
    """The argv that runs an (already rewritten) command or script; see the module docstring."""
    if command:
        text = command.strip()
        if is_simple_command(text):
            text = "exec " + text
        return [shell(), "-c", text]
    if script:
        return [shell(), "-c", script]
    raise ValueError("one of 'command' or 'script' is required")


def build_env(
    base_env: Mapping[str, str], spec_env: Mapping[str, str], *, port: int, bin_dir: str | None = None
) -> dict[str, str]:
    """base env, then the (already rewritten) spec env, then the replica port; PATH first ``bin_dir``."""
    env = dict(base_env)
    env.update(spec_env)
    first = bin_dir if bin_dir is not None else os.path.dirname(sys.executable)
    rest = [p for p in (env.get("PATH") or os.defpath).split(os.pathsep) if p and p != first]
    env["PATH"] = os.pathsep.join([first, *rest]) if first else os.pathsep.join(rest)
    env["PORT"] = str(port)
    env["OPENEAS_REPLICA_PORT"] = str(port)
    return env


def build_launch(
    spec: ServiceSpec,
    *,
    replica_id: str,
    port: int,
    mounts: Mapping[str, str],
    workdir: str,
    log_path: str,
    base_env: Mapping[str, str],
    bin_dir: str | None = None,
    sidecar_ports: Mapping[int, int] | None = None,
) -> LaunchSpec:
    """The LaunchSpec of one replica of ``spec``: its main container, and the others (sidecars).

    ``port``: this replica's host port (the main container's). ``mounts``: mount_path → local
    directory backing it (from :func:`openeas.storage.prepare_mounts`). ``workdir``: the
    replica's cwd. ``base_env``: the environment to start from (usually ``os.environ``).
    ``bin_dir``: put first on PATH; default the directory of the running Python interpreter.
    ``sidecar_ports``: a host port for each other container's port (container port → host port).

    Several containers run as one replica, as EAS runs them side by side in one instance: each
    other container's command starts in the background, with its own env, in the replica's
    process group (stopped with it), then the main container's command runs in the foreground.
    Every container port is rewritten in every command and env (the main container's to
    ``port``, the others' to ``sidecar_ports``), so ``--backend 127.0.0.1:8001`` in one container
    still reaches the container listening on 8001.
    """
    c = spec.main
    ports = {c.port: port, **{k: v for k, v in (sidecar_ports or {}).items() if k != c.port}}

    def rewrite(text: str) -> str:
        for container_port, host_port in ports.items():
            text = rewrite_port(text, container_port, host_port)
        return rewrite_mounts(text, mounts)

    def rewrite_env(env: Mapping[str, str]) -> dict[str, str]:
        out = {}
        for name, value in env.items():
            for container_port, host_port in ports.items():
                value = rewrite_port_env(name, value, container_port, host_port)
            out[name] = rewrite_mounts(value, mounts, shell=False)
        return out

    command = rewrite(c.command) if c.command else None
    script = None if command else rewrite(c.script or "")
    argv = build_argv(command, script)
    sidecars = []
    for side in spec.containers[1:]:
        side_port = ports.get(side.port) if "port" in side.model_fields_set else None
        text = rewrite(side.command or side.script or "")
        sidecars.append(_background(text, rewrite_env(side.env_dict()), side_port))
    if sidecars:
        argv = [argv[0], "-c", "\n".join([*sidecars, argv[2]])]
    return LaunchSpec(
        replica_id=replica_id,
        argv=argv,
        env=build_env(base_env, rewrite_env(c.env_dict()), port=port, bin_dir=bin_dir),
        cwd=workdir,
        log_path=log_path,
        port=port,
        memory_limit_mb=spec.metadata.memory,
        demand=demand_of(spec),
    )


def demand_of(spec: ServiceSpec) -> Demand:
    """What one replica of ``spec`` asks of its node (metadata.cpu/memory/gpu, the instance type)."""
    md = spec.metadata
    return Demand(md.cpu, md.memory, md.gpu, spec.cloud.computing.instance_type)


def _background(text: str, env: Mapping[str, str], port: int | None) -> str:
    """A sidecar's shell line: in a subshell with its own env (and PORT), in the background."""
    full = {**env, **({"PORT": str(port)} if port is not None else {})}
    exports = "".join(f"export {name}={shlex.quote(value)}; " for name, value in full.items())
    body = f"exec {text}" if is_simple_command(text) else text
    return f"( {exports}{body}\n) &"


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free on ``host`` right now (bind to port 0; the OS picks)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# Replica ports come from below Linux's ephemeral range (32768-60999 by default), so an outgoing
# connection (the gateway's, a probe's) never takes a port a replica is about to bind.
REPLICA_PORTS = (20000, 30000)


def replica_port_range() -> tuple[int, int]:
    """`OPENEAS_REPLICA_PORTS=LO-HI` (inclusive-exclusive) overrides the default range."""
    raw = os.environ.get("OPENEAS_REPLICA_PORTS")
    if not raw:
        return REPLICA_PORTS
    lo, sep, hi = raw.partition("-")
    if not (sep and lo.isdigit() and hi.isdigit() and 0 < int(lo) < int(hi) <= 65536):
        raise ValueError(f"OPENEAS_REPLICA_PORTS: expected LO-HI such as 20000-30000, got {raw!r}")
    return int(lo), int(hi)


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(
    used: set[int],
    host: str = "127.0.0.1",
    *,
    rng: random.Random | None = None,
    span: tuple[int, int] | None = None,
) -> int:
    """A free port for a new replica: in the replica range (``span``, default
    :func:`replica_port_range`), not `used` by another replica, bindable on ``host`` now."""
    lo, hi = span or replica_port_range()
    rng = rng or random.Random()
    for _ in range(256):
        port = rng.randrange(lo, hi)
        if port not in used and _bindable(host, port):
            return port
    raise OSError(f"no free replica port in {lo}-{hi} on {host} ({len(used)} in use by replicas)")


def pick_ports(
    count: int, used: set[int], host: str = "127.0.0.1", span: tuple[int, int] | None = None
) -> list[int]:
    """``count`` distinct free replica ports (:func:`pick_port`), none of them in ``used``."""
    taken, out = set(used), []
    for _ in range(count):
        out.append(pick_port(taken, host, span=span))
        taken.add(out[-1])
    return out
