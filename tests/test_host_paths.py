"""Host paths only by permission (issue 18 §2): every reproduction, at a real server's API.

The server runs with one allowed host folder (``--allow-host-path``) and one NFS export mapped
(``--nfs-export``); a spec naming anything else on the host is a 400 naming the field and how to
allow it, and a version stored before the rule existed is refused when its replica starts.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openeas.errors import MountError
from openeas.runtime.container_args import build_container_launch
from openeas.sdk import ApiError
from openeas.spec import parse_spec
from openeas.storage.gitrepo import clone_once
from openeas.storage.hostpaths import HostPaths
from openeas.store import Store
from openeas.store.batch_jobs import BatchStore
from tests.harness import Server, event, new_server, service_spec, stop_and_reap, wait_for

NAS = "abc123.cn-hangzhou.nas.aliyuncs.com"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path, Path]]:
    root = tmp_path_factory.mktemp("hostpaths")
    allowed, nas = root / "allowed", root / "nas"
    (allowed / "model").mkdir(parents=True)
    (allowed / "model" / "weights.bin").write_text("w")
    (allowed / "warm.jsonl").write_text('{"path": "/health", "count": 1}\n')
    (allowed / "to-etc").symlink_to("/etc")
    (nas / "models").mkdir(parents=True)
    srv = new_server(root / "data")
    srv.host_paths = [allowed]
    srv.extra_env = {"OPENEAS_CONTAINER_ENGINE": "none"}
    srv.extra_args = ["--nfs-export", f"{NAS}:/={nas}"]
    srv.start()
    yield srv, allowed, nas
    stop_and_reap(srv)


def _spec(name: str, **extra: Any) -> dict[str, Any]:
    return service_spec(name, replicas=0, **extra)


def _mount(mount_path: str = "/mnt/data", **source: Any) -> dict[str, Any]:
    return {"storage": [{"mount_path": mount_path, **source}]}


def _processor(path: str, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": "proc", "instance": 0}, "processor_type": "python",
            "processor_path": path, "processor_entry": "app.py", **extra}  # fmt: skip


HOW = "start the server with --allow-host-path"
REFUSED = [
    pytest.param(_spec("nas", **_mount(nfs={"server": NAS.replace("abc123", "other"), "path": "/"})),
                 ["storage[0].nfs: the export other.cn-hangzhou.nas.aliyuncs.com:/ is not mapped to a folder "
                  "on this node: mount it on the node and start the server with --nfs-export "
                  "other.cn-hangzhou.nas.aliyuncs.com:/=<that folder>"], id="nfs-eas-nas-root-unmapped"),
    pytest.param(_spec("nfsold", **_mount(nfs={"server": "nas:/srv/export"})),
                 ["storage[0].nfs: the export nas:/srv/export is not mapped"], id="nfs-host-colon-export"),
    pytest.param(_spec("shadow", **_mount(oss={"path": "file:///etc/shadow"})),
                 [f"storage[0].oss.path: 'file:///etc/shadow' is outside the host folders allowed to specs: "
                  f"{HOW} /etc to allow it (no host folder is allowed by default)"], id="file-etc-shadow"),
    pytest.param(_spec("root", **_mount(oss={"path": "file:///"})),
                 [f"storage[0].oss.path: 'file:///' is outside the host folders allowed to specs: {HOW} /"],
                 id="file-root"),
    pytest.param(_spec("environ", **_mount(oss={"path": "/proc/self/environ"})),
                 [f"storage[0].oss.path: '/proc/self/environ' is outside the host folders allowed to specs: "
                  f"{HOW} /proc/self"], id="proc-self-environ"),
    pytest.param(_spec("rel", **_mount(oss={"path": "models/m1"})),
                 ["storage[0].oss.path: 'models/m1' is a relative path; it would resolve against the "
                  "server's working directory"], id="relative-path"),
    pytest.param(_spec("dotdot", **_mount(oss={"path": "file://localhost/../../etc"})),
                 ["storage[0].oss.path: 'file://localhost/../../etc' is outside"], id="file-url-dotdot"),
    pytest.param(_spec("chain", **_mount(oss={"path": "simplecache::file:///etc/passwd"})),
                 ["storage[0].oss.path: chained URLs ('::') are not accepted"], id="fsspec-chained-url"),
    pytest.param(_spec("tarfs", **_mount(oss={"path": "tar:///etc/x.tar"})),
                 ["storage[0].oss.path: the protocol 'tar' is not accepted"], id="local-reading-protocol"),
    pytest.param(_spec("otherhost", **_mount(oss={"path": "file://nas/etc"})),
                 ["storage[0].oss.path: 'file://nas/etc' names another host"], id="file-url-other-host"),
    pytest.param(_processor("../.."),
                 ["processor_path: '../..' is a relative path; it would resolve against the server's "
                  "working directory"], id="processor-path-dotdot"),
    pytest.param(_processor("/etc", model_path="file:///root"),
                 [f"processor_path: '/etc' is outside the host folders allowed to specs: {HOW} /",
                  f"model_path: 'file:///root' is outside the host folders allowed to specs: {HOW} /"],
                 id="processor-and-model-path-outside"),
    pytest.param(_spec("warm", warm_up_data_path="/etc/passwd"),
                 [f"warm_up_data_path: '/etc/passwd' is outside the host folders allowed to specs: {HOW} /etc"],
                 id="warmup-host-file"),
    pytest.param(_spec("gitlocal", **_mount(git={"repo": "/root/secret-repo"})),
                 ["storage[0].git.repo: '/root/secret-repo' is outside"], id="git-local-repo"),
    pytest.param(_spec("gitext", **_mount(git={"repo": "ext::sh -c 'cat /etc/shadow'"})),
                 ["storage[0].git.repo: chained URLs ('::') are not accepted"], id="git-ext-transport"),
    pytest.param(_spec("gitopt", **_mount(git={"repo": "https://example.com/r.git",
                                                 "commit": "--pathspec-from-file=/etc/shadow"})),
                 ["storage[0].git.commit: '--pathspec-from-file=/etc/shadow' is not a branch, tag "
                  "or commit: no leading '-', no spaces"], id="git-commit-as-option"),
    pytest.param(_spec("reqs", containers=[{"command": "python -m openeas.testserver", "port": 8000,
                                            "prepare": {"pythonRequirementsPath": "/etc/shadow"}}]),
                 ["containers[0].prepare.pythonRequirementsPath: '/etc/shadow' is outside"],
                 id="requirements-file-on-host"),
    pytest.param(_spec("colon", **_mount("/mnt/a:/etc", empty_dir={})),
                 ["storage[0].mount_path: '/mnt/a:/etc' must not contain ':' or ','"],
                 id="mount-path-volume-syntax"),
    pytest.param(_spec("tmpfsopt", **_mount("/mnt/x:rw,exec,suid,dev,size=1", empty_dir={"medium": "memory"})),
                 ["storage[0].mount_path: '/mnt/x:rw,exec,suid,dev,size=1' must not contain"],
                 id="mount-path-tmpfs-options"),
    pytest.param(_spec("procmnt", **_mount("/proc/sys", empty_dir={})),
                 ["storage[0].mount_path: '/proc/sys' is under /proc"], id="mount-path-proc"),
    pytest.param(_spec("sysmnt", **_mount("/sys", empty_dir={})),
                 ["storage[0].mount_path: '/sys' is under /sys"], id="mount-path-sys"),
    pytest.param(_spec("devmnt", **_mount("/dev/sda", empty_dir={})),
                 ["storage[0].mount_path: '/dev/sda' is under /dev"], id="mount-path-dev"),
    pytest.param(_spec("slashes", **_mount("/mnt//data", empty_dir={})),
                 ["storage[0].mount_path: '/mnt//data' is not normalised"], id="mount-path-double-slash"),
    pytest.param(_spec("dot", **_mount("/mnt/./data", empty_dir={})),
                 ["storage[0].mount_path: '/mnt/./data' is not normalised"], id="mount-path-dot"),
    pytest.param(_spec("many", warm_up_data_path="/etc/passwd",
                       storage=[{"mount_path": "/a", "oss": {"path": "/etc"}},
                                {"mount_path": "/b", "nfs": {"server": "x.nas.aliyuncs.com", "path": "/"}}]),
                 ["storage[0].oss.path: '/etc' is outside", "storage[1].nfs: the export x.nas.aliyuncs.com:/",
                  "warm_up_data_path: '/etc/passwd' is outside"], id="all-errors-at-once"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "errors"), REFUSED)
def test_a_spec_naming_the_host_is_a_400_that_names_the_field(
    world: tuple[Server, Path, Path], spec: dict[str, Any], errors: list[str]
) -> None:
    srv = world[0]
    for call in (srv.client.deploy, srv.client.dry_run):
        with pytest.raises(ApiError) as exc:
            call(spec)
        assert exc.value.status == 400, exc.value
        got = exc.value.errors or []
        assert len(got) == len(errors), got
        for line, want in zip(got, errors, strict=True):
            assert line.startswith(want), (line, want)
    assert not any(s["name"] == spec["metadata"]["name"] for s in srv.client.list())


def test_a_symlink_inside_an_allowed_folder_cannot_lead_out_of_it(world: tuple[Server, Path, Path]) -> None:
    srv, allowed, _ = world
    with pytest.raises(ApiError) as exc:
        srv.client.dry_run(_spec("link", **_mount(oss={"path": f"{allowed}/to-etc/passwd"})))
    assert exc.value.errors == [
        f"storage[0].oss.path: '{allowed}/to-etc/passwd' is outside the host folders allowed to specs: "
        f"start the server with --allow-host-path {allowed}/to-etc to allow it (no host folder is allowed by default)"
    ]


ACCEPTED = [
    pytest.param(lambda a: _mount(oss={"path": (a / "model").as_uri() + "/"}), "fileurl", id="file-url-inside"),
    pytest.param(lambda a: _mount(oss={"path": str(a / "model" / "weights.bin")}), "pathinside", id="path-inside"),
    pytest.param(lambda a: _mount(oss={"path": "oss://bucket/model/"}), "bucket", id="oss-local-bucket"),
    pytest.param(lambda a: _mount(oss={"path": "https://example.com/m.bin"}), "https", id="https"),
    pytest.param(lambda a: _mount(nfs={"server": NAS, "path": "/models", "readOnly": True}), "nas", id="nfs-mapped"),
    pytest.param(lambda a: _mount("/dev/shm", empty_dir={"medium": "memory"}), "shm", id="dev-shm-tmpfs"),
    pytest.param(lambda a: {"warm_up_data_path": str(a / "warm.jsonl")}, "warm", id="warmup-inside"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "name"), ACCEPTED)
def test_what_the_operator_allowed_deploys(world: tuple[Server, Path, Path], extra: Any, name: str) -> None:
    srv, allowed, _ = world
    assert srv.client.dry_run(_spec(name, **extra(allowed)))["valid"] is True


def test_the_mapped_nas_is_the_operators_folder_read_only_in_a_container(
    world: tuple[Server, Path, Path],
) -> None:
    _, _, nas = world
    policy = HostPaths.build([], [f"{NAS}:/={nas}"])
    spec = parse_spec(_spec("c", **_mount(nfs={"server": NAS, "path": "/models", "readOnly": True}))
                      | {"containers": [{"image": "localhost/x:1", "command": "serve", "port": 8000}]})  # fmt: skip
    local = policy.nfs_dir(spec.storage[0].nfs or {}, "storage[0].nfs")
    assert local == f"{nas}/models"  # never the host's "/"
    launch = build_container_launch(spec, replica_id="c-1", data_dir="/d", host_port=1,
                                    mounts={"/mnt/data": local}, workdir="/w")  # fmt: skip
    assert [(v.source, v.target, v.mode) for v in launch.volumes] == [(f"{nas}/models", "/mnt/data", "ro")]
    assert policy.nfs_dir({"server": NAS, "path": "/models/../../.."}, "w") == f"{nas}/"  # normalised: "/"
    (nas / "out").symlink_to("/etc")
    with pytest.raises(MountError, match=r"^storage\[0\]\.nfs\.path: '/out' leaves the folder"):
        policy.nfs_dir({"server": NAS, "path": "/out"}, "storage[0].nfs")


def test_a_version_stored_before_the_rule_cannot_mount_the_host_root(
    world: tuple[Server, Path, Path],
) -> None:
    # Written straight into the store (as an older release accepted it); the replica's start refuses it.
    srv = world[0]
    spec = parse_spec(service_spec("legacy", **_mount(nfs={"server": "h.nas.aliyuncs.com", "path": "/"})))
    Store(srv.data_dir).create_service(spec)
    srv.client.scale("legacy", 1)  # wakes the reconciler
    found = wait_for(lambda: event(srv, "legacy", "MountFailed"), 30, what="MountFailed")
    assert "storage[0].nfs: the export h.nas.aliyuncs.com:/ is not mapped" in found["message"]
    assert all(r["phase"] != "Ready" for r in srv.client.describe("legacy")["replicas"])
    srv.client.delete("legacy", force=True)


def test_a_git_commit_never_reaches_git_as_an_option(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    run = {"check": True, "capture_output": True, "cwd": tmp_path}
    subprocess.run(["git", "init", "-q", str(repo)], **run)  # type: ignore[call-overload]
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=a@b", "-c", "user.name=a",
                    "commit", "-q", "--allow-empty", "-m", "x"], **run)  # type: ignore[call-overload]  # fmt: skip
    secret = tmp_path / "secret"
    secret.write_text("top secret\n")
    with pytest.raises(MountError) as exc:  # the spec refuses it; the command line does not take it either
        clone_once(
            tmp_path / "cache", str(repo), None, f"--pathspec-from-file={secret}", where="storage[0].git"
        )
    assert "invalid reference" in exc.value.message and "top secret" not in exc.value.message
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], **run).stdout.decode().strip()  # type: ignore[call-overload]
    path, hit, _ = clone_once(tmp_path / "cache", str(repo), None, head, where="storage[0].git")
    assert not hit and os.path.isdir(path / ".git")


def test_no_host_folder_is_allowed_by_default() -> None:
    none = HostPaths()
    assert not none.allows("/") and none.nfs_exports == {}
    with pytest.raises(MountError, match=r"^w: '/srv/m' is outside the host folders allowed to specs"):
        none.local("/srv/m", "w")


# --- files a request names outside any spec: a batch job's files, a stress test's data ---------------

OUT = (
    "outside the host folders allowed to batch jobs and stress tests: start the server with --allow-host-path"
)
REL = "is a relative path; it would resolve against the server's working directory: pass an absolute path"


def _batch(**files: str) -> dict[str, Any]:
    """A batch job of the world's service; ``{a}`` in a file is the allowed folder."""
    return {"service": "reqsvc", "input": "{a}/in.jsonl", "output": "{a}/out/o.jsonl", **files}


