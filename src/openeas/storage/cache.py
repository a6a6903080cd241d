"""The node cache: object storage (any fsspec URL) copied once per node, by content.

``materialize(url)`` lists the source, derives a content key from the listing and copies the
files into ``<root>/objects/<key>/`` unless that directory is already there. The second replica
(or the second start) on a node with unchanged content is a cache hit and copies nothing; the
returned :class:`Materialized` carries hit/miss, bytes and seconds for the replica's cold-start
"Fetching" phase.

The key is the sha256 of the sorted listing: for each file its path relative to the source, its
size, and a checksum when the filesystem lists one cheaply (ETag, md5, crc…). When a file has
none (local files, memory://) its modification time stands in, and the source URL is added to
the key, so two different folders never share an entry by accident.

A copy is made in a temporary directory next to the final one and renamed into place, under an
exclusive ``flock`` on ``<root>/locks/<key>.lock``: a reader never sees half a copy and two
concurrent materializations of one key copy once.

Modes: the cache keeps the source's restrictions, never loosens them. Every file and folder of a
local source keeps its mode without the write bits (a 0600 file in a 0700 folder becomes 0400 in
0500); a source that lists no modes (object storage) gives 0444 files in 0555 folders. With an
``owner`` (replicas running as users of their own, :mod:`openeas.runtime.identity`) the cache is
that user's: its root is ``<root>/u<uid>`` and every entry is handed to the user, owner-only,
before it is renamed into place, so no other replica's user can read it.

Security: a listed path that would land outside the cache entry (absolute, with ``..``, or a
symlink of a local source that points outside the source) is refused with a MountError naming it.
In a local source folder, a symlink to a file inside it is copied as that file and a symlink to
a folder inside it is kept as a relative symlink; a broken symlink is an error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import posixpath
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from openeas.errors import MountError
from openeas.runtime.identity import ReplicaUser, hand_over

# Keys under which filesystems report a content checksum in ``info`` (s3fs, gcsfs, ossfs, adlfs…).
CHECKSUM_KEYS = ("ETag", "etag", "md5", "md5Hash", "content_md5", "ContentMD5", "crc32c", "checksum")
CHUNK = 1 << 20


@dataclass(frozen=True)
class Materialized:
    """The result of one materialize call."""

    url: str
    key: str  # sha256 hex of the listing
    path: Path  # the local directory holding the content (``<root>/objects/<key>``)
    hit: bool  # True: already cached, nothing copied
    files: int
    bytes_copied: int  # 0 on a hit
    seconds: float  # wall time of listing + copy


@dataclass(frozen=True)
class _Entry:
    rel: str  # relative posix path inside the entry
    src: str  # the path in the source filesystem
    size: int
    stamp: str  # checksum (c:…) or modification time (t:…)
    link: str | None = None  # a relative symlink target (a local folder linking inside itself)
    mode: int | None = None  # the local source file's permission bits (None: not known)


def _stamp(info: dict[str, Any]) -> tuple[str, bool]:
    """``(stamp, is_checksum)`` for one listed file."""
    for k in CHECKSUM_KEYS:
        v = info.get(k)
        if v:
            return f"c:{str(v).strip(chr(34))}", True
    for k in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        v = info.get(k)
        if v is None:
            continue
        if isinstance(v, dt.datetime):
            v = v.timestamp()
        return f"t:{v}", False
    return "t:?", False


def _check_rel(rel: str, where: str) -> str:
    """``rel`` if it stays inside the entry, else a MountError naming it."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel or ".." in parts:
        raise MountError(f"{where}: path {rel!r} escapes the mount")
    clean = posixpath.normpath(rel)
    if clean in (".", "") or clean.startswith("../"):
        raise MountError(f"{where}: path {rel!r} escapes the mount")
    return clean


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _local_entry(src: str, rel: str, real_root: str, is_dir: bool, where: str) -> _Entry:
    """One file of a local source; symlinks are resolved and must stay inside the source.

    A link to a file inside is copied as that file; a link to a folder inside becomes a relative
    link in the cache (its files are copied under their own names). A single-file URL names
    what to copy, so following its link anywhere is the intent.
    """
    real = os.path.realpath(src)
    if is_dir and not _inside(real, real_root):
        raise MountError(
            f"{where}: path {rel!r} escapes the mount (a symlink to {real!r}, outside {real_root!r})"
        )
    if os.path.isdir(real):
        if not is_dir:  # pragma: no cover - fs.isdir() said it is a file
            raise MountError(f"{where}: path {rel!r} is not a file")
        here = os.path.join(real_root, os.path.dirname(rel))
        return _Entry(rel, src, 0, "l:", link=os.path.relpath(real, here))
    if not os.path.exists(real):
        raise MountError(f"{where}: path {rel!r} is a broken symlink")
    if not os.path.isfile(real):
        raise MountError(f"{where}: path {rel!r} is not a regular file")
    st = os.stat(real)
    return _Entry(rel, src, st.st_size, f"t:{st.st_mtime_ns}", mode=stat.S_IMODE(st.st_mode))


