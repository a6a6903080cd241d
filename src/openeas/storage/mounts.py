"""A spec's ``storage[]`` → the local directory that backs each mount on this node.

- ``oss``: the content at ``oss.path`` (any fsspec URL: ``oss://``, ``s3://``, ``file://``, a
  local path) is materialized into the node cache (:class:`~openeas.storage.cache.NodeCache`);
  the mount is the cache entry, shared read-only by every replica on the node.
- ``empty_dir``: a fresh, empty directory under the replica's work directory
  (``<workdir>/mounts/<index>``), emptied again when the replica is prepared again.
- ``nfs``: OpenEAS does not mount NFS itself. The export is expected to be mounted on the node
  already, at ``nfs.path`` (EAS: ``{"server": "host", "path": "/export"}``; a ``server`` of the
  form ``host:/export`` without ``path`` gives ``/export``), and that local directory must exist.

The command, script and env of the replica are then rewritten from ``mount_path`` to these
directories by :func:`openeas.runtime.launch.build_launch`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from openeas.errors import MountError
from openeas.spec.models import ServiceSpec, StorageMount
from openeas.storage.cache import NodeCache
from openeas.storage.gitrepo import clone_once

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


def _prepare_one(i: int, m: StorageMount, cache: NodeCache, workdir: Path) -> MountFetch:
    where = f"storage[{i}]"
    mount_path = m.mount_path.rstrip("/")
    if not mount_path:
        raise MountError(f"{where}.mount_path: cannot mount over '/'")
    if m.oss is not None:
        got = cache.materialize(m.oss.path, where=f"{where}.oss.path")
        return MountFetch(
            mount_path, "oss", str(got.path), got.hit, got.bytes_copied, got.seconds, key=got.key
        )
    if m.git is not None:
        path, hit, seconds = clone_once(
            cache.root, m.git.repo, m.git.branch, m.git.commit, where=f"{where}.git"
        )
        return MountFetch(mount_path, "git", str(path), hit, 0, seconds)
    if m.cache is not None:  # resolved by prepare_mounts once every other mount is there
        return MountFetch(mount_path, "cache", "", True, 0, 0.0)
    if m.empty_dir is not None:
        local = workdir.absolute() / "mounts" / str(i)
        shutil.rmtree(local, ignore_errors=True)
        local.mkdir(parents=True)
        return MountFetch(mount_path, "empty_dir", str(local), True, 0, 0.0)
    assert m.nfs is not None  # the spec model guarantees exactly one source
    local_nfs = nfs_local_path(m.nfs, where)
    if not os.path.isdir(local_nfs):
        raise MountError(
            f"{where}.nfs.path: {local_nfs!r} does not exist on this node (mount the export first)"
        )
    return MountFetch(mount_path, "nfs", local_nfs, True, 0, 0.0)


def prepare_mounts(spec: ServiceSpec, cache: NodeCache, *, workdir: Path) -> MountPlan:
    """Materialize every ``storage[]`` entry of ``spec`` for one replica working in ``workdir``."""
    fetches = [_prepare_one(i, m, cache, workdir) for i, m in enumerate(spec.storage)]
    local = {f.mount_path: f.local_dir for f in fetches if f.kind != "cache"}
    for i, m in enumerate(spec.storage):
        if m.cache is not None:
            source = m.cache.path.rstrip("/")
            if source not in local:
                raise MountError(
                    f"storage[{i}].cache.path: no other storage entry is mounted at {m.cache.path!r}"
                )
            fetches[i] = replace(fetches[i], local_dir=local[source])
    return MountPlan(paths={f.mount_path: f.local_dir for f in fetches}, fetches=fetches)
