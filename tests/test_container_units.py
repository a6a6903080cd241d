"""The container runtime's pure parts, table-driven: the engine's `run` arguments, the runtime
choice, engine detection (with a fake `which` and a fake `run`), the spec's new fields; and the
Pulling phase under the supervisor, on the fake clock with a fake image runtime."""

from __future__ import annotations

import asyncio
import base64
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from openeas.errors import SpecError
from openeas.kernel.states import ReplicaPhase
from openeas.runtime.base import PullError, PullResult
from openeas.runtime.container import pull_args, registry_of, remove_args
from openeas.runtime.container_args import (
    build_container_launch,
    container_argv,
    gpu_args,
    run_args,
    sidecar_run_args,
)
from openeas.runtime.engine import LIMITS_UNAPPLIED, detect_engine, podman_init
from openeas.runtime.fake import FakeRuntime
from openeas.runtime.gpus import GpuError, assign_gpus, node_gpus, parse_held
from openeas.runtime.pulls import PullOnce
from openeas.runtime.select import Runtimes, choose_runtime
from openeas.spec import parse_spec
from openeas.spec.models import quantity_bytes
from tests.fakes import World

P = ReplicaPhase
IMAGE = "localhost/server:1"


def eas(**extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "metadata": {"name": "svc", "instance": 1},
        "containers": [{"image": IMAGE, "command": "serve --port 8000", "port": 8000}],
    }
    for key, value in extra.items():
        doc[key] = value
    return doc


# ---- run arguments ---------------------------------------------------------------------------


def launch_args(
    doc: dict[str, Any], mounts: dict[str, str] | None = None, engine: str = "podman"
) -> list[str]:
    launch = build_container_launch(
        parse_spec(doc), replica_id="svc-1", data_dir="/d", host_port=21000, mounts=mounts or {}, workdir="/w"
    )
    return run_args(launch, engine=engine)


