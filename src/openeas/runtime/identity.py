"""Who a process replica runs as: never the control plane's user when the server can help it.

A replica is someone else's code. When the server runs as root, each service's process replicas
run as a uid of that service's own (``UID_BASE`` + n, allocated once per data dir in
``DATA/run/replica-uids.json``) with the group of the node's replica account (``--replica-user``,
default ``openeas-replica``, created with ``useradd --system`` when missing) and no supplementary
groups. One uid per service, not one per node: processes of one uid can read each other's
``/proc`` entries and files, so a shared uid would let one service read another's model.

What the replica user can reach (docs/RELIABILITY.md, "Security"): the data dir is traverse-only
(0711: nothing in it can be listed) and every file in it is 0600 and every folder 0700, except
``replicas/`` and ``cache/`` (0711, traverse-only too); a replica's own folder
(``replicas/<id>/``) and its service's node-cache folder (``cache/u<uid>/``) belong to its uid,
mode 0700. So a replica reaches its own folder and its own cache, and nothing else of the data dir.

The server checks at start that the replica account can run the interpreter and import
``openeas`` with the replicas' environment from inside ``DATA/replicas`` (a ``/root`` that is
0700 above the interpreter is the usual trouble: ``scripts/setup.sh`` grants it traverse-only
``o+x``). When it cannot, or the server is not root, or ``--replica-user none`` was given,
replicas run as the server's user, and the reason is logged and shown as a warning of the process
runtime in ``describe`` and ``deploy --dry-run``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

# The node's replica account (its group is every replica's group).
REPLICA_USER = "openeas-replica"
# `--replica-user none`: replicas run as the server's user (with a warning).
NO_REPLICA_USER = "none"
# Per-service uids: UID_BASE + n, n < UID_SPAN. Far above login (1000+) and container
# sub-uid (100000+) ranges, below 2^31 (some tools take uids as signed 32-bit numbers).
UID_BASE = 0x70000000
UID_SPAN = 0x01000000
# The server's private files in the data dir (mode 0600; the SQLite files keep theirs).
PRIVATE_FILES = ("server.json", "secret.key", "server.lock", "openeas.db", "openeas.db-wal",
                 "openeas.db-shm", "queue.db", "queue.db-wal", "queue.db-shm")  # fmt: skip
# Folders of the data dir that replicas must traverse (never list) when they run as another user.
REPLICA_REACHABLE = ("replicas", "cache")
CHECK_TIMEOUT_S = 30.0

Run = Callable[..., subprocess.CompletedProcess[str]]


@dataclass(frozen=True)
class ReplicaUser:
    """The uid and gid one replica runs as."""

    uid: int
    gid: int


@dataclass(frozen=True)
class ReplicaUsers:
    """The node's decision: replicas run as users of their own (``gid`` set), or not (``problem``)."""

    data_dir: Path
    name: str | None  # the replica account; None when replicas run as the server's user
    gid: int | None
    problem: str | None  # why replicas run as the server's user; None when they do not

    @property
    def active(self) -> bool:
        return self.gid is not None

    def warning(self) -> str | None:
        """The line ``describe`` shows under the process runtime when replicas are not isolated."""
        if self.problem is None:
            return None
        return f"process replicas run as the server's user ({self.problem}): they can read its files"

    def for_service(self, service: str) -> ReplicaUser | None:
        if self.gid is None:
            return None
        return ReplicaUser(service_uid(self.data_dir, service), self.gid)


def node_tag(data_dir: Path) -> str:
    """What marks a replica process of ``data_dir`` (``OPENEAS_NODE``) without naming the path."""
    return hashlib.sha256(str(Path(data_dir)).encode()).hexdigest()[:16]


def service_uid(data_dir: Path, service: str) -> int:
    """The uid of ``service``'s replicas: allocated once, kept in ``DATA/run/replica-uids.json``.

    A deleted service keeps its entry, so a uid never passes to another service of this data dir.
    """
    run = Path(data_dir) / "run"
    run.mkdir(mode=0o700, exist_ok=True)
    path = run / "replica-uids.json"
    fd = os.open(run / "replica-uids.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            table: dict[str, int] = json.loads(path.read_text())
        except (OSError, ValueError):
            table = {}
        if service in table:
            return int(table[service])
        n = len(table)
        if n >= UID_SPAN:  # pragma: no cover - sixteen million services
            raise OSError(f"no replica uid left for service {service!r} ({n} allocated)")
        table[service] = UID_BASE + n
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(table, indent=1))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        return UID_BASE + n
    finally:
        os.close(fd)