class NodeCache:
    """A content-addressed cache of object storage under ``root`` (see the module docstring)."""

    def __init__(self, root: Path | str, *, owner: ReplicaUser | None = None) -> None:
        self.root = Path(root).absolute()
        self.objects = self.root / "objects"
        self.locks = self.root / "locks"
        self.owner = owner  # every entry is handed to this user, owner-only (None: kept as copied)

    def for_owner(self, owner: ReplicaUser) -> NodeCache:
        """The cache of one replica user: ``<root>/u<uid>``, its entries that user's alone."""
        return NodeCache(self.root / f"u{owner.uid}", owner=owner)

    # -- listing --------------------------------------------------------------------------

    def _list(self, url: str, where: str) -> tuple[fsspec.AbstractFileSystem, str, list[_Entry], bool]:
        """``(fs, source id, entries, all entries have a checksum)``."""
        try:
            fs, path = url_to_fs(url)
        except Exception as e:  # any backend's failure (import, URL, connection) is the mount's
            raise MountError(f"{where}: cannot open {url!r}: {type(e).__name__}: {e}") from e
        try:
            if not fs.exists(path):
                raise MountError(f"{where}: {url!r} does not exist")
            local = isinstance(fs, LocalFileSystem)
            is_dir = fs.isdir(path)
            if is_dir:
                root = path.rstrip("/") or "/"
                items = sorted(fs.find(root, withdirs=False, detail=True).items())
            else:  # a single file: the entry is a directory holding just that file
                root = posixpath.dirname(path.rstrip("/"))
                items = [(path, fs.info(path))]
        except MountError:
            raise
        except Exception as e:  # OSError, or a backend's own error type
            raise MountError(f"{where}: cannot list {url!r}: {type(e).__name__}: {e}") from e
        entries: list[_Entry] = []
        real_root = os.path.realpath(root) if local else ""
        for src, info in items:
            src = src.rstrip("/")
            if not _inside(src, root) or src == root:
                raise MountError(f"{where}: path {src!r} escapes the mount")
            rel = _check_rel(src[len(root) :].lstrip("/"), where)
            if local:
                entries.append(_local_entry(src, rel, real_root, is_dir, where))
            elif info.get("type", "file") == "file":
                stamp, _ = _stamp(info)
                entries.append(_Entry(rel, src, int(info.get("size") or 0), stamp))
        all_checksums = all(e.stamp.startswith("c:") for e in entries)
        return fs, fs.unstrip_protocol(path), entries, all_checksums

    @staticmethod
    def _key(source: str, entries: list[_Entry], all_checksums: bool) -> str:
        h = hashlib.sha256()
        if not all_checksums:
            h.update(json.dumps({"source": source}).encode())
        for e in entries:
            h.update(json.dumps([e.rel, e.size, e.stamp, e.link]).encode())
            h.update(b"\n")
        return h.hexdigest()

    # -- copy -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        self.locks.mkdir(parents=True, exist_ok=True)
        with open(self.locks / f"{key}.lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    @staticmethod
    def _copy(fs: fsspec.AbstractFileSystem, entries: list[_Entry], dest: Path, where: str) -> int:
        """Copy ``entries`` into ``dest``; files take their source's mode less the write bits."""
        copied = 0
        real_dest = os.path.realpath(dest)
        for e in entries:
            target = dest / e.rel
            # Belt and braces after _check_rel: the resolved target must stay inside dest.
            if not _inside(os.path.realpath(target), real_dest):
                raise MountError(f"{where}: path {e.rel!r} escapes the mount")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                if e.link is not None:
                    os.symlink(e.link, target)
                    continue
                with fs.open(e.src, "rb") as src, open(target, "xb") as out:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
                        copied += len(chunk)
                os.chmod(target, (0o444 if e.mode is None else e.mode) & 0o555)
            except OSError as exc:
                raise MountError(f"{where}: cannot copy {e.rel!r}: {exc}") from exc
        return copied

    def materialize(self, url: str, *, where: str = "source") -> Materialized:
        """Make the content at ``url`` available locally; see the module docstring.

        ``where`` prefixes error messages (e.g. ``storage[0].oss.path``).
        """
        t0 = time.monotonic()
        fs, source, entries, all_checksums = self._list(url, where)
        key = self._key(source, entries, all_checksums)
        final = self.objects / key
        n = len(entries)
        if final.is_dir():
            return Materialized(url, key, final, True, n, 0, time.monotonic() - t0)
        self.objects.mkdir(parents=True, exist_ok=True)
        with self._lock(key):
            if final.is_dir():  # another process copied it while we waited for the lock
                return Materialized(url, key, final, True, n, 0, time.monotonic() - t0)
            # Only the lock holder writes .tmp dirs of this key: any left are from a crashed copy.
            for stale in self.objects.glob(f".tmp-{key[:16]}-*"):
                _rmtree(stale)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:16]}-", dir=self.objects))
            try:
                copied = self._copy(fs, entries, tmp, where)
                _restrict_dirs(tmp, entries, fs if isinstance(fs, LocalFileSystem) else None, url)
                if self.owner is not None:
                    hand_over(tmp, self.owner)
                os.rename(tmp, final)
            except BaseException:
                _rmtree(tmp)
                raise
        return Materialized(url, key, final, False, n, copied, time.monotonic() - t0)

    def evict(self, key: str) -> None:
        """Remove one cache entry (for cache GC); a no-op if it is not there."""
        with self._lock(key):
            _rmtree(self.objects / key)


def _restrict_dirs(
    dest: Path, entries: list[_Entry], local: LocalFileSystem | None, url: str
) -> None:
    """Each folder of the entry takes its source folder's mode less the write bits (0555 when the
    source lists no modes); the entry's own folder takes the source folder's."""
    src_root = None
    if local is not None:
        first = next((e for e in entries), None)
        if first is not None:
            src_root = first.src[: len(first.src) - len(first.rel)].rstrip("/") or "/"
    rels = {posixpath.dirname(e.rel) for e in entries}
    folders = {""} | {"/".join(r.split("/")[: i + 1]) for r in rels if r for i in range(r.count("/") + 1)}
    for rel in sorted(folders, key=len, reverse=True):  # the deepest first: parents stay writable
        mode = 0o555
        if src_root is not None:
            with contextlib.suppress(OSError):
                mode = stat.S_IMODE(os.stat(os.path.join(src_root, rel) if rel else src_root).st_mode)
                mode &= 0o555
        os.chmod(dest / rel if rel else dest, mode | 0o500)


def _rmtree(path: Path) -> None:
    """Remove a cache entry: its folders are read-only, so each is made writable on the way."""

    def retry(func: Callable[..., Any], p: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=retry)