def pairs(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_run_args_keep_the_spec_as_written():
    args = launch_args(eas(metadata={"name": "svc", "cpu": 2, "memory": 2048, "gpu": 1}))
    # --init: an init is PID 1 and forwards SIGTERM (a server as PID 1 would ignore it)
    assert args[:7] == ["run", "--detach", "--init", "--pull", "never", "--name", "openeas-svc-1"]
    assert pairs(args, "--publish") == ["127.0.0.1:21000:8000"]  # port 8000 stays 8000 inside
    assert pairs(args, "--label") == [
        "io.openeas.data-dir=/d",
        "io.openeas.replica=svc-1",
        "io.openeas.service=svc",
    ]
    assert pairs(args, "--cpus") == ["2"] and pairs(args, "--memory") == ["2048m"]
    assert pairs(args, "--device") == []  # which GPUs is decided at start (openeas.runtime.gpus)
    # The image's entrypoint is the shell; the command is not rewritten (no port, no mount paths).
    assert args[-5:] == ["--entrypoint", "/bin/sh", IMAGE, "-c", "exec serve --port 8000"]
    assert pairs(args, "--log-driver") == ["passthrough"]
    assert pairs(launch_args(eas(), engine="docker"), "--log-driver") == []  # docker keeps its own log


MOUNTS = [
    pytest.param({"mount_path": "/mnt/data/", "oss": {"path": "oss://b/m/"}}, ["/cache/x:/mnt/data:ro"], [],
                 id="oss-read-only"),
    pytest.param({"mount_path": "/mnt/data", "oss": {"path": "oss://b/m/", "readOnly": False}},
                 ["/cache/x:/mnt/data:O"], [], id="oss-writable-is-an-overlay-the-cache-stays-clean"),
    pytest.param({"mount_path": "/mnt/data", "nfs": {"server": "h", "path": "/exports/m"}},
                 ["/cache/x:/mnt/data:rw"], [], id="nfs"),
    pytest.param({"mount_path": "/mnt/data", "empty_dir": {}}, ["/cache/x:/mnt/data:rw"], [], id="empty-dir-on-disk"),
    pytest.param({"mount_path": "/dev/shm", "empty_dir": {"medium": "memory", "size_limit": 2}}, [],
                 [f"/dev/shm:rw,size={2 * 2**30}"], id="memory-tmpfs-size-in-gb"),
    pytest.param({"mount_path": "/scratch", "empty_dir": {"medium": "Memory", "size_limit": "512Mi"}}, [],
                 [f"/scratch:rw,size={512 * 2**20}"], id="memory-tmpfs-quantity"),
]  # fmt: skip


@pytest.mark.parametrize(("mount", "volumes", "tmpfs"), MOUNTS)
def test_mounts_bind_at_mount_path_exactly(mount: dict[str, Any], volumes: list[str], tmpfs: list[str]):
    args = launch_args(eas(storage=[mount]), {mount["mount_path"].rstrip("/"): "/cache/x"})
    assert pairs(args, "--volume") == volumes
    assert pairs(args, "--tmpfs") == tmpfs


@pytest.mark.parametrize(
    ("read_only", "volumes", "mounts"),
    [
        pytest.param(True, ["/cache/x:/mnt/data:ro"], [], id="read-only-is-a-bind-as-with-podman"),
        pytest.param(False, [], ['type=volume,dst=/mnt/data,volume-opt=type=overlay,volume-opt=device=overlay,'
                                 '"volume-opt=o=lowerdir=/cache/x,upperdir=/w/overlay/0/upper,workdir=/w/overlay/0/work"'],
                     id="writable-is-an-overlay-volume-docker-has-no-O-bind"),
    ],
)  # fmt: skip
def test_docker_mounts(read_only: bool, volumes: list[str], mounts: list[str]):
    mount = {"mount_path": "/mnt/data", "oss": {"path": "oss://b/m/", "readOnly": read_only}}
    args = launch_args(eas(storage=[mount]), {"/mnt/data": "/cache/x"}, engine="docker")
    assert pairs(args, "--volume") == volumes and pairs(args, "--mount") == mounts
    assert ":O" not in " ".join(args)


@pytest.mark.parametrize(
    ("ids", "engine", "args"),
    [
        pytest.param((), "podman", [], id="none"),
        pytest.param((0, 1), "podman", ["--device", "nvidia.com/gpu=0", "--device", "nvidia.com/gpu=1"],
                     id="podman-one-cdi-device-each"),
        pytest.param((2,), "docker", ["--gpus", "device=2"], id="docker-exactly-those"),
    ],
)  # fmt: skip
def test_gpu_args_name_exactly_the_gpus(ids: tuple[int, ...], engine: str, args: list[str]):
    assert gpu_args(ids, engine) == args
    assert "all" not in " ".join(args)


@pytest.mark.parametrize(
    ("want", "total", "held", "expected"),
    [
        pytest.param(2, 4, [], (0, 1), id="lowest-free"),
        pytest.param(2, 4, [0, 2], (1, 3), id="skips-held"),
        pytest.param(0, 0, [], (), id="none-wanted"),
        pytest.param(2, 0, [], "metadata.gpu: 2 GPU(s) requested but this node has no GPU", id="no-gpu"),
        pytest.param(2, 2, [1], "metadata.gpu: 2 GPU(s) requested but this node has 2, 1 free", id="too-few-free"),
    ],
)  # fmt: skip
def test_assign_gpus(want: int, total: int, held: list[int], expected: tuple[int, ...] | str):
    if isinstance(expected, str):
        with pytest.raises(GpuError, match=re.escape(expected)):
            assign_gpus(want, total, held)
    else:
        assert assign_gpus(want, total, held) == expected


@pytest.mark.parametrize(
    ("labels", "held"),
    [(["0,1", "", "<no value>", "3"], [0, 1, 3]), ([], [])],
    ids=["labels-of-running-replicas", "none"],
)
def test_parse_held(labels: list[str], held: list[int]):
    assert parse_held(labels) == held


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({"OPENEAS_GPUS": "3"}, 3), ({"OPENEAS_GPUS": "x", "PATH": "/nonexistent"}, 0)],
    ids=["override", "no-nvidia-smi-is-none"],
)
def test_node_gpus(environ: dict[str, str], expected: int, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PATH", environ.get("PATH", "/nonexistent"))
    assert node_gpus(environ) == expected


@pytest.mark.parametrize(
    ("engine", "sidecars", "args"),
    [
        pytest.param("podman", [], ["rm", "--force", "--depend", "--time", "0", "openeas-r"], id="podman-depend"),
        pytest.param("docker", ["s1"], ["rm", "--force", "--volumes", "s1", "openeas-r"],
                     id="docker-no-depend-the-others-named-first"),
    ],
)  # fmt: skip
def test_remove_args(engine: str, sidecars: list[str], args: list[str]):
    assert remove_args(engine, "openeas-r", sidecars) == args


@pytest.mark.parametrize(
    ("engine", "authfile", "args"),
    [
        pytest.param("podman", None, ["pull", "img"], id="no-auth"),
        pytest.param("podman", Path("/r/p/config.json"), ["pull", "--authfile", "/r/p/config.json", "img"],
                     id="podman-authfile"),
        pytest.param("docker", Path("/r/p/config.json"), ["--config", "/r/p", "pull", "img"],
                     id="docker-has-no-authfile-its-config-folder"),
    ],
)  # fmt: skip
def test_pull_args(engine: str, authfile: Path | None, args: list[str]):
    assert pull_args(engine, "img", authfile) == args


def test_env_values_never_reach_the_argument_list():
    doc = eas()
    doc["containers"][0]["env"] = [{"name": "API_KEY", "value": "s3cret"}, {"name": "PORT", "value": "9000"}]
    launch = build_container_launch(
        parse_spec(doc), replica_id="svc-1", data_dir="/d", host_port=1, mounts={}, workdir="/w"
    )
    args = run_args(launch)
    assert pairs(args, "--env") == ["API_KEY", "PORT"] and "s3cret" not in " ".join(args)
    assert launch.env == {"API_KEY": "s3cret", "PORT": "9000"}  # the spec's PORT wins over the default


@pytest.mark.parametrize(
    ("command", "script", "argv"),
    [
        (
            "vllm serve /mnt/data/m --port 8000",
            None,
            ["/bin/sh", "-c", "exec vllm serve /mnt/data/m --port 8000"],
        ),
        ("cd /app && python serve.py", None, ["/bin/sh", "-c", "cd /app && python serve.py"]),
        (None, "set -e\npython serve.py", ["/bin/sh", "-c", "set -e\npython serve.py"]),
    ],
    ids=["simple-command-execs", "shell-command", "script"],
)
def test_container_argv(command: str | None, script: str | None, argv: list[str]):
    assert container_argv(command, script) == argv


# ---- which runtime ---------------------------------------------------------------------------

CHOICES = [
    ("auto", IMAGE, "podman 4.3.1", None, "container", "image set and podman 4.3.1 present"),
    ("auto", None, "podman 4.3.1", None, "process", "no image in the spec"),
    ("auto", IMAGE, None, "no container engine: podman is not installed", "process",
     "image set, but no container engine: podman is not installed: the command runs on the host"),
    ("process", IMAGE, "podman 4.3.1", None, "process", "metadata.replica_runtime is 'process'"),
    ("container", IMAGE, "podman 4.3.1", None, "container", "metadata.replica_runtime is 'container' (podman 4.3.1)"),
    ("container", IMAGE, None, "no container engine: docker is installed but its daemon does not answer", None,
     "metadata.replica_runtime is 'container' but no container engine: docker is installed but its daemon"),
]  # fmt: skip


@pytest.mark.parametrize(("requested", "image", "engine", "problem", "name", "reason"), CHOICES,
                         ids=["auto-image-engine", "auto-no-image", "auto-no-engine", "process", "container",
                              "container-no-engine"])  # fmt: skip
def test_choose_runtime(requested, image, engine, problem, name, reason):
    choice = choose_runtime(requested, image, engine, problem)
    assert choice.name == name
    assert reason in choice.reason


@pytest.mark.parametrize(
    ("command", "warned"),
    [
        ("python -m server --host 127.0.0.1 --port 8000", True),
        ("uvicorn app:app --host=localhost --port 8000", True),
        ("gunicorn -b 127.0.0.1:8000 app", True),
        ("python -m server --host 0.0.0.0 --port 8000", False),
        ("vllm serve /mnt/data/m", False),
    ],
    ids=["host-flag", "host-equals", "bind-address", "all-interfaces", "default-bind"],
)
def test_a_loopback_only_server_in_a_container_is_warned_about(command: str, warned: bool):
    choice = choose_runtime("auto", IMAGE, "podman 4.3.1", None, [command])
    assert bool(choice.warnings) is warned


# ---- engine detection ------------------------------------------------------------------------


def fake_run(results: dict[str, tuple[int, str, str]]):
    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        code, out, err = results[Path(argv[0]).name]
        return subprocess.CompletedProcess(argv, code, out, err)

    return run


PODMAN_INFO = '{"version": {"Version": "4.3.1"}, "host": {"cgroupVersion": "v1"}}'
DETECT = [
    ({"podman", "docker"}, {"podman": (0, PODMAN_INFO, "")}, {}, "podman 4.3.1", None),
    ({"docker"}, {"docker": (1, "", "Cannot connect to the Docker daemon at unix:///var/run/docker.sock.")}, {},
     None, "podman is not installed; docker is installed but its daemon does not answer (Cannot connect"),
    (set(), {}, {}, None, "no container engine: podman is not installed; docker is not installed; install podman"),
    ({"podman"}, {"podman": (125, "", "Error: runc: cgroups in hybrid mode")}, {}, None, "`podman info` failed: Error: runc"),
    ({"podman"}, {"podman": (0, PODMAN_INFO, "")}, {"OPENEAS_CONTAINER_ENGINE": "none"}, None, "disabled"),
    ({"podman", "docker"}, {"docker": (0, '{"ServerVersion": "27.1"}', "")}, {"OPENEAS_CONTAINER_ENGINE": "docker"},
     "docker 27.1", None),
]  # fmt: skip


@pytest.mark.parametrize(("installed", "results", "environ", "engine", "problem"), DETECT,
                         ids=["podman", "docker-without-daemon", "none-installed", "podman-broken", "disabled",
                              "docker-forced"])  # fmt: skip
def test_detect_engine(tmp_path: Path, installed, results, environ, engine, problem):
    status = detect_engine(
        tmp_path,
        which=lambda name: f"/usr/bin/{name}" if name in installed else None,
        run=fake_run(results),
        environ=environ,
    )
    assert (status.engine.describe() if status.engine else None) == engine
    if problem is None:
        assert status.problem is None
    else:
        assert problem in (status.problem or "")


def test_podman_gets_a_containers_conf_of_our_own(tmp_path: Path):
    status = detect_engine(
        tmp_path, which=lambda n: f"/usr/bin/{n}", run=fake_run({"podman": (0, PODMAN_INFO, "")}), environ={}
    )
    assert status.engine is not None
    conf = Path(status.engine.env["CONTAINERS_CONF"])
    assert conf.parent == tmp_path / "run"
    assert "default_ulimits = []" in conf.read_text()


# ---- the spec ----------------------------------------------------------------------------------

AUTH = base64.b64encode(b"robot:pa55").decode()


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        (eas(containers=[{"image": "Bad Image", "command": "x"}]), "is not an image reference"),
        (eas(dockerAuth="not-base64!"), "dockerAuth: must be the base64 encoding of 'user:password'"),
        (eas(runtime="ray"), "as a string it is the older spelling of metadata.replica_runtime"),
        (eas(runtime="process", metadata={"name": "svc", "replica_runtime": "container"}), "disagree"),
        (eas(storage=[{"mount_path": "/s", "empty_dir": {"medium": "ssd"}}]), "is not a medium"),
        (eas(storage=[{"mount_path": "/s", "empty_dir": {"medium": "memory", "size_limit": "lots"}}]),
         "is not a size"),
    ],
    ids=["image", "docker-auth", "runtime-string", "runtime-conflict", "medium", "size"],
)  # fmt: skip
def test_bad_container_fields_are_named(doc: dict[str, Any], error: str):
    with pytest.raises(SpecError) as exc:
        parse_spec(doc)
    assert any(error in line for line in exc.value.errors), exc.value.errors


