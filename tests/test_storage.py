"""The node cache and mount preparation, against real local files and fsspec's memory://."""

from __future__ import annotations

import os
import stat
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec
import pytest

from openeas.errors import MountError
from openeas.spec.models import ServiceSpec
from openeas.storage import NodeCache, prepare_mounts
from openeas.storage.cache import _stamp


def make_source(root: Path) -> Path:
    src = root / "bucket" / "qwen"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')  # 8 bytes
    (src / "sub" / "weights.bin").write_bytes(b"\x00" * 1000)
    return src


def tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def cache(tmp_path: Path) -> NodeCache:
    return NodeCache(tmp_path / "cache")


@pytest.mark.parametrize("form", ["file-url", "plain-path", "relative-path"])
def test_materialize_then_hit(
    tmp_path: Path, cache: NodeCache, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_source(tmp_path)
    if form == "file-url":
        url = src.as_uri()
    elif form == "plain-path":
        url = str(src)
    else:
        monkeypatch.chdir(tmp_path)
        url = "./bucket/qwen"
    first = cache.materialize(url)
    assert not first.hit
    assert (first.files, first.bytes_copied) == (2, 1008)  # 8 + 1000 bytes
    assert first.path == cache.root / "objects" / first.key
    assert tree(first.path) == tree(src)
    mode = stat.S_IMODE(os.stat(first.path / "config.json").st_mode)
    assert mode == 0o444  # cache content is read-only

    second = cache.materialize(url)
    assert second.hit and second.bytes_copied == 0
    assert (second.key, second.path) == (first.key, first.path)
    assert [p.name for p in (cache.root / "objects").iterdir()] == [first.key]  # no temp dirs left


@pytest.mark.parametrize(
    "change",
    ["content-size", "same-size-content", "new-file", "renamed-file"],
)
def test_changed_content_gets_a_new_key(tmp_path: Path, cache: NodeCache, change: str) -> None:
    src = make_source(tmp_path)
    before = cache.materialize(src.as_uri())
    cfg = src / "config.json"
    if change == "content-size":
        cfg.write_text('{"a": 22}')
    elif change == "same-size-content":  # only the mtime tells: same name, same size
        st = cfg.stat()
        cfg.write_text('{"a": 2}')
        os.utime(cfg, (st.st_atime, st.st_mtime + 10))
    elif change == "new-file":
        (src / "extra.txt").write_text("x")
    else:
        cfg.rename(src / "config2.json")
    after = cache.materialize(src.as_uri())
    assert not after.hit and after.key != before.key
    assert tree(after.path) == tree(src)
    assert tree(before.path) != tree(after.path)  # the old entry is untouched


def test_single_file_url(tmp_path: Path, cache: NodeCache) -> None:
    src = make_source(tmp_path)
    got = cache.materialize((src / "config.json").as_uri())
    assert tree(got.path) == {"config.json": b'{"a": 1}'}


def test_memory_filesystem(cache: NodeCache) -> None:
    name = f"src-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    fs.pipe(f"/{name}/model/a.txt", b"hello")
    fs.pipe(f"/{name}/model/b/c.txt", b"world!")
    got = cache.materialize(f"memory://{name}/model")
    assert not got.hit and got.bytes_copied == 11
    assert tree(got.path) == {"a.txt": b"hello", "b/c.txt": b"world!"}
    assert cache.materialize(f"memory://{name}/model").hit


def test_symlink_inside_the_source_is_copied(tmp_path: Path, cache: NodeCache) -> None:
    src = make_source(tmp_path)
    (src / "link.json").symlink_to(src / "config.json")
    got = cache.materialize(str(src))
    assert (got.path / "link.json").read_bytes() == b'{"a": 1}'
    assert not (got.path / "link.json").is_symlink()


def test_symlinked_folder_inside_the_source_stays_a_relative_link(tmp_path: Path, cache: NodeCache) -> None:
    src = make_source(tmp_path)
    (src / "sub" / "up").symlink_to("..")  # a loop: must neither recurse nor escape
    (src / "alias").symlink_to(src / "sub")
    got = cache.materialize(str(src))
    assert os.readlink(got.path / "sub" / "up") == ".."
    assert os.readlink(got.path / "alias") == "sub"
    assert (got.path / "alias" / "weights.bin").read_bytes() == b"\x00" * 1000


def test_broken_symlink_is_rejected(tmp_path: Path, cache: NodeCache) -> None:
    src = make_source(tmp_path)
    (src / "dangling").symlink_to(src / "nothing")
    with pytest.raises(MountError, match=r"storage\[0\]: path 'dangling' is a broken symlink"):
        cache.materialize(str(src), where="storage[0]")


@pytest.mark.parametrize("target", ["file", "dir"])
def test_symlink_escaping_the_source_is_rejected(tmp_path: Path, cache: NodeCache, target: str) -> None:
    src = make_source(tmp_path)
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0")
    (src / "leak").symlink_to(outside / "passwd" if target == "file" else outside)
    with pytest.raises(MountError, match=r"storage\[0\]: path 'leak.*' escapes the mount"):
        cache.materialize(src.as_uri(), where="storage[0]")
    assert not (cache.root / "objects").exists() or not any((cache.root / "objects").iterdir())


def test_dotdot_key_in_object_storage_is_rejected(cache: NodeCache) -> None:
    name = f"evil-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    fs.pipe(f"/{name}/ok.txt", b"fine")
    fs.pipe(f"/{name}/../../etc/passwd", b"root")  # memory:// keeps keys verbatim, like S3
    with pytest.raises(MountError, match=r"storage\[0\]: path '\.\./\.\./etc/passwd' escapes the mount"):
        cache.materialize(f"memory://{name}", where="storage[0]")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "file:///nope/does-not-exist",
            r"storage\[0\]\.oss\.path: 'file:///nope/does-not-exist' does not exist",
        ),
        ("/nope/does-not-exist", r"'/nope/does-not-exist' does not exist"),
        ("nosuchproto://bucket/x", r"cannot open 'nosuchproto://bucket/x'"),
    ],
    ids=["file-url", "plain-path", "unknown-protocol"],
)
def test_missing_source(cache: NodeCache, url: str, message: str) -> None:
    with pytest.raises(MountError, match=message):
        cache.materialize(url, where="storage[0].oss.path")


