"""``containers[].prepare.pythonRequirements``: packages installed once per node, before the command.

EAS installs a service's ``pythonRequirements`` (a list of pip requirement strings) or the file
at ``pythonRequirementsPath`` before it runs the command. OpenEAS installs them with the
server's own pip into a folder of the node cache (``pip install --target``), keyed by the Python
version and the requirements (the list, or the file's content): the first replica on a node
installs, every later replica with the same requirements (the second replica, the next version)
finds the folder and only puts it first on ``PYTHONPATH``. A build is atomic (made in a temporary
folder, renamed when pip succeeded) and serialized by a lock per key, so two replicas starting
together install once. A failed install raises :class:`PrepareError` with pip's last lines.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# pip may take minutes for large packages; this bounds a hung install, seconds.
INSTALL_TIMEOUT_S = 1800.0
ERROR_LINES = 5


class PrepareError(Exception):
    """The requirements could not be installed; the message has pip's last lines."""


@dataclass(frozen=True)
class Prepared:
    path: str  # the folder to put first on PYTHONPATH
    hit: bool  # found in the node cache: nothing installed
    seconds: float
    requirements: int  # how many requirement lines


def requirements_key(lines: list[str], python: str = sys.version) -> str:
    """The node-cache key of a requirement list for this Python (order-insensitive, blanks ignored)."""
    clean = sorted({ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")})
    digest = hashlib.sha256("\n".join([python.split()[0], *clean]).encode()).hexdigest()
    return digest[:32]


def ensure_requirements(cache_root: Path, lines: list[str], *, python: str = sys.executable) -> Prepared:
    """Install ``lines`` into the node cache unless already there (see the module docstring)."""
    t0 = time.monotonic()
    clean = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    root = Path(cache_root) / "python"
    root.mkdir(parents=True, exist_ok=True)
    key = requirements_key(clean)
    final = root / key
    if final.is_dir():
        return Prepared(str(final), True, time.monotonic() - t0, len(clean))
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if final.is_dir():  # another replica installed it while we waited
            return Prepared(str(final), True, time.monotonic() - t0, len(clean))
        tmp = root / f"{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        reqs = root / f"{key}.txt"
        reqs.write_text("\n".join(clean) + "\n")
        cmd = [python, "-m", "pip", "install", "--no-input", "--disable-pip-version-check", "--quiet",
               "--target", str(tmp), "-r", str(reqs)]  # fmt: skip
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            shutil.rmtree(tmp, ignore_errors=True)
            raise PrepareError(f"pip install did not finish within {INSTALL_TIMEOUT_S:.0f}s") from None
        if res.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tail = [ln for ln in (res.stderr or res.stdout).splitlines() if ln.strip()][-ERROR_LINES:]
            raise PrepareError("pip install failed: " + " | ".join(tail))
        tmp.rename(final)
    return Prepared(str(final), False, time.monotonic() - t0, len(clean))
