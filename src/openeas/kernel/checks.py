"""What a replica's checks found: one readiness probe's result, the warmup requests and the
warmup's report. The supervisors act on them; a fake runtime answers with them
(``openeas.runtime.fake``) without sockets. Standard library only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str
    """Human-readable, for events and phase messages: "HTTP 503 from /health", "connection refused …"."""


@dataclass(frozen=True)
class WarmupRequest:
    method: str = "POST"
    path: str = "/"
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    count: int = 1
    """How many times the request is sent (sequentially)."""
    line: int = 0
    """Line in the warmup file where this request starts (0 when built in code)."""


@dataclass(frozen=True)
class WarmupReport:
    sent: int
    """Requests sent, answered or not."""
    failed: int
    """Of ``sent``: non-2xx answers, timeouts and connection errors."""
    duration_s: float
    skipped: int = 0
    """Requests not sent because ``deadline_s`` passed."""
    errors: tuple[str, ...] = ()
    """The first few failures, e.g. "line 2: POST /v1/completions: HTTP 500"."""

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.skipped == 0