def test_eas_runtime_block_is_kept_and_secrets_are_masked():
    spec = parse_spec(eas(runtime={"enable_crash_block": False}, dockerAuth=AUTH))
    assert spec.replica_runtime == "auto"
    assert spec.to_dict()["runtime"] == {"enable_crash_block": False}
    assert spec.public_dict()["dockerAuth"] == "***" and spec.to_dict()["dockerAuth"] == AUTH
    assert parse_spec(eas(runtime="container")).replica_runtime == "container"  # the older spelling


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (20, 20 * 2**30),
        (0.5, 2**29),
        ("512Mi", 512 * 2**20),
        ("2Gi", 2 * 2**30),
        ("1G", 10**9),
        ("3", 3 * 2**30),
    ],
    ids=["gb-int", "gb-float", "mebibytes", "gibibytes", "gigabytes", "bare-string-is-gb"],
)
def test_quantity_bytes(value: Any, expected: int):
    assert quantity_bytes(value, default_unit=2**30) == expected


@pytest.mark.parametrize(
    ("image", "registry"),
    [("localhost/x:1", "localhost"), ("registry.example:5000/team/x", "registry.example:5000"),
     ("vllm/vllm-openai:latest", None), ("python:3.11", None)],
    ids=["localhost", "host-port", "short-name", "library"],
)  # fmt: skip
def test_registry_of(image: str, registry: str | None):
    assert registry_of(image) == registry