def _filled(body: dict[str, Any], allowed: Path) -> dict[str, Any]:
    return {k: v.format(a=allowed) if isinstance(v, str) else v for k, v in body.items()}


@pytest.fixture(scope="module")
def reqsvc(world: tuple[Server, Path, Path]) -> tuple[Server, Path]:
    srv, allowed, _ = world
    srv.client.deploy(_spec("reqsvc"))
    (allowed / "in.jsonl").write_text('{"custom_id": "a", "method": "POST", "url": "/x", "body": {}}\n')
    (allowed / "bad.jsonl").write_text("not json\n")
    return srv, allowed


BATCH_REFUSED = [
    pytest.param(_batch(input="/etc/passwd"), [f"input: '/etc/passwd' is {OUT} /etc to allow it"], id="input-etc"),
    pytest.param(_batch(input="in.jsonl"), [f"input: 'in.jsonl' {REL}"], id="input-relative"),
    pytest.param(_batch(input="./{a}/in.jsonl"), ["input: './"], id="input-dot-relative"),
    pytest.param(_batch(input="~/in.jsonl"), [f"input: '~/in.jsonl' {REL}"], id="input-home-relative"),
    pytest.param(_batch(input="file:///proc/self/environ"),
                 [f"input: 'file:///proc/self/environ' is {OUT} /proc/self"], id="input-file-url-proc"),
    pytest.param(_batch(input="file://{a}/../../../etc/shadow"), ["input: 'file://"], id="input-file-url-dotdot"),
    pytest.param(_batch(input="{a}/to-etc/passwd"), ["input: '"], id="input-symlink-out"),
    pytest.param(_batch(input="simplecache::file:///etc/passwd"),
                 ["input: chained URLs ('::') are not accepted"], id="input-chained-url"),
    pytest.param(_batch(input="zip://x::file:///etc/a.zip"), ["input: chained URLs"], id="input-zip-chain"),
    pytest.param(_batch(input="tar:///etc/a.tar"), ["input: the protocol 'tar' is not accepted"], id="input-tar"),
    pytest.param(_batch(output="/tmp/o.jsonl"), [f"output: '/tmp/o.jsonl' is {OUT} /tmp to allow it"],
                 id="output-tmp"),
    pytest.param(_batch(output="o.jsonl"), [f"output: 'o.jsonl' {REL}"], id="output-relative"),
    pytest.param(_batch(errors="/root/e.jsonl"), [f"errors: '/root/e.jsonl' is {OUT} /root to allow it"],
                 id="errors-root"),
    pytest.param({"input": "/etc/passwd", "output": "o.jsonl", "errors": "file:///var/e.jsonl"},
                 [f"input: '/etc/passwd' is {OUT} /etc", f"output: 'o.jsonl' {REL}",
                  f"errors: 'file:///var/e.jsonl' is {OUT} /var",
                  "service, spec: give exactly one"], id="all-errors-at-once"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "errors"), BATCH_REFUSED)
