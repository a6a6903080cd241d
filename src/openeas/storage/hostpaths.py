"""Which spec fields may name a path on the server's host, and where: only what the operator allowed.

A spec is written by whoever holds the admin token, but what it names is read by the server
(the node cache copies it, the warmup sender reads it) and handed to replicas, which run someone
else's code. So a spec field becomes a host path only inside a folder the server was started
with (``openeas server --allow-host-path DIR``, repeatable; none by default), plus the server's
own local bucket (``--oss-root``, default ``DATA/oss``: where ``oss://bucket/key`` maps).

The fields: ``storage[].oss.path`` (and ``processor_path`` / ``model_path``, which become oss
mounts), ``storage[].git.repo`` when it is a local repository, ``storage[].nfs``,
``warm_up_data_path`` and ``containers[].prepare.pythonRequirementsPath`` (unless it lies inside
one of the spec's own mounts). A ``file://`` URL or an absolute path must resolve (symlinks
followed) inside an allowed folder; a relative path is always refused (it would resolve against
the server's working directory); chained fsspec URLs (``a::b``) and protocols that read local
files through another name are refused; object storage and HTTP URLs are not host paths.

NFS: OpenEAS does not mount NFS itself. EAS's form ``{"server": "<id>.nas.aliyuncs.com",
"path": "/"}`` is served from the folder the operator mounted that export on, declared with
``--nfs-export SERVER:/EXPORT=DIR`` (a ``path`` below ``/EXPORT`` is the same folder below
``DIR``). Without such a mapping, ``nfs.path`` is read as a folder of this host, and must lie
inside an allowed folder like any other host path.

Files a request names outside any spec obey the same rule (:func:`check_request_files`): a
batch job's ``input``, ``output`` and ``errors``, a stress test's ``data.path`` (the server reads
and writes them as itself); a relative one is refused there too.

:func:`check_spec` gives every problem at once, one ``field: reason`` line each (a 400 at deploy);
:meth:`HostPaths.local` and :meth:`HostPaths.nfs_dir` repeat the decision when a replica starts
(a spec stored before the rule existed is refused then, with the same message).
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from openeas.errors import MountError
from openeas.spec.processor import MODEL_MOUNT, PROCESSOR_MOUNT

# fsspec protocols that reach object storage or the network, never this host's files by another
# name ("zip", "tar", "simplecache", "dir", "reference"... would).
REMOTE_PROTOCOLS = frozenset(
    {"oss", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "http", "https", "hf", "memory"}
)
# Git transports that clone over the network; "file" and local paths are host paths.
GIT_REMOTE_PROTOCOLS = frozenset({"https", "http", "ssh", "git"})
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_SCP_LIKE_RE = re.compile(r"(?:[\w.-]+@)?[\w.-]+:(?!//)")  # git's user@host:path form
RELATIVE_HINT = "write an oss:// URL, or an absolute path inside an allowed host folder"
REQUEST_RELATIVE_HINT = "pass an absolute path (inside an allowed host folder) or an object-storage URL"
REQUESTS = "batch jobs and stress tests"
HOW = "start the server with --allow-host-path {folder} to allow it (no host folder is allowed by default)"


@dataclass(frozen=True)
class HostPaths:
    """The host folders spec fields may name (resolved, absolute) and the NFS exports mapped."""

    roots: tuple[str, ...] = ()
    # "server:/export" → the local folder that export is mounted on (--nfs-export)
    nfs_exports: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, roots: Iterable[os.PathLike[str] | str], nfs_exports: Iterable[str] = ()) -> HostPaths:
        """From the server's options; ValueError names a malformed ``--nfs-export``."""
        mapped: dict[str, str] = {}
        for item in nfs_exports:
            export, sep, local = item.rpartition("=")
            server, colon, path = export.partition(":")
            if not (sep and colon and server and path.startswith("/") and local.startswith("/")):
                raise ValueError(f"--nfs-export: {item!r} is not SERVER:/EXPORT=/LOCAL/FOLDER")
            mapped[f"{server}:{posixpath.normpath(path)}"] = os.path.realpath(local)
        return cls(tuple(dict.fromkeys(os.path.realpath(r) for r in roots)), mapped)

    def allows(self, path: str) -> bool:
        real = os.path.realpath(path)
        return any(real == r or real.startswith(r.rstrip("/") + "/") for r in self.roots)

    def local(self, url: str, where: str, *, git: bool = False, to: str = "specs") -> str | None:
        """The host path ``url`` names (None: object storage or the network); MountError when it
        is refused (relative, chained, an unknown protocol, or outside the allowed folders).
        ``to``: who names it, in the message (specs; batch jobs and stress tests)."""
        relative = RELATIVE_HINT if to == "specs" else REQUEST_RELATIVE_HINT
        path = host_path(url, where, git=git, relative=relative)
        if path is not None and not self.allows(path):
            raise MountError(f"{where}: {url!r} is outside the host folders allowed to {to}: {_how(path)}")
        return path

    def nfs_dir(self, nfs: Mapping[str, Any], where: str) -> str:
        """The local folder serving an ``nfs`` mount (see the module docstring), or MountError."""
        server = str(nfs.get("server") or "")
        path = str(nfs.get("path") or "")
        if not path and ":" in server:  # the older "host:/export" spelling
            server, path = server.split(":", 1)
        if not path.startswith("/"):
            raise MountError(f'{where}.path: an absolute export path is required (EAS: "path": "/")')
        norm = posixpath.normpath(path)
        for export, local in sorted(self.nfs_exports.items(), key=lambda kv: -len(kv[0])):
            host, _, root = export.partition(":")
            if host == server and (norm == root or norm.startswith(root.rstrip("/") + "/")):
                inside = os.path.join(local, norm[len(root) :].lstrip("/"))
                if os.path.realpath(inside) != local and not os.path.realpath(inside).startswith(local + "/"):
                    raise MountError(f"{where}.path: {path!r} leaves the folder {export} is mounted on")
                return inside
        if self.allows(norm):
            return norm
        raise MountError(
            f"{where}: the export {server or '(no server)'}:{path} is not mapped to a folder on this node: "
            f"mount it on the node and start the server with --nfs-export {server or 'SERVER'}:{norm}=<that "
            f"folder> (or, to read nfs.path as a folder of this host, --allow-host-path {norm})"
        )


