"""Process vs container runtime, same server: ``python bench/runtime.py [--starts 5] [--duration 5]``.

One OpenEAS server runs two services of the same test server (OpenEAS's own, run by this
interpreter and virtualenv, which the container gets bind-mounted at the same paths, so both run
the very same binary and libraries): ``proc`` on the process runtime and ``box`` in podman
containers of the test image (``scripts/test_image.py``). It measures

1. replica start → Ready (the cold start's ``total_s``, and its ``start_s`` part: process or
   container up until the first good probe), median of ``--starts`` starts of each (scale 0 → 1);
   goal: container ≤ process + 0.3 s;
2. gateway throughput to one replica of each, with wrk (``--duration`` seconds, median of
   ``--runs``): goal container ≥ 0.9 x process.

Needs root with podman (``scripts/setup.sh`` installs it); traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from openeas.sdk import Client  # noqa: E402


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


gw = _load(ROOT / "bench" / "gateway.py")
test_image = _load(ROOT / "scripts" / "test_image.py")


def start_server(data: Path) -> tuple[subprocess.Popen[bytes], Client]:
    port, gport = gw.free_port(), gw.free_port()
    log = open(data / "server.out", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "openeas.cli", "server", "--data-dir", str(data), "--port", str(port),
         "--gateway-port", str(gport),
         # its bucket lives in data/; the container mounts the host's interpreter, venv and source
         *(a for d in (data, Path(sys.base_prefix), Path(sys.prefix), ROOT / "src")
           for a in ("--allow-host-path", str(d)))],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    info_path = data / "server.json"
    deadline = time.monotonic() + 60
    while not info_path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start: {(data / 'server.out').read_text()[-2000:]}")
        time.sleep(0.05)
    info = json.loads(info_path.read_text())
    return proc, Client(info["api_url"], info["admin_token"], gateway_url=info["gateway_url"])


def bucket(data: Path) -> Path:
    b = data / "bucket"
    pkg = b / "code" / "openeas"
    shutil.copytree(ROOT / "src" / "openeas" / "testserver", pkg / "testserver",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(ROOT / "src" / "openeas" / "__init__.py", pkg / "__init__.py")
    return b


def spec(name: str, b: Path, image: str | None) -> dict[str, Any]:
    """The same server both ways: this interpreter with this virtualenv. The container gets the
    interpreter's folders bind-mounted at the same paths (``nfs`` mounts of host folders), so it
    runs the very same binary and libraries and only the runtime differs."""
    host = "0.0.0.0" if image else "127.0.0.1"
    command = f"exec {sys.executable} -m openeas.testserver --host {host} --port 8000"
    container: dict[str, Any] = {
        "command": command,
        "port": 8000,
        "env": [{"name": "PYTHONPATH", "value": str(ROOT / "src")}],
    }
    md: dict[str, Any] = {"name": name, "instance": 1, "eas": {"termination_grace_period": 5}}
    storage: list[dict[str, Any]] = [{"mount_path": "/mnt/data", "oss": {"path": b.as_uri() + "/"}}]
    if image:
        container["image"] = image
        md["replica_runtime"] = "container"
        folders = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), ROOT / "src"}
        storage += [{"mount_path": str(f), "nfs": {"path": str(f)}} for f in sorted(folders)]
    else:
        md["replica_runtime"] = "process"
    return {"metadata": md, "containers": [container], "storage": storage}


def one_start(c: Client, name: str) -> dict[str, float]:
    c.scale(name, 0)
    deadline = time.monotonic() + 60
    while c.describe(name)["replicas"]:
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: replicas did not stop")
        time.sleep(0.05)
    c.scale(name, 1)
    detail = c.wait_ready(name, 1, timeout_s=120)
    cold = detail["replicas"][0]["cold_start"]
    return {"total_s": cold["total_s"], "start_s": cold["start_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--conns", type=int, default=8)
    args = ap.parse_args()
    image = test_image.ensure_image("podman")
    with gw.bench_dir() as tmp:
        data = tmp / "data"
        data.mkdir()
        proc, c = start_server(data)
        try:
            b = bucket(data)
            for name, img in (("proc", None), ("box", image)):
                c.deploy(spec(name, b, img))
                c.wait_ready(name, 1, timeout_s=120)
            starts: dict[str, list[dict[str, float]]] = {"proc": [], "box": []}
            for _ in range(args.starts):
                for name in starts:  # interleaved: machine noise hits both alike
                    starts[name].append(one_start(c, name))
            tput = {}
            for name in ("proc", "box"):
                token = c.call_info(name)["token"]
                url = f"{c.gateway_url}/api/predict/{name}/echo"
                runs = [
                    gw.wrk(url, args.duration, args.conns, [f"Authorization: {token}"], [])
                    for _ in range(args.runs)
                ]
                tput[name] = gw.median(runs)
        finally:
            for name in ("proc", "box"):
                try:
                    c.delete(name)
                except Exception:
                    pass
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if not c.list():
                        break
                except Exception:
                    break
                time.sleep(0.2)
            proc.terminate()
            proc.wait(30)

    def med(name: str, key: str) -> float:
        return statistics.median(s[key] for s in starts[name])

    print(f"\nreplica start → Ready, median of {args.starts} (seconds)")
    print(f"{'':28}{'process':>10}{'container':>11}{'diff':>9}   goal")
    for key, label in (("total_s", "Pending → Ready (total)"), ("start_s", "start → first good probe")):
        p, b2 = med("proc", key), med("box", key)
        goal = "container ≤ process + 0.3 s" if key == "total_s" else ""
        print(f"{label:28}{p:>10.3f}{b2:>11.3f}{b2 - p:>+9.3f}   {goal}")
    p, b2 = tput["proc"], tput["box"]
    print(f"\ngateway → one replica, wrk {args.conns} connections, {args.duration:g}s x {args.runs} (median)")
    print(f"{'':28}{'process':>10}{'container':>11}{'ratio':>9}   goal")
    print(f"{'requests/s':28}{p.rps:>10.0f}{b2.rps:>11.0f}{b2.rps / p.rps:>9.2f}x   ≥ 0.9x")
    print(f"{'p50 ms':28}{p.p50_ms:>10.2f}{b2.p50_ms:>11.2f}{b2.p50_ms / p.p50_ms:>9.2f}x")
    print(f"{'p99 ms':28}{p.p99_ms:>10.2f}{b2.p99_ms:>11.2f}{b2.p99_ms / p.p99_ms:>9.2f}x")
    print(f"{'errors':28}{p.errors:>10}{b2.errors:>11}")


if __name__ == "__main__":
    main()
