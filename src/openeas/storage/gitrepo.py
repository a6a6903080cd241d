"""``storage[].git``: a repository cloned once per node into the cache, mounted read-only.

The clone lives under ``DATA/cache/git/<key>/`` where the key is the repository URL, branch and
commit: the second replica on the node, and the next version with the same source, reuse it.
With ``commit`` the content is pinned; without it, the branch head at the first clone on this node
is used until the cache entry is removed (write a commit for reproducible deploys). A clone is
atomic (made in a temporary folder, renamed when git succeeded) and serialized by a lock per key.
Credentials are not handled here: a private repository needs them in the URL's credential
helper setup of the node. Errors are :class:`MountError` with git's last line.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import time
from pathlib import Path

from openeas.errors import MountError

CLONE_TIMEOUT_S = 600.0


def clone_once(
    cache_root: Path, repo: str, branch: str | None, commit: str | None, *, where: str
) -> tuple[Path, bool, float]:
    """(folder, cache hit, seconds) of ``repo`` at ``branch``/``commit`` on this node."""
    t0 = time.monotonic()
    key = hashlib.sha256(f"{repo}\n{branch or ''}\n{commit or ''}".encode()).hexdigest()[:32]
    root = Path(cache_root) / "git"
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    if final.is_dir():
        return final, True, time.monotonic() - t0
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if final.is_dir():
            return final, True, time.monotonic() - t0
        tmp = root / f"{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        steps = [["git", "clone", "--quiet", *(["--branch", branch] if branch else []),
                  *([] if commit else ["--depth", "1"]), "--", repo, str(tmp)]]  # fmt: skip
        if commit:
            steps.append(["git", "-C", str(tmp), "checkout", "--quiet", "--detach", commit])
        env = {"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin"}  # never wait for a password
        for cmd in steps:
            what = "checkout" if "checkout" in cmd else "clone"
            try:
                res = subprocess.run(
                    cmd,
                    capture_output=True,
                    text=True,
                    timeout=CLONE_TIMEOUT_S,
                    stdin=subprocess.DEVNULL,
                    env=env,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise MountError(f"{where}: git {what} failed: {exc}") from None
            if res.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
                raise MountError(f"{where}: git {what} failed: {lines[-1] if lines else res.returncode}")
        tmp.rename(final)
    return final, False, time.monotonic() - t0
