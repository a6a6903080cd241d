"""What a ``storage[].mount_path`` may be: it reaches a container engine's volume syntax
(``SOURCE:TARGET:MODE``, tmpfs ``TARGET:rw,size=N``), so it is checked strictly. Pure."""

from __future__ import annotations

# Host folders no mount may hide or be placed in (the engine mounts its own there); /dev/shm is the
# shared-memory tmpfs EAS's specs mount an in-memory empty_dir on.
RESERVED_MOUNT_ROOTS = ("/proc", "/sys", "/dev")
SHARED_MEMORY_PATH = "/dev/shm"


def mount_path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a ``mount_path`` (it reaches the engine's volume syntax), or None."""
    parts = path.rstrip("/").split("/")[1:]
    if any(p in ("", ".") for p in parts):
        return f"{path!r} is not normalised: write it without '//' or '/./'"
    if ":" in path or "," in path:
        return f"{path!r} must not contain ':' or ',' (they separate a container engine's volume options)"
    clean = path.rstrip("/")
    if clean == SHARED_MEMORY_PATH or clean.startswith(SHARED_MEMORY_PATH + "/"):
        return None
    for root in RESERVED_MOUNT_ROOTS:
        if clean == root or clean.startswith(root + "/"):
            return f"{path!r} is under {root}, which the engine provides: mount elsewhere (e.g. /mnt/data)"
    return None