def test_concurrent_materialize_copies_once(tmp_path: Path, cache: NodeCache) -> None:
    src = make_source(tmp_path)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: cache.materialize(str(src)), range(8)))
    assert len({r.path for r in results}) == 1
    assert sum(not r.hit for r in results) == 1  # exactly one copy, the rest waited and hit
    assert tree(results[0].path) == tree(src)
    assert len(list((cache.root / "objects").iterdir())) == 1


def test_leftover_of_a_crashed_copy_is_cleaned(tmp_path: Path, cache: NodeCache) -> None:
    src = make_source(tmp_path)
    key = cache.materialize(str(src)).key
    cache.evict(key)
    crashed = cache.objects / f".tmp-{key[:16]}-crashed"
    (crashed / "sub").mkdir(parents=True)
    (crashed / "config.json").write_text("half")
    got = cache.materialize(str(src))
    assert not got.hit and tree(got.path) == tree(src)
    assert sorted(p.name for p in cache.objects.iterdir()) == [key]


def test_evict(tmp_path: Path, cache: NodeCache) -> None:
    src = make_source(tmp_path)
    got = cache.materialize(str(src))
    cache.evict(got.key)
    assert not got.path.exists()
    assert not cache.materialize(str(src)).hit


@pytest.mark.parametrize(
    ("info", "stamp", "checksum"),
    [
        ({"ETag": '"abc"', "mtime": 1.0}, "c:abc", True),
        ({"md5Hash": "xyz"}, "c:xyz", True),
        ({"mtime": 12.5}, "t:12.5", False),
        ({"LastModified": "2024-01-01"}, "t:2024-01-01", False),
        ({"size": 3}, "t:?", False),
    ],
    ids=["s3-etag-wins", "gcs-md5", "local-mtime", "last-modified", "nothing"],
)
def test_stamp(info: dict[str, object], stamp: str, checksum: bool) -> None:
    assert _stamp(info) == (stamp, checksum)


# --- prepare_mounts ---------------------------------------------------------------------


def spec_with(storage: list[dict[str, object]]) -> ServiceSpec:
    return ServiceSpec.model_validate(
        {"metadata": {"name": "svc"}, "containers": [{"command": "srv", "port": 8000}], "storage": storage}
    )