# ---- the Pulling phase under the supervisor ---------------------------------------------------


class FakeImageRuntime(FakeRuntime):
    """The fake runtime that also "pulls" images: each pull takes `pull_s` on the fake clock."""

    name = "container"

    def __init__(self, base: FakeRuntime, *, pull_s: float = 3.0, error: str | None = None) -> None:
        super().__init__(base.clock, base.behaviour, table=base.table)
        self.images: set[str] = set()
        self.pull_s = pull_s
        self.error = error
        self.pulls: list[str] = []  # every "engine" pull, in order
        self.running = 0  # engine pulls under way now
        self.most_at_once = 0
        self.guard = PullOnce()  # the container runtime's own guard (openeas.runtime.pulls)

    def has_image(self, image: str) -> bool:
        return image in self.images

    async def pull(self, image: str, *, docker_auth: Any = None, progress: Any = None) -> PullResult:
        async def engine_pull() -> None:
            self.pulls.append(image)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            try:
                await self.clock.sleep(self.pull_s)
            finally:
                self.running -= 1
            if self.error:
                raise PullError(self.error)
            self.images.add(image)

        t0 = self.clock.now()
        result = await self.guard.pull(image, self.has_image, engine_pull)
        return PullResult(result.pulled, self.clock.now() - t0)  # seconds on the fake clock


