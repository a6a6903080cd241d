"""Readiness probes: one probe (I/O) and the pure state machine that decides when to probe and
what a run of results means.

``probe_once`` does a single HTTP GET (``HealthCheck.http_get``; 2xx/3xx = ok, redirects are not
followed) or, without ``http_get``, a TCP connect; it is the default :class:`Probe` of the
supervisors (tests pass a fake runtime's). ``ProbeTracker`` holds no clock: every method takes
``now`` (seconds, any monotonic origin) and delays compare timestamps, never count ticks.
"""

from __future__ import annotations

import asyncio
import enum
import errno
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from openeas.kernel.checks import ProbeResult
from openeas.runtime.identity import ReplicaUser
from openeas.spec.models import HealthCheck

# What a replica without a health_check gets: a TCP connect probe with the spec's defaults.
DEFAULT_CHECK = HealthCheck()
USER_AGENT = "openeas-probe/1"


class Probe(Protocol):
    """Probe a replica once: ``probe_once`` for real, a fake runtime's ``probe`` in tests."""

    def __call__(self, host: str, port: int, check: HealthCheck | None) -> Awaitable[ProbeResult]: ...


def base_url(host: str, port: int) -> str:
    """``http://host:port`` with an IPv6 literal bracketed."""
    h = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{h}:{port}"


def probe_port(check: HealthCheck | None, *, container_port: int, replica_port: int) -> int:
    """The port to probe for a replica whose ``container_port`` (spec numbering) was rewritten to
    ``replica_port``: an ``http_get.port`` equal to the container port (or absent) follows the
    rewrite; any other ``http_get.port`` is a separate health port and is used as written."""
    if check is None or check.http_get is None or check.http_get.port is None:
        return replica_port
    return replica_port if check.http_get.port == container_port else check.http_get.port


async def probe_once(
    host: str,
    port: int,
    check: HealthCheck | None,
    *,
    timeout_s: float | None = None,
    session: aiohttp.ClientSession | None = None,
) -> ProbeResult:
    """Probe ``host:port`` once; never raises for network trouble (that is a failed probe).

    ``port`` is probed as given: the caller resolves it (see ``probe_port``). ``timeout_s``
    overrides ``check.timeout_seconds``. ``session`` lets a caller that probes often reuse one
    ``aiohttp.ClientSession``; without it a short-lived one is made per probe.
    """
    check_ = check or DEFAULT_CHECK
    timeout = check_.timeout_seconds if timeout_s is None else timeout_s
    if check_.http_get is not None:
        path = check_.http_get.path if check_.http_get.path.startswith("/") else "/" + check_.http_get.path
        return await _http_probe(host, port, path, timeout, session)
    return await _tcp_probe(host, port, timeout)


async def _http_probe(
    host: str, port: int, path: str, timeout: float, session: aiohttp.ClientSession | None
) -> ProbeResult:
    url = base_url(host, port) + path
    try:
        async with asyncio.timeout(timeout):
            if session is not None:
                status = await _get_status(session, url)
            else:
                connector = aiohttp.TCPConnector(force_close=True)
                async with aiohttp.ClientSession(connector=connector) as s:
                    status = await _get_status(s, url)
    except TimeoutError:
        return ProbeResult(False, f"no answer from {path} within {timeout:g}s")
    except aiohttp.ClientConnectorError as e:
        return ProbeResult(False, _connect_error(e.os_error, host, port))
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
        if (
            isinstance(e, aiohttp.ServerDisconnectedError)
            or isinstance(e.__cause__, ConnectionResetError)
            or (e.errno == errno.ECONNRESET)
        ):
            return ProbeResult(False, f"connection closed before {path} answered")
        return ProbeResult(False, f"GET {path} failed: {type(e).__name__}: {e}")
    except aiohttp.ClientError as e:
        return ProbeResult(False, f"GET {path} failed: {type(e).__name__}: {e}")
    return ProbeResult(200 <= status < 400, f"HTTP {status} from {path}")


async def _get_status(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url, allow_redirects=False, headers={"User-Agent": USER_AGENT}) as r:
        return r.status