def test_a_batch_job_naming_the_host_is_a_400_that_names_the_field(
    reqsvc: tuple[Server, Path], body: dict[str, Any], errors: list[str]
) -> None:
    srv, allowed = reqsvc
    with pytest.raises(ApiError) as exc:
        srv.client.request("POST", "/api/v1/batch", json_body=_filled(body, allowed))
    assert exc.value.status == 400, exc.value
    got = exc.value.errors or []
    assert len(got) == len(errors), got
    for line, want in zip(got, errors, strict=True):
        assert line.startswith(want.format(a=allowed)), (line, want)
    assert not (allowed / "out").exists()  # refused before anything was made


def test_a_batch_job_inside_the_allowed_folder_is_taken(reqsvc: tuple[Server, Path]) -> None:
    srv, allowed = reqsvc
    job = srv.client.request(
        "POST", "/api/v1/batch", json_body=_filled(_batch(input="file://{a}/in.jsonl"), allowed)
    )
    assert job["state"] == "Running" and job["total_lines"] == 1
    srv.client.request("POST", f"/api/v1/batch/{job['id']}/cancel")


def test_a_batch_job_stored_before_the_rule_fails_and_cannot_be_resumed(reqsvc: tuple[Server, Path]) -> None:
    # Written straight into the store (as an older release accepted it): the runner refuses to read it.
    srv, _ = reqsvc
    row = BatchStore(Store(srv.data_dir)).create(
        service="reqsvc", input_url="/etc/passwd", output_url="/tmp/stolen.jsonl",
        errors_url="/tmp/stolen.errors.jsonl", shard_lines=10, concurrency=1, bounds=[(1, 2, 0, 10)],
        total_lines=1,
    )  # fmt: skip
    done = wait_for(lambda: (j := srv.client.request("GET", f"/api/v1/batch/{row.id}"))["state"] != "Running" and j,
                    30, what="the stored job refused")  # fmt: skip
    assert done["state"] == "Failed"
    assert done["message"].startswith(f"input: '/etc/passwd' is {OUT} /etc to allow it")
    assert "output: '/tmp/stolen.jsonl'" in done["message"] and not os.path.exists("/tmp/stolen.jsonl")
    with pytest.raises(ApiError) as exc:
        srv.client.request("POST", f"/api/v1/batch/{row.id}/resume")
    assert exc.value.status == 400 and len(exc.value.errors or []) == 3, exc.value