def image_world(tmp_path: Path, **kw: Any) -> tuple[World, FakeImageRuntime, Runtimes]:
    world = World.make(tmp_path)
    boxes = FakeImageRuntime(world.runtime, **kw)
    return world, boxes, Runtimes(world.runtime, boxes, engine="fake 1.0")


def add(world: World, n: int = 1) -> list[str]:
    doc = eas()
    doc["metadata"]["instance"] = n
    doc["containers"][0]["health_check"] = {"period_seconds": 1}
    world.store.create_service(parse_spec(doc))
    return [
        world.store.add_replica("svc", 1, workdir_root=world.cfg.data_dir / "replicas").id for _ in range(n)
    ]


async def until_ready(world: World, rids: list[str]) -> None:
    def ready() -> bool:
        rows = {r.id: r for r in world.store.replicas("svc")}
        return all(rows[rid].phase == P.READY for rid in rids)

    await world.clock.run_until(ready, limit_s=120)


async def test_pull_once_then_the_image_is_cached(tmp_path: Path):
    world, boxes, runtimes = image_world(tmp_path, pull_s=3.0)
    first, second = add(world, 2)
    tasks = []
    for rid in (first, second):
        sup = world.supervise(rid, runtimes)  # type: ignore[arg-type]
        tasks.append(sup[1])
    await until_ready(world, [first, second])
    # Both replicas found the image missing; the engine pulled it once (a double pull fails here).
    assert boxes.pulls == [IMAGE] and boxes.most_at_once == 1
    rows = {r.id: r for r in world.store.replicas("svc")}
    pulled = [r for r in rows.values() if P.PULLING in (r.phase_times or {})]
    assert pulled, "one replica went through Pulling"
    pulls = sorted((r.cold_start["pull"] for r in pulled), key=lambda p: "waited_for" in p)
    # One replica pulled (the fake pull's 3 s); the other waited those 3 s for that pull.
    assert pulls[0] == {"image": IMAGE, "cached": False, "seconds": 3.0}
    if len(pulls) == 2:
        waited = pulls[1]
        # It waited out that pull, whichever supervisor step it entered at (fake-clock steps; a
        # thread hop on a loaded machine lets virtual time run on: 5.0 s seen on 3 xdist workers).
        assert 2.5 <= waited.pop("seconds") <= 6.0
        assert waited == {"image": IMAGE, "cached": False, "waited_for": "another replica's pull"}
    for r in pulled:
        assert isinstance(r.cold_start["pull_s"], float)  # the Pulling span (stamped in wall time)
        assert r.runtime == "container"
    # The next replica finds the image on the node: no Pulling phase, the pull recorded as cached.
    (third,) = [world.store.add_replica("svc", 1, workdir_root=world.cfg.data_dir / "replicas").id]
    _, task = world.supervise(third, runtimes)  # type: ignore[arg-type]
    tasks.append(task)
    await until_ready(world, [third])
    row = world.store.get_replica(third)
    assert row is not None and P.PULLING not in row.phase_times
    assert row.cold_start["pull"] == {"image": IMAGE, "cached": True}
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_failed_pull_is_a_clear_failure_with_backoff(tmp_path: Path):
    world, boxes, runtimes = image_world(tmp_path, pull_s=1.0, error="manifest unknown")
    (rid,) = add(world)
    _, task = world.supervise(rid, runtimes)  # type: ignore[arg-type]

    def restarting() -> bool:
        return "Restarting" in world.reasons()

    await world.clock.run_until(restarting, limit_s=60)
    failed = [c for c in world.store.phases(rid) if c.phase == P.FAILED]
    assert failed and failed[0].message == f"cannot pull image {IMAGE}: manifest unknown"
    assert "PullFailed" in world.reasons()
    assert boxes.pulls == [IMAGE]  # one attempt, then the backoff (no tight loop)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_container_requested_without_an_engine_fails_clearly(tmp_path: Path):
    world = World.make(tmp_path)
    runtimes = Runtimes(world.runtime, engine_problem="no container engine: podman is not installed")
    doc = eas(metadata={"name": "svc", "instance": 1, "replica_runtime": "container"})
    world.store.create_service(parse_spec(doc))
    rid = world.store.add_replica("svc", 1, workdir_root=world.cfg.data_dir / "replicas").id
    _, task = world.supervise(rid, runtimes)  # type: ignore[arg-type]
    await world.clock.run_until(lambda: "NoRuntime" in world.reasons(), limit_s=60)
    failed = [c for c in world.store.phases(rid) if c.phase == P.FAILED]
    assert "metadata.replica_runtime is 'container' but no container engine: podman is not installed" in (
        failed[0].message or ""
    )
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_other_containers_join_the_main_ones_network():
    doc = eas(storage=[{"mount_path": "/mnt/data", "oss": {"path": "oss://b/m/"}}])
    doc["containers"].append({"command": "proxy --to 127.0.0.1:8000", "port": 8080, "env": {"K": "v"}})
    doc["containers"].append({"image": "localhost/logger:2", "command": "ship"})
    launch = build_container_launch(
        parse_spec(doc),
        replica_id="svc-1",
        data_dir="/d",
        host_port=21000,
        mounts={"/mnt/data": "/c"},
        workdir="/w",
    )
    first, second = (sidecar_run_args(launch, side) for side in launch.sidecars)
    assert pairs(first, "--name") == ["openeas-svc-1-1"] and pairs(second, "--name") == ["openeas-svc-1-2"]
    assert pairs(first, "--network") == ["container:openeas-svc-1"] and pairs(first, "--publish") == []
    assert "io.openeas.sidecar=1" in pairs(first, "--label") and "io.openeas.replica=svc-1" in pairs(
        first, "--label"
    )
    assert pairs(first, "--volume") == ["/c:/mnt/data:ro"]  # every container gets the spec's mounts
    assert pairs(first, "--env") == ["K", "PORT"] and launch.sidecars[0].env == {"K": "v", "PORT": "8080"}
    assert first[-5:] == [
        "--entrypoint",
        "/bin/sh",
        IMAGE,
        "-c",
        "exec proxy --to 127.0.0.1:8000",
    ]  # the main image
    assert second[-5:] == ["--entrypoint", "/bin/sh", "localhost/logger:2", "-c", "exec ship"]


