"""A replica is someone else's code: it must not reach the control plane's secrets or another
service's files. Real server, real replica processes, a real spying script (issue 18 §1)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from openeas.runtime.identity import (
    UID_BASE,
    ReplicaUser,
    decide,
    hand_over,
    node_tag,
    secure_data_dir,
    service_uid,
)
from openeas.storage.cache import NodeCache
from openeas.storage.gitrepo import clone_once
from openeas.store import Store
from tests.harness import Server, new_server, reachable_tmp, service_spec

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="switching users needs root (CI runs as root)")
NOBODY = ReplicaUser(UID_BASE + 12345, 65534)


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@pytest.mark.parametrize(
    "euid,wanted,problem",
    [
        pytest.param(0, "openeas-replica", None, id="root-switches"),
        pytest.param(
            1000, "openeas-replica", "the server is not root, so it cannot switch users", id="not-root"
        ),
        pytest.param(0, "none", "--replica-user none", id="none"),
        pytest.param(0, None, "--replica-user none", id="unset"),
    ],
)
def test_decide_when_replicas_get_a_user_of_their_own(euid: int, wanted: str | None, problem: str | None):
    assert decide(euid, wanted) == problem


def test_cli_default_replica_user_is_openeas_replica():
    from typer.testing import CliRunner

    from openeas.cli.main import app

    out = CliRunner().invoke(app, ["server", "--help"], env={"COLUMNS": "200"}).output
    assert "--replica-user" in out and "openeas-replica" in out


def test_node_tag_does_not_name_the_data_dir(tmp_path: Path):
    tag = node_tag(tmp_path)
    assert str(tmp_path) not in tag and tmp_path.name not in tag and len(tag) == 16
    assert node_tag(tmp_path) == tag != node_tag(tmp_path / "other")


def test_service_uids_are_stable_distinct_and_private(tmp_path: Path):
    a, b = service_uid(tmp_path, "a"), service_uid(tmp_path, "b")
    assert (a, b) == (UID_BASE, UID_BASE + 1)
    assert service_uid(tmp_path, "a") == a  # kept, not drawn again
    assert mode(tmp_path / "run" / "replica-uids.json") == 0o600


@pytest.mark.parametrize(
    "traverse,data_mode,reachable_mode",
    [pytest.param(True, 0o711, 0o711, id="replicas-as-own-user"),
     pytest.param(False, 0o700, 0o700, id="replicas-as-server-user")],
)  # fmt: skip
def test_data_dir_modes(tmp_path: Path, traverse: bool, data_mode: int, reachable_mode: int):
    data = tmp_path / "data"
    Store(data).admin_token()  # the store's files, as a server makes them
    (data / "server.json").write_text("{}")
    (data / "server.json").chmod(0o644)  # an older release's mode is tightened too
    secure_data_dir(data, traverse=traverse)
    assert mode(data) == data_mode
    for name in ("server.json", "secret.key", "openeas.db"):
        assert mode(data / name) == 0o600, name
    for name in ("run", "logs"):
        assert mode(data / name) == 0o700, name
    for name in ("replicas", "cache"):
        assert mode(data / name) == reachable_mode, name


def test_store_database_and_its_wal_are_private_from_the_start(tmp_path: Path):
    store = Store(tmp_path)
    store.admin_token()
    wal = [p for p in tmp_path.iterdir() if p.name.startswith("openeas.db")]
    assert {p.name for p in wal} >= {"openeas.db", "openeas.db-wal", "openeas.db-shm"}
    assert {p.name: mode(p) for p in wal} == {p.name: 0o600 for p in wal}


def _private_source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "secret.bin").write_bytes(b"weights")
    (src / "secret.bin").chmod(0o600)
    (src / "sub" / "open.txt").write_text("open")
    (src / "sub" / "open.txt").chmod(0o644)
    (src / "sub").chmod(0o755)
    src.chmod(0o700)
    return src


def test_node_cache_keeps_the_sources_restrictions(tmp_path: Path):
    got = NodeCache(tmp_path / "cache").materialize(str(_private_source(tmp_path)))
    # 0600 in 0700 stays owner-only (write taken away): never 0444 in 0755.
    assert mode(got.path) == 0o500 and mode(got.path / "secret.bin") == 0o400
    assert mode(got.path / "sub") == 0o555 and mode(got.path / "sub" / "open.txt") == 0o444
    NodeCache(tmp_path / "cache").evict(got.key)  # read-only folders are still removed
    assert not got.path.exists()


@needs_root
def test_node_cache_of_a_replica_user_is_that_users_alone(tmp_path: Path):
    cache = NodeCache(tmp_path / "cache").for_owner(NOBODY)
    got = cache.materialize(str(_private_source(tmp_path)))
    assert got.path.is_relative_to(tmp_path / "cache" / f"u{NOBODY.uid}")
    for p in [got.path, *got.path.rglob("*")]:
        st = os.lstat(p)
        assert (st.st_uid, st.st_gid) == (NOBODY.uid, NOBODY.gid), p
        assert st.st_mode & 0o077 == 0, f"{p}: {oct(st.st_mode)}"


def test_git_clone_of_a_private_repository_stays_private(tmp_path: Path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    (repo / "model.txt").write_text("weights")
    for cmd in (["git", "init", "-q"], ["git", "add", "."], ["git", "commit", "-qm", "x"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True)
    repo.chmod(0o700)
    path, hit, _ = clone_once(tmp_path / "cache", str(repo), None, None, where="storage[0]")
    assert not hit
    loose = [p for p in [path, *path.rglob("*")] if not p.is_symlink() and mode(p) & 0o077]
    assert loose == []  # a 0700 repository's clone is not 0644/0755 anywhere


def test_hand_over_never_follows_a_symlink(tmp_path: Path):
    if not ROOT:
        pytest.skip("chown needs root")
    outside = tmp_path / "outside"
    outside.write_text("root's")
    work = tmp_path / "work"
    work.mkdir()
    (work / "link").symlink_to(outside)
    hand_over(work, NOBODY)
    assert os.stat(outside).st_uid == 0 and os.lstat(work / "link").st_uid == NOBODY.uid


# --- the acceptance test: a real replica tries to read what it must not --------------------------

SPY = r"""
import json, os, sys
targets = json.loads(os.environ["SPY_TARGETS"])
out = {"uid": os.getuid(), "env": dict(os.environ), "reads": {}}
for path in targets:
    try:
        if os.path.isdir(path):
            out["reads"][path] = "READ " + repr(os.listdir(path))
        else:
            with open(path, "rb") as f:
                out["reads"][path] = "READ " + f.read(4096).decode("latin-1")
    except FileNotFoundError:
        out["reads"][path] = "missing"
    except PermissionError:
        out["reads"][path] = "denied"
