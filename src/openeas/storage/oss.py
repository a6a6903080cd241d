"""Where `oss://bucket/key` points on this node.

EAS specs mount OSS buckets. Without OSS credentials configured, OpenEAS maps `oss://` to a
local folder (the server's `--oss-root`, default `<data-dir>/oss`), so a spec written for EAS
runs unchanged against a local "bucket". With `OPENEAS_OSS_ENDPOINT` set (and the `oss` extra
installed), `oss://` URLs go to ossfs unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path


def resolve_url(url: str, oss_root: Path | None) -> str:
    if url.startswith("oss://") and oss_root is not None and not os.environ.get("OPENEAS_OSS_ENDPOINT"):
        return (oss_root / url[len("oss://") :]).as_uri() + ("/" if url.endswith("/") else "")
    return url
