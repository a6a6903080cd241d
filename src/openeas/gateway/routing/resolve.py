"""Owns the request-path grammar: a request target resolved to (service, upstream path).

``/api/predict/<service>[/sub/path][?query]`` → ``("<service>", b"/<sub/path>[?query]")``; the
upstream path is ``/`` when there is no sub path. Kept apart from the proxy because service groups
(``<group>.<service>``) will extend the lookup.
"""

from __future__ import annotations

PREDICT_PREFIX = b"/api/predict/"
_PREFIX_LEN = len(PREDICT_PREFIX)


def split_predict_path(url: bytes) -> tuple[str, bytes] | None:
    """Split a request target; None when it is not under ``/api/predict/<service>``."""
    if not url.startswith(PREDICT_PREFIX):
        return None
    rest = url[_PREFIX_LEN:]
    slash = rest.find(b"/")
    query = rest.find(b"?")
    if query != -1 and (slash == -1 or query < slash):
        service, upath = rest[:query], b"/" + rest[query:]
    elif slash != -1:
        service, upath = rest[:slash], rest[slash:]
    else:
        service, upath = rest, b"/"
    if not service:
        return None
    return service.decode("latin-1"), upath