def decide(euid: int, wanted: str | None) -> str | None:
    """Why replicas cannot run as a user of their own before looking at the account (pure)."""
    if wanted is None or wanted == NO_REPLICA_USER:
        return "--replica-user none"
    if euid != 0:
        return "the server is not root, so it cannot switch users"
    return None


def ensure_account(name: str, run: Run = subprocess.run) -> pwd.struct_passwd | str:
    """The account ``name``, created as a system user when missing; or why it cannot be had."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    cmd = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
           "--shell", "/usr/sbin/nologin", "--", name]  # fmt: skip
    try:
        res = run(cmd, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"user {name!r} is missing and useradd failed: {exc}"
    if res.returncode != 0:
        last = (res.stderr or res.stdout).strip().splitlines()[-1:] or [str(res.returncode)]
        return f"user {name!r} is missing and useradd failed: {last[0]}"
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return f"user {name!r} is missing after useradd"


def check_reach(
    user: ReplicaUser, cwd: Path, env: Mapping[str, str], run: Run = subprocess.run
) -> str | None:
    """None when ``user`` can run this interpreter, import openeas and reach ``cwd`` by its path;
    else why not. (The child enters ``cwd`` before it switches users, so reaching it is checked by
    path: every folder above it must be traversable by ``user``.)"""
    cmd = [sys.executable, "-c", "import os, sys, openeas; os.stat(sys.argv[1])", str(Path(cwd).absolute())]
    try:
        res = run(cmd, user=user.uid, group=user.gid, extra_groups=[], cwd=cwd, env=dict(env),
                  capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return f"uid {user.uid} cannot run {sys.executable} in {cwd}: {exc}"
    if res.returncode != 0:
        last = res.stderr.strip().splitlines()[-1:] or [f"exit code {res.returncode}"]
        return f"uid {user.uid} cannot run {sys.executable}, import openeas and reach {cwd}: {last[0]}"
    return None


def secure_data_dir(data_dir: Path, *, traverse: bool) -> None:
    """Modes of the data dir (module docstring): 0700, or 0711 when replicas must traverse it."""
    data_dir = Path(data_dir)
    data_dir.chmod(0o711 if traverse else 0o700)
    for name in PRIVATE_FILES:
        with contextlib.suppress(FileNotFoundError):
            (data_dir / name).chmod(0o600)
    for name in ("run", "logs"):
        (data_dir / name).mkdir(mode=0o700, exist_ok=True)
        (data_dir / name).chmod(0o700)
    for name in REPLICA_REACHABLE:
        (data_dir / name).mkdir(mode=0o700, exist_ok=True)
        (data_dir / name).chmod(0o711 if traverse else 0o700)


def resolve_replica_users(
    data_dir: Path, wanted: str | None, env: Mapping[str, str], *, run: Run = subprocess.run
) -> ReplicaUsers:
    """The node's decision (module docstring); sets the data dir's modes to match it."""
    data_dir = Path(data_dir)
    problem = decide(os.geteuid(), wanted)
    if problem is None:
        assert wanted is not None
        secure_data_dir(data_dir, traverse=True)
        account = ensure_account(wanted, run)
        if isinstance(account, str):
            problem = account
        else:
            user = ReplicaUser(account.pw_uid, account.pw_gid)
            problem = check_reach(user, data_dir / "replicas", {**env, "HOME": "/nonexistent"}, run)
            if problem is None:
                return ReplicaUsers(data_dir, wanted, account.pw_gid, None)
    secure_data_dir(data_dir, traverse=False)
    return ReplicaUsers(data_dir, None, None, problem)


def hand_over(path: Path, user: ReplicaUser, *, owner_only: bool = True) -> None:
    """Give ``path`` (a folder, recursively) to ``user``; ``owner_only`` drops group and other bits.

    Symlinks are changed themselves, never followed."""
    path = Path(path)
    _own(path, user, owner_only)
    if not path.is_dir() or path.is_symlink():
        return
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            _own(Path(root) / name, user, owner_only)


def _own(p: Path, user: ReplicaUser, owner_only: bool) -> None:
    os.chown(p, user.uid, user.gid, follow_symlinks=False)
    if p.is_symlink():
        return
    mode = p.stat().st_mode & 0o7777
    if owner_only:
        mode &= 0o700
    p.chmod(mode)