@pytest.mark.parametrize(
    ("present", "on_path", "init"),
    [
        pytest.param({"/usr/libexec/podman/catatonit"}, {}, "/usr/libexec/podman/catatonit", id="podmans-own"),
        pytest.param(set(), {"tini": "/usr/bin/tini"}, "/usr/bin/tini", id="one-on-the-path"),
        pytest.param(set(), {}, None, id="none-then-no---init"),
    ],
)
def test_podman_init(present: set[str], on_path: dict[str, str], init: str | None):
    assert podman_init(on_path.get, present.__contains__) == init


def test_without_an_init_binary_containers_run_without_init():
    launch = build_container_launch(
        parse_spec(eas()), replica_id="svc-1", data_dir="/d", host_port=1, mounts={}, workdir="/w"
    )
    assert "--init" not in run_args(launch, init=False) and "--init" in run_args(launch)


@pytest.mark.parametrize(
    ("warnings", "metadata", "warned"),
    [
        pytest.param((LIMITS_UNAPPLIED,), {"cpu": 2}, True, id="cpu-not-enforced-is-said"),
        pytest.param((LIMITS_UNAPPLIED,), {"memory": 1024}, True, id="memory-not-enforced-is-said"),
        pytest.param((LIMITS_UNAPPLIED,), {}, False, id="no-limits-asked-nothing-to-say"),
        pytest.param((), {"cpu": 2}, False, id="limits-apply"),
    ],
)
def test_describe_says_when_limits_cannot_apply(warnings: tuple[str, ...], metadata: dict[str, Any], warned: bool):
    fake = FakeRuntime.__new__(FakeRuntime)
    runtimes = Runtimes(fake, fake, engine="podman 4.3.1", warnings=warnings)
    choice = runtimes.choose(parse_spec(eas(metadata={"name": "svc", **metadata})))
    assert choice.name == "container"
    said = [w for w in choice.warnings if "metadata.cpu/memory are not enforced on this node" in w]
    assert bool(said) is warned
