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
GIT_PROTOCOLS = "https:http:ssh:git:file"  # GIT_ALLOW_PROTOCOL: no ext:: (runs a command)


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
        steps = [["git", "clone", "--quiet", *([f"--branch={branch}"] if branch else []),
                  *([] if commit else ["--depth", "1"]), "--", repo, str(tmp)]]  # fmt: skip
        if commit:
            # --end-of-options: the commit is never read as an option ("--pathspec-from-file=...").
            # `switch`, not `checkout`: checkout takes what follows "--" as paths.
            steps.append(["git", "-C", str(tmp), "switch", "--quiet", "--detach", "--end-of-options", commit])
        # Never wait for a password; only network transports and local repositories (the host-path
        # rule decides which local ones): never ext:: (a command) or another helper.
        env = {"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin", "GIT_ALLOW_PROTOCOL": GIT_PROTOCOLS}
        for cmd in steps:
            what = "checkout" if "switch" in cmd else "clone"
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
