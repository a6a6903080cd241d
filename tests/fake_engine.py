#!/usr/bin/env python3
"""A hand-written fake of a container engine's CLI (podman/docker), for the pull tests: it
answers ``image inspect`` and ``pull`` only, and records every pull in ``$FAKE_ENGINE_STATE``:
the argv, the credentials file's content and mode as the engine would read them, and how many
pulls ran at once (a double or concurrent pull is visible)."""

import fcntl
import json
import os
import sys
import time
from pathlib import Path

state = Path(os.environ["FAKE_ENGINE_STATE"])
argv = sys.argv[1:]
config = None
if argv[:1] == ["--config"]:  # docker's global option: the folder holding config.json
    config, argv = Path(argv[1]) / "config.json", argv[2:]
image = argv[-1]
marker = state / ("image-" + image.replace("/", "_").replace(":", "_"))


def bump(delta: int) -> int:
    with open(state / "lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        running = state / "running"
        n = int(running.read_text() or 0) if running.exists() else 0
        n += delta
        running.write_text(str(n))
        return n


if argv[:2] == ["image", "inspect"]:
    sys.exit(0 if marker.exists() else 1)
if argv[0] == "pull":
    auth = Path(argv[argv.index("--authfile") + 1]) if "--authfile" in argv else config
    now = bump(1)
    record = {"argv": sys.argv[1:], "at_once": now}
    if auth is not None:
        record["auth"] = json.loads(auth.read_text())
        record["auth_mode"] = oct(auth.stat().st_mode & 0o777)
        record["folder_mode"] = oct(auth.parent.stat().st_mode & 0o777)
    print(f"Trying to pull {image}...", flush=True)
    time.sleep(0.4)
    marker.touch()
    bump(-1)
    with open(state / "pulls.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    sys.exit(0)
sys.exit(f"fake engine: unexpected {sys.argv[1:]}")
