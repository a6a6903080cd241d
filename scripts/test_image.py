"""Build the container tests' image once per machine, from Debian's packages (no image registry).

``python scripts/test_image.py`` makes sure ``localhost/openeas-test-python:bookworm`` exists in
the local engine: a minimal Debian bookworm root file system with python3 and python3-aiohttp
(enough to run OpenEAS's test server from a mounted folder), made by ``debootstrap`` (~40 s) and
imported with ``<engine> import`` (~6 s). A second run finds the image and returns at once.
Prints the image name; exit 1 with the reason when it cannot be built.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

IMAGE = "localhost/openeas-test-python:bookworm"
PACKAGES = "python3,python3-aiohttp"
SUITE = "bookworm"


def engine_cmd(engine: str, conf_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The engine binary and its environment (podman gets OpenEAS's containers.conf)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from openeas.runtime.engine import engine_env

    path = shutil.which(engine)
    if path is None:
        raise SystemExit(f"error: {engine} is not installed")
    return [path], {**os.environ, **engine_env(engine, conf_dir)}


def ensure_image(engine: str = "podman", *, image: str = IMAGE, conf_dir: Path | None = None) -> str:
    conf = conf_dir or Path(tempfile.gettempdir()) / "openeas-test-image"
    conf.mkdir(parents=True, exist_ok=True)
    cmd, env = engine_cmd(engine, conf)
    exists = [*cmd, "image", "inspect", "--format", "{{.Id}}", image]
    with open(conf / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build per machine, even with parallel test runs
        if subprocess.run(exists, env=env, capture_output=True).returncode == 0:
            return image
        debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
        if not os.path.exists(debootstrap):
            raise SystemExit("error: debootstrap is not installed (Debian: apt-get install debootstrap)")
        with tempfile.TemporaryDirectory(prefix="openeas-rootfs-") as tmp:
            root = Path(tmp) / "rootfs"
            print(f"[test-image] debootstrap {SUITE} with {PACKAGES} (about 40 s)", file=sys.stderr)
            subprocess.run(
                [debootstrap, "--variant=minbase", f"--include={PACKAGES}", SUITE, str(root)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
            subprocess.run(
                [*cmd, "import", "-", image], stdin=tar.stdout, env=env, check=True, capture_output=True
            )
            if tar.wait() != 0:
                raise SystemExit("error: tar of the root file system failed")
    return image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="podman", choices=["podman", "docker"])
    args = ap.parse_args()
    print(ensure_image(args.engine))


if __name__ == "__main__":
    main()
