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
exclusive ``flock`` on ``<root>/locks/<key>.lock``: a reader never sees half a copy, and starts
that want one key at once copy it once (single-flight: the others wait for the lock and find the
entry; :attr:`Materialized.shared`).

Integrity: each copied file must have the size the listing gave (a source that ends early, a torn
download, is refused and its copy removed), and the md5 the source lists when its checksum is one
(an S3/OSS ETag of a single-part upload); the sha256 of every file is recorded. The record
``<root>/meta/<key>.json`` (:mod:`openeas.storage.cache_index`) is written before the entry is
renamed into place; a hit checks that the record is there and that every file still has its
recorded size, else the entry is torn: it is removed and fetched again. So a torn download is
never served.

Bounds: :meth:`NodeCache.enforce` evicts least recently used entries no running replica uses
until the node's cache fits its limit (:func:`openeas.storage.cache_index.plan_eviction`); the
reconciler calls it after a copy.

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
from openeas.storage.cache_index import (
    META_SUFFIX,
    CacheStats,
    EntryInfo,
    Eviction,
    plan_eviction,
    plan_prune,
    scan,
    touch,
)

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
    shared: bool = False  # a hit that waited for a concurrent start's copy (single-flight)


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

    def __init__(
        self,
        root: Path | str,
        *,
        owner: ReplicaUser | None = None,
        limit_bytes: int | None = None,
        stats: CacheStats | None = None,
    ) -> None:
        self.root = Path(root).absolute()
        self.objects = self.root / "objects"
        self.locks = self.root / "locks"
        self.meta = self.root / "meta"
        self.owner = owner  # every entry is handed to this user, owner-only (None: kept as copied)
        self.limit_bytes = limit_bytes  # the node's bound on all entries, bytes (None: unbounded)
        self.stats = stats or CacheStats()  # shared with every owner's cache of the node

    def for_owner(self, owner: ReplicaUser) -> NodeCache:
        """The cache of one replica user: ``<root>/u<uid>``, its entries that user's alone."""
        return NodeCache(self.root / f"u{owner.uid}", owner=owner, stats=self.stats)

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
    def _copy(
        fs: fsspec.AbstractFileSystem,
        entries: list[_Entry],
        dest: Path,
        where: str,
        digests: dict[str, dict[str, Any]],
    ) -> int:
        """Copy ``entries`` into ``dest``; files take their source's mode less the write bits.
        Each file's size and sha256 go into ``digests``; a size or md5 unlike the listing's is a
        MountError (see the module docstring)."""
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
                sha, md5, n = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
                with fs.open(e.src, "rb") as src, open(target, "xb") as out:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
                        sha.update(chunk)
                        md5.update(chunk)
                        n += len(chunk)
                copied += n
                os.chmod(target, (0o444 if e.mode is None else e.mode) & 0o555)
            except OSError as exc:
                raise MountError(f"{where}: cannot copy {e.rel!r}: {exc}") from exc
            _check_copy(e, n, md5.hexdigest(), where)
            digests[e.rel] = {"size": n, "sha256": sha.hexdigest()}
        return copied

    def materialize(self, url: str, *, where: str = "source", prefetch: bool = False) -> Materialized:
        """Make the content at ``url`` available locally; see the module docstring.

        ``where`` prefixes error messages (e.g. ``storage[0].oss.path``); ``prefetch``: a copy made
        ahead of any replica (counted apart from the replicas' hits and misses).
        """
        t0 = time.monotonic()
        fs, source, entries, all_checksums = self._list(url, where)
        key = self._key(source, entries, all_checksums)
        final = self.objects / key
        n = len(entries)
        if final.is_dir() and self._intact(key):
            self._count(hit=True, prefetch=prefetch)
            return Materialized(url, key, final, True, n, 0, time.monotonic() - t0)
        self.objects.mkdir(parents=True, exist_ok=True)
        self.meta.mkdir(parents=True, exist_ok=True)
        with self._lock(key):
            if final.is_dir() and self._intact(key):  # another start copied it while we waited
                self._count(hit=True, prefetch=prefetch, shared=True)
                return Materialized(url, key, final, True, n, 0, time.monotonic() - t0, shared=True)
            if os.path.lexists(final):  # torn: a record missing or a file's size changed
                _rmtree(final)
                self.stats.add(torn=1)
            # Only the lock holder writes .tmp dirs of this key: any left are from a crashed copy.
            for stale in self.objects.glob(f".tmp-{key[:16]}-*"):
                _rmtree(stale)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:16]}-", dir=self.objects))
            try:
                digests: dict[str, dict[str, Any]] = {}
                copied = self._copy(fs, entries, tmp, where, digests)
                _restrict_dirs(tmp, entries, fs if isinstance(fs, LocalFileSystem) else None, url)
                if self.owner is not None:
                    hand_over(tmp, self.owner)
                self._write_meta(key, url, copied, digests)
                os.rename(tmp, final)
            except BaseException:
                _rmtree(tmp)
                with contextlib.suppress(OSError):
                    (self.meta / f"{key}{META_SUFFIX}").unlink()
                raise
        self._count(hit=False, prefetch=prefetch, copied=copied)
        return Materialized(url, key, final, False, n, copied, time.monotonic() - t0)

    def _count(self, *, hit: bool, prefetch: bool, shared: bool = False, copied: int = 0) -> None:
        if prefetch:
            self.stats.add(prefetches=0 if hit else 1, bytes_fetched=copied)
        elif hit:
            self.stats.add(hits=1, shared=int(shared))
        else:
            self.stats.add(misses=1, bytes_fetched=copied)
        if not hit:
            self.stats.dirty = True

    def _write_meta(self, key: str, url: str, copied: int, digests: dict[str, dict[str, Any]]) -> None:
        record = {"url": url, "key": key, "bytes": copied, "created": time.time(), "files": digests}
        tmp = self.meta / f".{key}.tmp"
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.meta / f"{key}{META_SUFFIX}")

    def _intact(self, key: str) -> bool:
        """The entry has its record and every recorded file its recorded size (touched: used now)."""
        meta = self.meta / f"{key}{META_SUFFIX}"
        try:
            files = json.loads(meta.read_text(encoding="utf-8"))["files"]
            entry = self.objects / key
            for rel, d in files.items():
                if os.stat(entry / rel).st_size != d["size"]:
                    return False
        except (OSError, ValueError, KeyError, TypeError):
            return False
        touch(meta)
        return True

    def evict(self, key: str) -> None:
        """Remove one cache entry and its record; a no-op if it is not there."""
        with self._lock(key):
            _rmtree(self.objects / key)
            with contextlib.suppress(OSError):
                (self.meta / f"{key}{META_SUFFIX}").unlink()

    # -- the node's view (called on the node's cache, not an owner's) -------------------------

    def entries(self) -> list[EntryInfo]:
        """Every complete entry on the node: this root's and each service uid's."""
        return scan(self.root)

    def _remove(self, chosen: list[EntryInfo]) -> None:
        for e in chosen:
            NodeCache(e.root, stats=self.stats).evict(e.key)
        self.stats.add(evictions=len(chosen))

    def enforce(self, in_use: set[str], now: float) -> Eviction:
        """Evict least recently used entries no replica uses until the node's cache fits its limit."""
        self.stats.dirty = False
        plan = plan_eviction(self.entries(), in_use, self.limit_bytes, now)
        self._remove(list(plan.evict))
        return plan

    def prune(self, in_use: set[str], now: float) -> list[EntryInfo]:
        """Evict every entry no running replica uses (``openeas cache prune``); what went."""
        chosen = plan_prune(self.entries(), in_use, now)
        self._remove(chosen)
        return chosen


def _check_copy(e: _Entry, size: int, md5: str, where: str) -> None:
    """A MountError when a copied file is not what the listing promised (see the module docstring)."""
    if size != e.size:
        raise MountError(
            f"{where}: {e.rel!r} is torn: copied {size} bytes, the source lists {e.size}; "
            "nothing was cached, the next start fetches it again"
        )
    etag = e.stamp[2:].lower() if e.stamp.startswith("c:") else ""
    if len(etag) == 32 and all(c in "0123456789abcdef" for c in etag) and etag != md5:
        raise MountError(
            f"{where}: {e.rel!r} does not match its checksum: md5 {md5}, the source lists {etag}; "
            "nothing was cached"
        )


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
