"""The CLI refuses spec files it cannot safely read, before it talks to any server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: "/dev/zero", "is not a regular file"),
        (lambda d: (os.mkfifo(d / "fifo"), str(d / "fifo"))[1], "is not a regular file"),
        (lambda d: str(d), "is not a regular file"),
        (lambda d: ((d / "big.json").write_bytes(b" " * (16 * 1024 * 1024 + 1)), str(d / "big.json"))[1], "larger than"),
        (lambda d: ((d / "bin.json").write_bytes(b"\xff\xfe{}"), str(d / "bin.json"))[1], "not UTF-8"),
    ],
    ids=["device", "fifo", "directory", "over-16MiB", "not-utf8"],
)
def test_deploy_refuses_unreadable_spec_files(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path)
    env = {**os.environ, "OPENEAS_SERVER": "http://127.0.0.1:9", "OPENEAS_ADMIN_TOKEN": "x"}
    proc = subprocess.run(
        [sys.executable, "-m", "openeas.cli", "deploy", "-f", path],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
