"""Where `oss://bucket/key` points on this node.

EAS specs mount OSS buckets. Without OSS credentials configured, OpenEAS maps `oss://` to a
local folder (the server's `--oss-root`, default `<data-dir>/oss`), so a spec written for EAS
runs unchanged against a local "bucket". With `OPENEAS_OSS_ENDPOINT` set (and the `oss` extra
installed), `oss://` URLs go to ossfs unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

from openeas.errors import MountError


def resolve_url(url: str, oss_root: Path | None, *, where: str = "oss.path") -> str:
    """The fsspec URL for `url`; `oss://` → a `file://` URL inside `oss_root`, never outside it."""
    if url.startswith("oss://") and oss_root is not None and not os.environ.get("OPENEAS_OSS_ENDPOINT"):
        key = url[len("oss://") :]
        root = oss_root.resolve()
        local = (root / key.lstrip("/")).resolve()
        if key.startswith("/") or (local != root and root not in local.parents):
            raise MountError(f"{where}: {url!r} escapes the object-storage root (write oss://bucket/key)")
        return local.as_uri() + ("/" if url.endswith("/") else "")
    return url
