"""What ``deploy --dry-run`` shows of a spec's launch (pure): for every container, the command
that will actually run, its port, its env (secret values masked) and its mounts.

- **container runtime**: the engine's whole ``run`` command of each container, exactly as
  :mod:`openeas.runtime.container_args` builds it at start, with placeholders for what only a
  start knows (``<replica>``, ``<host port>``, ``<node cache …>``); and the argv inside the image.
- **process runtime**: the command after the rewrite the replica gets (the container port → the
  replica's port, each mount_path → the replica's folder), with placeholders for those.

A storage entry that shares its mount_path with a later one is listed as not mounted (the later
entry wins, as a later mount covers an earlier one in a container).
"""

from __future__ import annotations

import re
from typing import Any

from openeas.runtime.container_args import build_container_launch, run_args, sidecar_run_args
from openeas.runtime.launch import build_argv, rewrite_mounts, rewrite_port
from openeas.spec.load import builtin_processor_note
from openeas.spec.models import ServiceSpec, StorageMount

SECRET_NAME_RE = re.compile(r"KEY|TOKEN|SECRET|PASSW|PWD|CREDENTIAL|AUTH|PRIVATE", re.IGNORECASE)
MASK = "***"
REPLICA_PORT = "<replica port>"
HOST_PORT = "<host port>"


def mask_env(env: dict[str, str]) -> dict[str, str]:
    """The env with the values of secret-looking names (…KEY, …TOKEN, …PASSWORD…) as ``***``."""
    return {k: MASK if SECRET_NAME_RE.search(k) else v for k, v in sorted(env.items())}


def mount_rows(spec: ServiceSpec) -> list[dict[str, str]]:
    shadowed = spec.shadowed_mounts()
    rows = []
    for i, m in enumerate(spec.storage):
        source, mode = _source(m)
        if i in shadowed:
            mode = f"not mounted: storage[{shadowed[i]}] has the same mount_path and is mounted there"
        rows.append({"mount_path": m.mount_path, "source": source, "mode": mode})
    return rows


def _source(m: StorageMount) -> tuple[str, str]:
    if m.oss is not None:
        return f"{m.oss.path} (node cache)", "ro" if m.oss.readOnly else "overlay"
    if m.nfs is not None:
        return f"nfs {m.nfs.get('server', '')}:{m.nfs.get('path', '')}", "rw"
    if m.git is not None:
        return f"git {m.git.repo} {m.git.commit or m.git.branch or 'HEAD'} (node cache)", "ro"
    if m.cache is not None:
        return f"cache of {m.cache.path}", "ro"
    tmpfs = m.empty_dir is not None and m.empty_dir.in_memory
    return ("tmpfs" if tmpfs else "empty folder per replica"), "rw"


def launch_plan(spec: ServiceSpec, runtime: str | None, engine: str | None = None) -> dict[str, Any]:
    """The main container's plan (``launch``, as before) plus ``containers``: every container's."""
    c = spec.main
    mounts = mount_rows(spec)
    if runtime == "container":
        how = f"in {c.image}: /bin/sh -c, port {c.port} inside, published on a free 127.0.0.1 port"
        plans = _container_plans(spec, engine or "podman")
    else:
        how = f"on the host: port {c.port} and mount paths rewritten to the replica's port and folders"
        plans = _process_plans(spec)
    return {
        "container": 0,
        "image": c.image,
        "command": c.command,
        "script": c.script,
        "port": c.port,
        "how": how,
        "env": sorted(c.env_dict()),
        "mounts": mounts,
        "containers": plans,
    }


def _container_plans(spec: ServiceSpec, engine: str) -> list[dict[str, Any]]:
    paths = {m.mount_path.rstrip("/"): f"<node cache of {m.mount_path.rstrip('/')}>" for m in spec.storage}
    launch = build_container_launch(
        spec, replica_id="<replica>", data_dir="<data dir>", host_port=0, mounts=paths,
        workdir="<replica dir>",
    )  # fmt: skip
    published = f"127.0.0.1:{HOST_PORT}:"
    main_args = [a.replace("127.0.0.1:0:", published) for a in run_args(launch, engine=engine)]
    out = [_one(0, spec.main.image, [engine, *main_args], launch.argv, launch.env, spec.main.port)]
    for i, side in enumerate(launch.sidecars, start=1):
        argv = [engine, *sidecar_run_args(launch, side, engine=engine)]
        out.append(_one(i, side.image, argv, side.argv, side.env, spec.containers[i].port))
    return out


def _process_plans(spec: ServiceSpec) -> list[dict[str, Any]]:
    folders = {m.mount_path.rstrip("/"): f"<replica dir>{m.mount_path.rstrip('/')}" for m in spec.storage}
    out = []
    for i, c in enumerate(spec.containers):
        text = c.command or c.script or ""
        sentinel = _absent_number(text)
        text = rewrite_port(text, c.port, sentinel).replace(str(sentinel), REPLICA_PORT)
        text = rewrite_mounts(text, folders, shell=False)
        argv = build_argv(text if c.command else None, None if c.command else text)
        env = {**c.env_dict(), "PORT": REPLICA_PORT}
        out.append(_one(i, None, None, argv, env, c.port))
    return out


def _one(
    index: int,
    image: str | None,
    engine_argv: list[str] | None,
    argv: list[str],
    env: dict[str, str],
    port: int,
) -> dict[str, Any]:
    row: dict[str, Any] = {"container": index, "image": image, "runs": argv, "port": port}
    row["env"] = mask_env(env)
    if engine_argv is not None:
        row["engine_command"] = engine_argv  # env values pass through the CLI's environment
    return row


def _absent_number(text: str) -> int:
    """A port-sized number that ``text`` does not contain (a placeholder for the rewrite)."""
    n = 65535
    while str(n) in text:
        n -= 1
    return n


def mount_warnings(spec: ServiceSpec) -> list[str]:
    """One line per storage entry that another at the same mount_path covers, and the note for
    a built-in ``processor`` written next to ``containers``."""
    out = [
        f"storage[{i}] and storage[{j}] have the same mount_path {spec.storage[j].mount_path!r}: "
        f"storage[{j}] (the later one) is mounted there, storage[{i}] is not fetched or mounted"
        for i, j in sorted(spec.shadowed_mounts().items())
    ]
    processor = (spec.__pydantic_extra__ or {}).get("processor")
    if processor:
        out.append(builtin_processor_note(str(processor)))
    return out


def normalized_spec(spec: ServiceSpec) -> dict[str, Any]:
    """The spec as OpenEAS reads it: one spelling per setting (dotted keys nested, the name in
    metadata), defaults filled in; ``dockerAuth`` and secret-looking env values masked."""
    canonical = spec.model_copy()
    canonical._layout = []  # not given back in the user's spelling (ServiceSpec._as_written)
    out = canonical.model_dump(mode="json", by_alias=True, exclude_none=True)
    if out.get("dockerAuth"):
        out["dockerAuth"] = MASK
    for c in out.get("containers") or []:
        for e in c.get("env") or []:
            if isinstance(e, dict) and SECRET_NAME_RE.search(str(e.get("name", ""))):
                e["value"] = MASK
    return out
