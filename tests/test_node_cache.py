"""The node cache, bounded and shared (issue 23): LRU eviction of unused entries, single-flight,
integrity (a torn download is never served). Real files, fsspec's memory:// and hand-written fake
filesystems for sources that misbehave; no sockets."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from typer.testing import CliRunner

from openeas.cli.cache import size
from openeas.cli.main import app
from openeas.errors import MountError
from openeas.storage import NodeCache
from openeas.storage.cache_index import (
    DEFAULT_LIMIT_BYTES,
    EVICTION_GRACE_S,
    EntryInfo,
    parse_limit,
    plan_eviction,
    plan_prune,
)

GIB = 1024**3
NOW = 10_000.0


def entry(key: str, size: int, last_used: float, root: str = "/c") -> EntryInfo:
    return EntryInfo(Path(root), key, f"file:///{key}", size, 1, last_used, last_used)


@pytest.mark.parametrize(
    ("entries", "in_use", "limit", "evicted", "over_by"),
    [
        pytest.param([entry("a", 50, 1), entry("b", 50, 2)], set(), None, [], 0, id="unbounded"),
        pytest.param([entry("a", 50, 1), entry("b", 50, 2)], set(), 100, [], 0, id="fits-exactly"),
        # 150 bytes, limit 100: the least recently used (a, used at 1) goes first → 100 left.
        pytest.param(
            [entry("b", 50, 2), entry("a", 50, 1), entry("c", 50, 3)], set(), 100, ["a"], 0, id="lru-first"
        ),
        # a is in use: b (next oldest) goes instead.
        pytest.param(
            [entry("a", 50, 1), entry("b", 50, 2), entry("c", 50, 3)], {"a"}, 100, ["b"], 0, id="in-use-kept"
        ),
        # limit 10: b and c go (100 bytes), a (in use, 50) stays: 40 over the limit.
        pytest.param(
            [entry("a", 50, 1), entry("b", 50, 2), entry("c", 50, 3)],
            {"a"},
            10,
            ["b", "c"],
            40,
            id="over-by-in-use",
        ),
        # c was used 30 s ago (< 60 s grace): a replica may be starting on it, so it stays.
        pytest.param([entry("a", 50, 1), entry("c", 50, NOW - 30)], set(), 10, ["a"], 40, id="grace-kept"),
    ],
)
def test_plan_eviction(
    entries: list[EntryInfo], in_use: set[str], limit: int | None, evicted: list[str], over_by: int
) -> None:
    plan = plan_eviction(entries, in_use, limit, NOW)
    assert [e.key for e in plan.evict] == evicted
    assert plan.over_by == over_by
    assert plan.total_bytes == sum(e.bytes for e in entries)


def test_plan_prune_keeps_in_use_and_recent() -> None:
    got = plan_prune([entry("a", 1, 1), entry("b", 1, 2), entry("c", 1, NOW - 1)], {"a"}, NOW)
    assert [e.key for e in got] == ["b"]


def test_documented_defaults() -> None:
    # docs/cold-start.md: a node's cache is bounded at 20 GiB; an entry used in the last 60 s stays.
    assert DEFAULT_LIMIT_BYTES == 20 * GIB
    assert EVICTION_GRACE_S == 60.0


def _source(root: Path, name: str, size: int) -> Path:
    src = root / "bucket" / name
    src.mkdir(parents=True)
    (src / "w.bin").write_bytes(os.urandom(size))
    return src


def _age(cache: NodeCache, key: str, seconds: float) -> None:
    meta = cache.meta / f"{key}.json"
    t = time.time() - seconds
    os.utime(meta, (t, t))


def test_lru_eviction_spares_entries_in_use(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "cache", limit_bytes=2500)
    got = {n: cache.materialize(str(_source(tmp_path, n, 1000))) for n in ("a", "b", "c")}
    for age, n in ((300, "a"), (200, "b"), (100, "c")):  # a is the least recently used
        _age(cache, got[n].key, age)
    assert cache.stats.dirty
    # 3000 bytes > 2500: a is used by a running replica, so b (the next oldest) goes.
    plan = cache.enforce({got["a"].key}, time.time())
    assert [e.key for e in plan.evict] == [got["b"].key]
    assert not got["b"].path.exists() and got["a"].path.is_dir() and got["c"].path.is_dir()
    assert {e.key for e in cache.entries()} == {got["a"].key, got["c"].key}
    assert cache.stats.evictions == 1 and not cache.stats.dirty
    # b again: a miss, copied again.
    assert not cache.materialize(str(tmp_path / "bucket" / "b")).hit


def test_enforce_spans_every_service_uids_cache(tmp_path: Path) -> None:
    node = NodeCache(tmp_path / "cache", limit_bytes=1500)
    svc = NodeCache(node.root / "u1879048193", stats=node.stats)  # a service's cache (for_owner's root)
    a = svc.materialize(str(_source(tmp_path, "a", 1000)))
    b = node.materialize(str(_source(tmp_path, "b", 1000)))
    _age(svc, a.key, 200)
    _age(node, b.key, 100)
    assert [(e.owner, e.key) for e in node.entries()] == [("-", b.key), ("u1879048193", a.key)]
    plan = node.enforce(set(), time.time())
    assert [e.key for e in plan.evict] == [a.key] and not a.path.exists()


def test_prune_removes_every_unused_entry(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "cache")
    a = cache.materialize(str(_source(tmp_path, "a", 10)))
    b = cache.materialize(str(_source(tmp_path, "b", 10)))
    for m in (a, b):
        _age(cache, m.key, 3600)
    gone = cache.prune({a.key}, time.time())
    assert [e.key for e in gone] == [b.key]
    assert a.path.is_dir() and not b.path.exists()


def test_ten_starts_at_once_fetch_once(tmp_path: Path) -> None:
    src = _source(tmp_path, "model", 4 * 1024 * 1024)
    cache = NodeCache(tmp_path / "cache")
    barrier = threading.Barrier(10)

    def start(_: int) -> Any:
        barrier.wait()
        return cache.materialize(str(src))

    with ThreadPoolExecutor(10) as pool:
        got = list(pool.map(start, range(10)))
    assert sum(not g.hit for g in got) == 1  # one fetch
    assert sum(g.bytes_copied for g in got) == 4 * 1024 * 1024
    assert len({g.path for g in got}) == 1
    s = cache.stats
    assert (s.misses, s.hits) == (1, 9) and s.shared == sum(g.shared for g in got)
    assert s.hit_ratio == 0.9


class TornFS(MemoryFileSystem):
    """A source whose reads end early (a connection dropped mid-download), or whose listing
    reports an ETag (md5) of other content."""

    protocol = "tornmem"
    store: dict[str, Any] = {}
    pseudo_dirs = [""]
    cut: int | None = None  # bytes a read returns at most
    etag: str | None = None

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return str(super()._strip_protocol(path.replace("tornmem://", "memory://", 1)))

    def find(self, path: str, *args: Any, **kwargs: Any) -> Any:
        out = super().find(path, *args, **kwargs)
        if not self.etag or not isinstance(out, dict):
            return out
        return {k: {**d, "ETag": f'"{self.etag}"'} for k, d in out.items()}

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        f = super()._open(path, mode, **kwargs)
        if self.cut is None:
            return f
        data = f.read()[: self.cut]
        return fsspec.implementations.memory.MemoryFile(self, path, data)


fsspec.register_implementation("tornmem", TornFS, clobber=True)


@pytest.fixture
def torn() -> Iterator[TornFS]:
    fs = TornFS()
    fs.store.clear()
    yield fs
    fs.store.clear()
    TornFS.cut = None
    TornFS.etag = None


@pytest.mark.parametrize(
    ("cut", "etag", "message"),
    [
        pytest.param(100, None, "is torn: copied 100 bytes, the source lists 1000", id="short-read"),
        pytest.param(None, "0" * 32, "does not match its checksum", id="md5-mismatch"),
    ],
)
def test_a_torn_download_is_never_served(
    tmp_path: Path, torn: TornFS, cut: int | None, etag: str | None, message: str
) -> None:
    name = uuid.uuid4().hex
    data = os.urandom(1000)
    torn.pipe(f"/{name}/w.bin", data)
    TornFS.cut, TornFS.etag = cut, etag
    cache = NodeCache(tmp_path / "cache")
    with pytest.raises(MountError) as err:
        cache.materialize(f"tornmem://{name}", where="storage[0].oss.path")
    assert "storage[0].oss.path: 'w.bin'" in str(err.value) and message in str(err.value)
    assert cache.entries() == [] and list(cache.objects.iterdir()) == []  # nothing kept
    # The source heals: fetched in full, its md5 checked when listed.
    TornFS.cut, TornFS.etag = None, hashlib.md5(data).hexdigest()
    got = cache.materialize(f"tornmem://{name}")
    assert not got.hit and (got.path / "w.bin").read_bytes() == data


@pytest.mark.parametrize("damage", ["truncated-file", "missing-record"])
def test_a_damaged_entry_is_fetched_again(tmp_path: Path, damage: str) -> None:
    src = _source(tmp_path, "m", 1000)
    cache = NodeCache(tmp_path / "cache")
    first = cache.materialize(str(src))
    if damage == "truncated-file":
        f = first.path / "w.bin"
        os.chmod(f, 0o600)
        f.write_bytes(b"x" * 10)
    else:  # a crash between the rename and a record (an entry of an older server)
        (cache.meta / f"{first.key}.json").unlink()
    again = cache.materialize(str(src))
    assert not again.hit and again.bytes_copied == 1000
    assert (again.path / "w.bin").read_bytes() == (src / "w.bin").read_bytes()
    assert cache.stats.torn == 1


def test_record_holds_size_and_sha256(tmp_path: Path) -> None:
    src = _source(tmp_path, "m", 1234)
    cache = NodeCache(tmp_path / "cache")
    got = cache.materialize(str(src))
    [info] = cache.entries()
    assert (info.key, info.bytes, info.files) == (got.key, 1234, 1)
    record = json.loads((cache.meta / f"{got.key}.json").read_text())
    digest = hashlib.sha256((src / "w.bin").read_bytes()).hexdigest()
    assert record["files"] == {"w.bin": {"size": 1234, "sha256": digest}}
    assert cache.materialize(str(src)).hit and cache.stats.hit_ratio == 0.5


def test_prefetch_counts_apart(tmp_path: Path) -> None:
    src = _source(tmp_path, "m", 100)
    cache = NodeCache(tmp_path / "cache")
    assert not cache.materialize(str(src), prefetch=True).hit
    assert cache.materialize(str(src)).hit
    s = cache.stats
    assert (s.prefetches, s.misses, s.hits, s.hit_ratio) == (1, 0, 1, 1.0)


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        pytest.param(None, 20 * GIB, id="default"),
        pytest.param("20GiB", 20 * GIB, id="gib"),
        pytest.param("500MB", 500 * 10**6, id="mb"),
        pytest.param("1048576", 1048576, id="bytes"),
        pytest.param("none", None, id="unbounded"),
    ],
)
def test_parse_limit(text: str | None, limit: int | None) -> None:
    assert parse_limit(text) == limit


def test_server_refuses_a_bad_cache_limit(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["server", "--data-dir", str(tmp_path), "--cache-limit", "lots"])
    assert r.exit_code == 2
    assert "--cache-limit: 'lots' is not a size (write 20GiB, 500MB, a byte count, or none)" in r.output


@pytest.mark.parametrize(
    ("n", "text"),
    [pytest.param(0, "0 B", id="zero"), pytest.param(1536, "1.5 KiB", id="kib"),
     pytest.param(250 * 1024**2, "250.0 MiB", id="mib"), pytest.param(None, "unbounded", id="none")],
)  # fmt: skip
def test_cli_sizes(n: int | None, text: str) -> None:
    assert size(n) == text