def test_prepare_mounts_all_kinds(tmp_path: Path, cache: NodeCache) -> None:
    src = make_source(tmp_path)
    nfs_dir = tmp_path / "nfs-export"
    nfs_dir.mkdir()
    spec = spec_with(
        [
            {"mount_path": "/mnt/data/", "oss": {"path": src.as_uri()}},
            {"mount_path": "/scratch", "empty_dir": {}},
            {"mount_path": "/shared", "nfs": {"server": "nas", "path": str(nfs_dir)}},
        ]
    )
    workdir = tmp_path / "replicas" / "r1"
    plan = prepare_mounts(spec, cache, workdir=workdir)
    key = plan.fetches[0].key
    assert key is not None
    assert plan.paths == {
        "/mnt/data": str(cache.root / "objects" / key),
        "/scratch": str(workdir / "mounts" / "1"),
        "/shared": str(nfs_dir),
    }
    assert [(f.kind, f.hit, f.bytes_copied) for f in plan.fetches] == [
        ("oss", False, 1008),
        ("empty_dir", True, 0),
        ("nfs", True, 0),
    ]
    summary = plan.summary()
    assert (summary["cache_hit"], summary["bytes"]) == (False, 1008)
    assert summary["mounts"][0]["key"] == key

    (workdir / "mounts" / "1" / "junk").write_text("x")
    again = prepare_mounts(spec, cache, workdir=workdir)
    assert again.all_hits and again.bytes_copied == 0
    assert list((workdir / "mounts" / "1").iterdir()) == []  # empty_dir is fresh again


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        (
            [{"mount_path": "/mnt/data", "oss": {"path": "file:///nope"}}],
            r"^storage\[0\]\.oss\.path: 'file:///nope' does not exist$",
        ),
        (
            [{"mount_path": "/a", "empty_dir": {}}, {"mount_path": "/b", "nfs": {"path": "/nope/export"}}],
            r"^storage\[1\]\.nfs\.path: '/nope/export' does not exist on this node",
        ),
        (
            [{"mount_path": "/b", "nfs": {"server": "nas"}}],
            r"^storage\[0\]\.nfs\.path: an absolute local path is required",
        ),
        (
            [{"mount_path": "/code", "git": {"repo": "/nope/repo.git"}}],
            r"^storage\[0\]\.git: git clone failed: fatal: .*/nope/repo.git",
        ),
        (
            [{"mount_path": "/a", "empty_dir": {}}, {"mount_path": "/fast", "cache": {"path": "/elsewhere"}}],
            r"^storage\[1\]\.cache\.path: '/elsewhere' is not inside another storage entry's mount_path",
        ),
    ],
    # mount_path "/" never gets here: the spec rejects it (tests/test_spec.py "mount over root").
    ids=["oss-missing", "nfs-missing", "nfs-without-path", "git-clone-fails", "cache-of-nothing"],
)
def test_prepare_mounts_errors(
    tmp_path: Path, cache: NodeCache, storage: list[dict[str, object]], message: str
) -> None:
    with pytest.raises(MountError, match=message):
        prepare_mounts(spec_with(storage), cache, workdir=tmp_path / "w")


def test_nfs_server_with_export_path(tmp_path: Path, cache: NodeCache) -> None:
    spec = spec_with([{"mount_path": "/shared", "nfs": {"server": f"nas:{tmp_path}"}}])
    assert prepare_mounts(spec, cache, workdir=tmp_path / "w").paths == {"/shared": str(tmp_path)}


def test_cache_mount_is_the_directory_it_caches(tmp_path: Path, cache: NodeCache) -> None:
    # EAS's memory cache (storage[].cache) of another mount, listed before it: the cache's
    # mount_path is served by the cached mount's own node-cache directory (or a folder inside it).
    src = make_source(tmp_path)
    spec = spec_with(
        [
            {"mount_path": "/models/sd", "cache": {"capacity": "20G", "path": "/data-oss/sd/"}},
            {"mount_path": "/data-oss/", "oss": {"path": src.as_uri()}},
        ]
    )
    plan = prepare_mounts(spec, cache, workdir=tmp_path / "w")
    oss_dir = plan.paths["/data-oss"]
    assert plan.paths["/models/sd"] == oss_dir + "/sd"
    assert [f.kind for f in plan.fetches] == ["cache", "oss"]  # in the spec's order
