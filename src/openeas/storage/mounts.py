"""A spec's ``storage[]`` → the local directory that backs each mount on this node.

- ``oss``: the content at ``oss.path`` (any fsspec URL: ``oss://``, ``s3://``, ``file://``, a
  local path) is materialized into the node cache (:class:`~openeas.storage.cache.NodeCache`);
  the mount is the cache entry, shared read-only by every replica on the node.
- ``empty_dir``: a fresh, empty directory under the replica's work directory
  (``<workdir>/mounts/<index>``), emptied again when the replica is prepared again.
- ``nfs``: OpenEAS does not mount NFS itself. The export is mounted on the node by the operator,
  who tells the server where (``--nfs-export SERVER:/EXPORT=DIR``); without such a mapping
  ``nfs.path`` is read as a local folder, allowed only inside ``--allow-host-path`` folders
  (:mod:`openeas.storage.hostpaths`). A ``server`` of the form ``host:/export`` without ``path``
  gives ``/export``. The local folder must exist.

With a :class:`~openeas.storage.hostpaths.HostPaths` (the server always passes its own), every
host path a spec names is checked again here, so a version stored before the rule is refused too.
- ``cache``: EAS's read-only memory cache of another mount (``cache.path`` names that mount's
  ``mount_path``, or a folder inside it). The node cache already keeps that content local, so the
  cache's ``mount_path`` is served by the same directory.
- ``git``: not cloned by OpenEAS yet; a spec with one is refused at start with what to do instead.

The command, script and env of the replica are then rewritten from ``mount_path`` to these
directories by :func:`openeas.runtime.launch.build_launch`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from openeas.errors import MountError
from openeas.spec.models import ServiceSpec, StorageMount
from openeas.storage.cache import NodeCache
from openeas.storage.gitrepo import clone_once
from openeas.storage.hostpaths import HostPaths

MountKind = Literal["oss", "nfs", "empty_dir", "git", "cache"]


@dataclass(frozen=True)
class MountFetch:
    """What preparing one mount cost: feeds the replica's cold-start "Fetching" phase."""

    mount_path: str
    kind: MountKind
    local_dir: str
    hit: bool  # oss: found in the node cache; nfs/empty_dir: always True (nothing fetched)
    bytes_copied: int
    seconds: float
    key: str | None = None  # oss: the node-cache key


@dataclass(frozen=True)
class MountPlan:
    paths: dict[str, str] = field(default_factory=dict)  # mount_path → local directory
    fetches: list[MountFetch] = field(default_factory=list)  # one per storage[] entry, in order

    @property
    def bytes_copied(self) -> int:
        return sum(f.bytes_copied for f in self.fetches)

    @property
    def seconds(self) -> float:
        return sum(f.seconds for f in self.fetches)

    @property
    def all_hits(self) -> bool:
        return all(f.hit for f in self.fetches)

    def summary(self) -> dict[str, Any]:
        """JSON-ready fetch statistics (the replica's cold-start "Fetching" phase)."""
        return {
            "cache_hit": self.all_hits,
            "bytes": self.bytes_copied,
            "seconds": round(self.seconds, 6),
            "mounts": [
                {
                    "mount_path": f.mount_path,
                    "kind": f.kind,
                    "cache_hit": f.hit,
                    "bytes": f.bytes_copied,
                    "seconds": round(f.seconds, 6),
                    **({"key": f.key} if f.key else {}),
                }
                for f in self.fetches
            ],
        }


def nfs_local_path(nfs: dict[str, object], where: str) -> str:
    """The local directory of an NFS mount (see the module docstring)."""
    path = nfs.get("path")
    if not path:
        server = str(nfs.get("server") or "")
        path = server.split(":", 1)[1] if ":" in server else ""
    if not path or not str(path).startswith("/"):
        raise MountError(
            f"{where}.nfs.path: an absolute local path is required (the NFS export mounted on the node)"
        )
    return str(path)


def _prepare_one(
    i: int, m: StorageMount, cache: NodeCache, workdir: Path, host_paths: HostPaths | None
) -> MountFetch:
    where = f"storage[{i}]"
    mount_path = m.mount_path.rstrip("/")
    if not mount_path:
        raise MountError(f"{where}.mount_path: cannot mount over '/'")
    if host_paths is not None and m.oss is not None:
        host_paths.local(m.oss.path, f"{where}.oss.path")
    if host_paths is not None and m.git is not None:
        host_paths.local(m.git.repo, f"{where}.git.repo", git=True)
    if m.oss is not None:
        got = cache.materialize(m.oss.path, where=f"{where}.oss.path")
        return MountFetch(
            mount_path, "oss", str(got.path), got.hit, got.bytes_copied, got.seconds, key=got.key
        )
    if m.git is not None:
        path, hit, seconds = clone_once(
            cache.root, m.git.repo, m.git.branch, m.git.commit, where=f"{where}.git", owner=cache.owner
        )
        return MountFetch(mount_path, "git", str(path), hit, 0, seconds)
    if m.empty_dir is not None:
        local = workdir.absolute() / "mounts" / str(i)
        shutil.rmtree(local, ignore_errors=True)
        local.mkdir(parents=True)
        return MountFetch(mount_path, "empty_dir", str(local), True, 0, 0.0)
    if m.git is not None:
        raise MountError(
            f"{where}.git: Git mounts are not cloned by OpenEAS yet: put a checkout of "
            f"{m.git.get('repo', 'the repository')!r} in object storage (or a local folder) "
            "and mount it with oss"
        )
    assert m.nfs is not None  # the spec model guarantees exactly one source
    local_nfs = host_paths.nfs_dir(m.nfs, f"{where}.nfs") if host_paths else nfs_local_path(m.nfs, where)
    if not os.path.isdir(local_nfs):
        raise MountError(
            f"{where}.nfs.path: {local_nfs!r} does not exist on this node (mount the export first)"
        )
    return MountFetch(mount_path, "nfs", local_nfs, True, 0, 0.0)


def _cached(i: int, m: StorageMount, ready: list[MountFetch]) -> MountFetch:
    """A ``cache`` entry: the directory of the mount whose ``mount_path`` holds ``cache.path``."""
    assert m.cache is not None
    wanted = m.cache.path.rstrip("/")
    for f in ready:
        if wanted == f.mount_path or wanted.startswith(f.mount_path + "/"):
            local = f.local_dir + wanted[len(f.mount_path) :]
            return MountFetch(m.mount_path.rstrip("/"), "cache", local, True, 0, 0.0)
    raise MountError(
        f"storage[{i}].cache.path: {wanted!r} is not inside another storage entry's mount_path; "
        "OpenEAS serves a cache of a mounted directory (oss, nfs) of the same spec"
    )


def prepare_mounts(
    spec: ServiceSpec, cache: NodeCache, *, workdir: Path, host_paths: HostPaths | None = None
) -> MountPlan:
    """Materialize every ``storage[]`` entry of ``spec`` for one replica working in ``workdir``;
    ``host_paths``: the host folders it may read (None: unchecked, for tests of the mounts alone)."""
    done: dict[int, MountFetch] = {}
    shadowed = spec.shadowed_mounts()  # a later entry at the same mount_path wins
    for i, m in enumerate(spec.storage):
        if m.cache is None and i not in shadowed:
            done[i] = _prepare_one(i, m, cache, workdir, host_paths)
    for i, m in enumerate(spec.storage):
        if m.cache is not None and i not in shadowed:
            done[i] = _cached(i, m, list(done.values()))
    fetches = [done[i] for i in sorted(done)]
    return MountPlan(paths={f.mount_path: f.local_dir for f in fetches}, fetches=fetches)
