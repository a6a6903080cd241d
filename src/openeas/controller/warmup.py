"""Warmup: requests sent straight to a new replica before it is marked Ready.

The file (its format, limits and checks) is storage/warmup_file.py's; ``run_warmup`` sends its
requests; it is the default :class:`WarmupSender` of the supervisors (tests pass a fake runtime's).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import aiohttp

from openeas.controller.probe import base_url
from openeas.kernel.checks import WarmupReport, WarmupRequest
from openeas.storage.warmup_file import (
    MAX_WARMUP_FILE_BYTES,
    MAX_WARMUP_LINE_BYTES,
    check_warmup_file,
    load_warmup,
    parse_warmup,
)

MAX_ERRORS_KEPT = 10

__all__ = [
    "MAX_WARMUP_FILE_BYTES",
    "MAX_WARMUP_LINE_BYTES",
    "WarmupSender",
    "check_warmup_file",
    "load_warmup",
    "parse_warmup",
    "run_warmup",
]


# -- sending (I/O) ------------------------------------------------------------------------------------


class WarmupSender(Protocol):
    """Send warmup requests to a replica: ``run_warmup`` for real, a fake runtime's in tests."""

    def __call__(
        self, host: str, port: int, requests: Iterable[WarmupRequest], *, timeout_s: float
    ) -> Awaitable[WarmupReport]: ...


async def run_warmup(
    host: str,
    port: int,
    requests: Iterable[WarmupRequest],
    *,
    timeout_s: float,
    deadline_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> WarmupReport:
    """Send each request ``count`` times, one at a time, straight to ``host:port``.

    ``timeout_s`` bounds each request; ``deadline_s`` (optional) bounds the whole warmup, and
    requests left when it passes are reported as ``skipped``. Failures are counted, not raised:
    whether a failed warmup blocks readiness is the caller's decision.
    """
    requests = list(requests)
    url = base_url(host, port)
    start = clock()
    sent = failed = 0
    errors: list[str] = []
    total = sum(r.count for r in requests)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    # One keep-alive connection, like a client that warms the replica's connection path too.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=timeout) as session:
        for req in requests:
            for _ in range(req.count):
                if deadline_s is not None and clock() - start >= deadline_s:
                    return WarmupReport(
                        sent, failed, clock() - start, skipped=total - sent, errors=tuple(errors)
                    )
                sent += 1
                problem = await _send(session, url, req)
                if problem is not None:
                    failed += 1
                    if len(errors) < MAX_ERRORS_KEPT:
                        where = f"line {req.line}: " if req.line else ""
                        errors.append(f"{where}{req.method} {req.path}: {problem}")
    return WarmupReport(sent, failed, clock() - start, errors=tuple(errors))


async def _send(session: aiohttp.ClientSession, url: str, req: WarmupRequest) -> str | None:
    """None on a 2xx answer, else what went wrong."""
    try:
        async with session.request(
            req.method,
            url + req.path,
            data=req.body or None,
            headers=dict(req.headers),
            allow_redirects=False,
        ) as r:
            await r.read()  # the replica's work includes producing the whole body (and streams)
            return None if 200 <= r.status < 300 else f"HTTP {r.status}"
    except TimeoutError:
        return "timed out"
    except aiohttp.ClientError as e:
        return f"{type(e).__name__}: {e}"