print("SPY " + json.dumps(out), flush=True)
"""


@pytest.fixture
def reachable() -> Iterator[Path]:
    with reachable_tmp() as d:
        yield d


def _spy_report(srv: Server, rid: str) -> dict:
    log = (srv.data_dir / "replicas" / rid / "replica.log").read_text()
    line = next(ln for ln in log.splitlines() if ln.startswith("SPY "))
    return json.loads(line[4:])


@needs_root
def test_a_replica_reads_no_secret_and_no_other_services_cache(reachable: Path):
    srv = new_server(reachable / "data")
    bucket = srv.data_dir / "oss" / "bucket" / "model"
    bucket.mkdir(parents=True)
    (bucket / "weights.bin").write_bytes(b"victim-weights-0123456789")
    root_only = reachable / "root-only.txt"  # in a folder others can traverse: only its mode guards it
    root_only.write_text("root-only-secret")
    root_only.chmod(0o600)
    srv.start()
    try:
        c = srv.client
        victim = service_spec(
            "victim", storage=[{"mount_path": "/mnt/model", "oss": {"path": "oss://bucket/model/"}}]
        )
        c.deploy(victim)
        rep = c.wait_ready("victim", 1, timeout_s=90)["replicas"][0]
        key = rep["cold_start"]["fetch"]["mounts"][0]["key"]
        uid = service_uid(srv.data_dir, "victim")
        victim_entry = srv.data_dir / "cache" / f"u{uid}" / "objects" / key
        assert (victim_entry / "weights.bin").read_bytes() == b"victim-weights-0123456789"
        data = srv.data_dir
        targets = [str(p) for p in (
            data / "server.json", data / "secret.key", data / "openeas.db", data / "openeas.db-wal", data,
            data / "replicas", data / "cache", victim_entry, victim_entry / "weights.bin",
            Path("/etc/shadow"), root_only,
        )]  # fmt: skip
        spy = service_spec("spy")
        main = spy["containers"][0]
        main["script"] = f"python - <<'EOF'\n{SPY}\nEOF\nexec {main.pop('command')}"
        main["env"] = [{"name": "SPY_TARGETS", "value": json.dumps(targets)}]
        c.deploy(spy)
        detail = c.wait_ready("spy", 1, timeout_s=90)
        assert detail["runtime"]["warnings"] == []  # no "runs as the server's user" fallback
        spy_rep = detail["replicas"][0]
        report = _spy_report(srv, spy_rep["id"])
        # A uid of its own: not root's, not the victim's.
        assert report["uid"] == service_uid(data, "spy") != uid
        assert {p: r for p, r in report["reads"].items() if r.startswith("READ")} == {}
        # Everything it could see (its environment, its log) holds no secret of the control plane.
        log_text = (data / "replicas" / spy_rep["id"] / "replica.log").read_text()
        environ = Path(f"/proc/{spy_rep['pid']}/environ").read_text(errors="replace")
        secret_key = (data / "secret.key").read_bytes().decode("latin-1")
        for secret in (srv.info["admin_token"], secret_key.strip()):
            assert secret not in log_text and secret not in environ
        assert "OPENEAS_DATA_DIR" not in report["env"] and report["env"]["OPENEAS_NODE"] == node_tag(data)
    finally:
        srv.stop()


def test_a_container_gets_its_mounts_and_nothing_of_the_data_dir():
    from openeas.runtime.container_args import build_container_launch, run_args
    from openeas.spec import parse_spec

    spec = service_spec("c", storage=[{"mount_path": "/mnt/data", "oss": {"path": "oss://b/m/"}}])
    spec["containers"][0]["image"] = "example.invalid/img:1"
    launch = build_container_launch(
        parse_spec(spec), replica_id="c-1", data_dir="/d", host_port=21000,
        mounts={"/mnt/data": "/d/cache/objects/k"}, workdir="/d/replicas/c-1",
    )  # fmt: skip
    args = run_args(launch)
    volumes = [args[i + 1] for i, a in enumerate(args) if a == "--volume"]
    assert volumes == ["/d/cache/objects/k:/mnt/data:ro"]  # the cache entry alone, read-only
    assert not any(k.startswith("OPENEAS_") for k in launch.env)


@needs_root
@pytest.mark.parametrize(
    "folder_mode,reachable",
    [pytest.param(0o711, True, id="traversable"), pytest.param(0o700, False, id="a-0700-folder-above")],
)
def test_start_check_needs_the_replica_folder_reachable_by_path(tmp_path: Path, folder_mode: int, reachable: bool):
    from openeas.runtime.identity import check_reach

    with reachable_tmp() as tmp:
        above = tmp / "above"
        (above / "replicas").mkdir(parents=True)
        above.chmod(folder_mode)
        problem = check_reach(NOBODY, above / "replicas", dict(os.environ))
    assert (problem is None) == reachable, problem
    if not reachable:
        assert problem is not None and "reach" in problem and "Permission denied" in problem