def _how(path: str) -> str:
    folder = path if path.endswith("/") else posixpath.dirname(path) or "/"
    return HOW.format(folder=folder)


def host_path(url: str, where: str, *, git: bool = False, relative: str = RELATIVE_HINT) -> str | None:
    """The absolute host path ``url`` names, None when it names object storage or the network;
    MountError for a relative path, a chained URL or a protocol that is not accepted."""
    text = url.strip()
    if "::" in text:
        raise MountError(f"{where}: chained URLs ('::') are not accepted: write one oss:// or https:// URL")
    m = _SCHEME_RE.match(text)
    if m is None:
        if git and _SCP_LIKE_RE.match(text) and not text.startswith("/"):
            return None  # user@host:path (ssh)
        if not text.startswith("/"):
            raise MountError(
                f"{where}: {url!r} is a relative path; it would resolve against the server's working "
                f"directory: {relative}"
            )
        return posixpath.normpath(text)
    scheme = m.group(1).lower()
    if scheme in ("file", "local"):
        rest = text[m.end() :]
        netloc, slash, tail = rest.partition("/")
        if netloc not in ("", "localhost"):
            raise MountError(f"{where}: {url!r} names another host: file:// URLs name files of this one")
        return posixpath.normpath("/" + tail if slash else "/")
    accepted = GIT_REMOTE_PROTOCOLS if git else REMOTE_PROTOCOLS
    if scheme not in accepted:
        raise MountError(
            f"{where}: the protocol {scheme!r} is not accepted: use {', '.join(sorted(accepted))} "
            "or file:// (inside an allowed host folder)"
        )
    return None


def _field(spec: Any, i: int) -> str:
    """The spec field a storage entry comes from (a Python processor's mounts were synthesized)."""
    mount = spec.storage[i].mount_path
    if spec.python_processor and i >= (spec._processor_storage or 0):
        return {PROCESSOR_MOUNT: "processor_path", MODEL_MOUNT: "model_path"}.get(mount, f"storage[{i}]")
    return f"storage[{i}].oss.path"


def _inside_mount(path: str, spec: Any) -> bool:
    mounts = [m.mount_path.rstrip("/") for m in spec.storage]
    return any(path == p or path.startswith(p + "/") for p in mounts)


def check_spec(spec: Any, policy: HostPaths) -> list[str]:
    """Every host-path problem of ``spec`` (a ServiceSpec), one ``field: reason`` line each
    (``oss://`` is not one: it maps into the local bucket, which confines it itself)."""
    errors: list[str] = []

    def check(url: str, where: str, *, git: bool = False) -> None:
        try:
            policy.local(url, where, git=git)
        except MountError as exc:
            errors.append(exc.message)

    for i, m in enumerate(spec.storage):
        if m.oss is not None:
            check(m.oss.path, _field(spec, i))
        elif m.git is not None:
            check(m.git.repo, f"storage[{i}].git.repo", git=True)
        elif m.nfs is not None:
            try:
                policy.nfs_dir(m.nfs, f"storage[{i}].nfs")
            except MountError as exc:
                errors.append(exc.message)
    if spec.warm_up_data_path:
        check(spec.warm_up_data_path, "warm_up_data_path")
    for n, c in enumerate(spec.containers):
        req = c.prepare.pythonRequirementsPath if c.prepare is not None else None
        if req and not (req.startswith("/") and _inside_mount(posixpath.normpath(req), spec)):
            check(req, f"containers[{n}].prepare.pythonRequirementsPath")
    return errors


def check_request_files(policy: HostPaths, files: Mapping[str, str | None]) -> list[str]:
    """Every problem of the host files a request names outside any spec (a batch job's ``input``,
    ``output`` and ``errors``; a stress test's ``data.path``), ``{field: url}`` (None: not given):
    the same rule as a spec's, one ``field: reason`` line each. The server reads and writes these
    files as itself, so they obey the folders the operator allowed too; a relative path is refused
    (it would resolve against the server's working directory; ``openeas batch`` makes its paths
    absolute)."""
    errors: list[str] = []
    for where, url in files.items():
        if url is None:
            continue
        try:
            policy.local(url, where, to=REQUESTS)
        except MountError as exc:
            errors.append(exc.message)
    return errors
