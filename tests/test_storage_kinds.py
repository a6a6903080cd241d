"""EAS's other storage kinds (issue 12): `git` (cloned once per node), `cache` (another mount's
folder, read-only), and `image`/`dataset` (refused with the alternative). Real git, real folders."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from openeas.errors import MountError, SpecError
from openeas.spec import parse_spec
from openeas.storage import NodeCache, prepare_mounts
from tests.harness import Server, service_spec


def git_repo(tmp_path: Path) -> tuple[Path, str, str]:
    """A local repository with two commits; (path, first commit, second commit)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.invalid", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # fmt: skip

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                              env=env).stdout.strip()  # fmt: skip

    git("init", "--quiet", "--initial-branch=main")
    (repo / "app.txt").write_text("v1\n")
    git("add", ".")
    git("commit", "--quiet", "-m", "one")
    first = git("rev-parse", "HEAD")
    (repo / "app.txt").write_text("v2\n")
    git("commit", "--quiet", "-am", "two")
    return repo, first, git("rev-parse", "HEAD")


def spec_with(storage: list[dict[str, Any]]) -> Any:
    return parse_spec({"name": "s", "containers": [{"command": "serve", "port": 8000}], "storage": storage})


def test_git_mount_is_cloned_once_per_node_and_pinned_by_commit(tmp_path: Path):
    repo, first, _ = git_repo(tmp_path)
    cache = NodeCache(tmp_path / "cache")
    head = spec_with([{"mount_path": "/code", "git": {"repo": str(repo), "branch": "main"}}])
    a = prepare_mounts(head, cache, workdir=tmp_path / "w1")
    b = prepare_mounts(head, cache, workdir=tmp_path / "w2")
    assert Path(a.paths["/code"], "app.txt").read_text() == "v2\n"
    assert [f.hit for f in a.fetches + b.fetches] == [False, True] and a.paths == b.paths
    pinned = spec_with([{"mount_path": "/code", "git": {"repo": str(repo), "commit": first}}])
    assert Path(prepare_mounts(pinned, cache, workdir=tmp_path / "w3").paths["/code"], "app.txt").read_text() == "v1\n"


def test_git_errors_name_the_entry(tmp_path: Path):
    bad = spec_with([{"mount_path": "/code", "git": {"repo": str(tmp_path / "nope")}}])
    with pytest.raises(MountError, match=r"storage\[0\].git: git clone failed: .*"):
        prepare_mounts(bad, NodeCache(tmp_path / "cache"), workdir=tmp_path / "w")


def test_cache_mount_is_the_cached_entrys_folder(tmp_path: Path):
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    (bucket / "m.bin").write_bytes(b"x")
    spec = spec_with([
        {"mount_path": "/mnt/data/", "oss": {"path": str(bucket)}},
        {"mount_path": "/mnt/cache", "cache": {"capacity": "20G", "path": "/mnt/data/"}},
    ])  # fmt: skip
    plan = prepare_mounts(spec, NodeCache(tmp_path / "cache"), workdir=tmp_path / "w")
    assert plan.paths["/mnt/cache"] == plan.paths["/mnt/data"]
    orphan = spec_with([{"mount_path": "/mnt/cache", "cache": {"path": "/mnt/elsewhere"}}])
    with pytest.raises(MountError, match=r"storage\[0\].cache.path: '/mnt/elsewhere' is not inside another storage"):
        prepare_mounts(orphan, NodeCache(tmp_path / "cache"), workdir=tmp_path / "w2")


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ({"mount_path": "/m", "image": {"image": "registry.example/x:1", "path": "/models"}},
         "storage[0]: image: an `image` mount copies files out of another image"),
        ({"mount_path": "/m", "dataset": {"id": "d-123"}}, "storage[0]: dataset: a PAI `dataset` is an asset"),
    ],
    ids=["image", "dataset"],
)  # fmt: skip
def test_unserved_mount_kinds_name_the_alternative(entry: dict[str, Any], error: str):
    with pytest.raises(SpecError) as exc:
        spec_with([entry])
    assert any(line.startswith(error) and "with `oss`" in line for line in exc.value.errors), exc.value.errors


@pytest.mark.slow
def test_replica_serves_from_a_git_mount(server: Server, tmp_path: Path):
    repo, _, _ = git_repo(tmp_path)
    spec = service_spec("gitted")
    spec["containers"][0]["command"] = "grep -q v2 /mnt/code/app.txt && exec " + spec["containers"][0]["command"]
    spec["storage"] = [{"mount_path": "/mnt/code", "git": {"repo": str(repo), "branch": "main"}}]
    detail = server.client.deploy(spec)
    assert detail["name"] == "gitted"
    rep = server.client.wait_ready("gitted", 1, timeout_s=60)["replicas"][0]
    assert rep["cold_start"]["fetch"]["mounts"][0]["kind"] == "git"