async def _tcp_probe(host: str, port: int, timeout: float) -> ProbeResult:
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return ProbeResult(False, f"TCP connect to {host}:{port} timed out after {timeout:g}s")
    except OSError as e:
        return ProbeResult(False, _connect_error(e, host, port))
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass  # the peer reset the connection we are closing anyway: the connect succeeded
    return ProbeResult(True, f"TCP connect to {host}:{port} ok")


def _connect_error(e: OSError, host: str, port: int) -> str:
    if isinstance(e, ConnectionRefusedError):
        return f"connection refused by {host}:{port}"
    return f"cannot connect to {host}:{port}: {e.strerror or e}"


async def run_exec_probe(
    argv: list[str],
    *,
    cwd: str | None,
    env: dict[str, str] | None,
    timeout_s: float,
    user: ReplicaUser | None = None,
) -> ProbeResult:
    """Run an ``exec`` check's command (as the replica's ``user`` when set); exit status 0 passes.
    Never raises for the command's trouble."""
    shown = " ".join(argv[-3:]) if len(argv) > 3 else " ".join(argv)
    who: dict[str, Any] = {}
    if user is not None:
        who = {"user": user.uid, "group": user.gid, "extra_groups": []}
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            **who,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as e:
        return ProbeResult(False, f"exec {shown!r}: {e.strerror or e}")
    try:
        async with asyncio.timeout(timeout_s):
            _, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return ProbeResult(False, f"exec {shown!r} did not finish within {timeout_s:g}s")
    if proc.returncode == 0:
        return ProbeResult(True, f"exec {shown!r} exited 0")
    tail = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
    return ProbeResult(False, f"exec {shown!r} exited {proc.returncode}" + (f": {tail[0]}" if tail else ""))


class Transition(enum.Enum):
    """What one recorded result changed."""

    BECAME_READY = "became_ready"
    BECAME_UNREADY = "became_unready"


@dataclass
class ProbeTracker:
    """When to probe one replica and what its results mean (pure: no clock, no I/O).

    Not Ready at first; one success makes it Ready; once Ready, ``failure_threshold``
    consecutive failures make it unready (one success makes it Ready again). Before the first
    success failures are only counted: giving up is ``startup_expired``'s job.

    All times are seconds on the caller's clock; ``now`` passed to ``record`` is when the probe
    was *sent*, so ``period_s`` separates probe starts.
    """

    started_at: float
    """When the replica process started: the origin of ``initial_delay_s`` and the startup timeout."""
    initial_delay_s: float = 0.0
    period_s: float = 1.0
    failure_threshold: int = 3
    startup_timeout_s: float = 600.0
    last_probe_at: float | None = None
    consecutive_failures: int = 0
    ready: bool = False
    ever_ready: bool = False

    def __post_init__(self) -> None:
        if self.period_s <= 0:
            raise ValueError(f"period_s must be > 0, got {self.period_s}")
        if self.failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {self.failure_threshold}")
        if self.initial_delay_s < 0:
            raise ValueError(f"initial_delay_s must be >= 0, got {self.initial_delay_s}")

    @classmethod
    def for_check(cls, check: HealthCheck | None, started_at: float) -> ProbeTracker:
        c = check or DEFAULT_CHECK
        return cls(
            started_at=started_at,
            initial_delay_s=c.initial_delay_seconds,
            period_s=c.period_seconds,
            failure_threshold=c.failure_threshold,
            startup_timeout_s=c.startup_timeout_seconds,
        )

    def next_due(self) -> float:
        """The earliest time the next probe may be sent."""
        first = self.started_at + self.initial_delay_s
        if self.last_probe_at is None:
            return first
        return max(first, self.last_probe_at + self.period_s)

    def due(self, now: float) -> bool:
        return now >= self.next_due()

    def record(self, ok: bool, now: float) -> Transition | None:
        """Record a probe result sent at ``now``; returns the transition it caused, if any."""
        self.last_probe_at = now
        if ok:
            self.consecutive_failures = 0
            if not self.ready:
                self.ready = self.ever_ready = True
                return Transition.BECAME_READY
            return None
        self.consecutive_failures += 1
        if self.ready and self.consecutive_failures >= self.failure_threshold:
            self.ready = False
            return Transition.BECAME_UNREADY
        return None

    def startup_expired(self, now: float) -> bool:
        """True once ``startup_timeout_s`` passed since ``started_at`` without any success."""
        return not self.ever_ready and now - self.started_at >= self.startup_timeout_s
