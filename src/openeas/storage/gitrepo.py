"""``storage[].git``: a repository cloned once per node into the cache, mounted read-only.

The clone lives under ``DATA/cache/git/<key>/`` where the key is the repository URL, branch and
commit: the second replica on the node, and the next version with the same source, reuse it.
With ``commit`` the content is pinned; without it, the branch head at the first clone on this node
is used until the cache entry is removed (write a commit for reproducible deploys). A clone is
atomic (made in a temporary folder, renamed when git succeeded) and serialized by a lock per key.
Credentials are not handled here: a private repository needs them in the URL's credential
helper setup of the node. Errors are :class:`MountError` with git's last line.

Modes: a clone of a local repository keeps its restrictions (a 0700 repository gives a clone with
no group or other bits anywhere); with an ``owner`` (replicas running as users of their own) the
clone lives in that user's cache and is handed to it, owner-only, before it is renamed into place.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

from openeas.errors import MountError
from openeas.runtime.identity import ReplicaUser, hand_over

CLONE_TIMEOUT_S = 600.0
GIT_PROTOCOLS = "https:http:ssh:git:file"  # GIT_ALLOW_PROTOCOL: no ext:: (runs a command)


def clone_once(
    cache_root: Path,
    repo: str,
    branch: str | None,
    commit: str | None,
    *,
    where: str,
    owner: ReplicaUser | None = None,
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
        _keep_restrictions(tmp, repo)
        if owner is not None:
            hand_over(tmp, owner)
        tmp.rename(final)
    return final, False, time.monotonic() - t0


def _keep_restrictions(clone: Path, repo: str) -> None:
    """Take away from every file of ``clone`` the group/other bits the local ``repo`` lacks."""
    local = repo[len("file://") :] if repo.startswith("file://") else repo
    try:
        src = os.stat(local)
    except OSError:  # a remote repository: nothing to keep
        return
    keep = 0o700 | stat.S_IMODE(src.st_mode) & 0o077
    for root, dirs, files in os.walk(clone):
        for name in [*dirs, *files]:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                os.chmod(p, stat.S_IMODE(os.lstat(p).st_mode) & keep)
    os.chmod(clone, stat.S_IMODE(os.stat(clone).st_mode) & keep)