STRESS_REFUSED = [
    pytest.param({"data": {"path": "/etc/passwd"}}, f"data.path: '/etc/passwd' is {OUT} /etc to allow it",
                 id="data-path-etc"),
    pytest.param({"data": {"path": "/dev/zero"}}, f"data.path: '/dev/zero' is {OUT} /dev to allow it",
                 id="data-path-device"),
    pytest.param({"data": {"path": "reqs.jsonl"}}, f"data.path: 'reqs.jsonl' {REL}", id="data-path-relative"),
    pytest.param({"data": {"path": "~/reqs.jsonl"}}, f"data.path: '~/reqs.jsonl' {REL}", id="data-path-home"),
    pytest.param({"data": {"path": "{a}/to-etc/passwd"}}, "data.path: '{a}/to-etc/passwd' is " + OUT,
                 id="data-path-symlink-out"),
    pytest.param({"options": {"data_path": "/etc/passwd"}}, f"data.path: '/etc/passwd' is {OUT} /etc",
                 id="options-data-path"),
]  # fmt: skip


@pytest.mark.parametrize(("task", "error"), STRESS_REFUSED)
def test_a_stress_test_naming_the_host_is_a_400_that_names_the_field(
    reqsvc: tuple[Server, Path], task: dict[str, Any], error: str
) -> None:
    srv, allowed = reqsvc
    if "data" in task:
        task = {"data": {"path": task["data"]["path"].format(a=allowed)}}
    with pytest.raises(ApiError) as exc:
        srv.client.request("POST", "/api/v1/services/reqsvc/stress", json_body=task)
    assert exc.value.status == 400, exc.value
    assert exc.value.errors == [exc.value.errors[0]] and exc.value.errors[0].startswith(
        error.format(a=allowed)
    )


def test_a_stress_data_file_inside_the_allowed_folder_is_read(reqsvc: tuple[Server, Path]) -> None:
    srv, allowed = reqsvc  # read, then refused for what it holds: the path itself passed
    with pytest.raises(ApiError) as exc:
        srv.client.request(
            "POST", "/api/v1/services/reqsvc/stress", json_body={"data": {"path": f"{allowed}/bad.jsonl"}}
        )
    assert exc.value.errors and exc.value.errors[0].startswith("data.path: line 1 is not one JSON request")
