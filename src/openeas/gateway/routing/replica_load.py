"""Engine load pushed to the gateway: what each replica's model server says about its own load
(requests waiting in its queue, KV cache use), for the ``least-waiting`` and ``least-kv`` balancers.

The control plane reads the replicas' ``/metrics`` off the hot path
(:mod:`openeas.autoscaler.engine_load`), only for services whose balancer needs them, and sends
one datagram per scrape round to a Unix socket in the data dir (``DATA/run/gateway-load.sock``)
that the gateway binds. A datagram is the whole picture: replicas it names get its values, every
other replica goes back to unknown (-1), so a replica whose scrape failed, or a service that left
these balancers, never keeps a stale value. Without a datagram for ``STALE_S`` the gateway forgets
every value too (the control plane is gone). Nothing is ever fetched per request.

Wire format (JSON, one object): ``{"v": 1, "r": {replica id: [waiting, kv_usage]}}``; -1 is
unknown. Standard library only (the gateway process imports it; so does the control plane).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from openeas.unixdgram import DGRAM, BoundSocket, UnixAddress, worker_path

SOCKET_NAME = "gateway-load.sock"
WIRE_VERSION = 1
# Values older than this are forgotten (seconds): many missed scrape rounds (every 0.5 s).
STALE_S = 5.0
MAX_DATAGRAM_BYTES = 60 * 1024  # bytes: about 1,500 replicas; more are left out (unknown)
_RECV_BYTES = 64 * 1024

Loads = dict[str, tuple[float, float]]  # replica id → (waiting, kv usage); -1: unknown


def socket_path(data_dir: Path, worker: int = 0) -> Path:
    """Where the gateway (worker ``worker`` of ``--workers N``) of the server on ``data_dir``
    receives engine load."""
    return worker_path(Path(data_dir) / "run" / SOCKET_NAME, worker)


def _clean(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        return -1.0
    return float(v)


def encode(loads: Mapping[str, tuple[float, float]]) -> bytes:
    """One datagram; replicas past ``MAX_DATAGRAM_BYTES`` are left out (they read as unknown)."""
    out: dict[str, list[float]] = {}
    size = 20
    for rid, (waiting, kv) in loads.items():
        entry = [round(_clean(waiting), 4), round(_clean(kv), 4)]
        size += len(rid) + 30
        if size > MAX_DATAGRAM_BYTES:
            break
        out[rid] = entry
    return json.dumps({"v": WIRE_VERSION, "r": out}, separators=(",", ":")).encode()


def decode(data: bytes) -> Loads | None:
    """The loads in a datagram, or None for one that is not ours (wrong version, not JSON)."""
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("v") != WIRE_VERSION or not isinstance(obj.get("r"), dict):
        return None
    loads: Loads = {}
    for rid, pair in obj["r"].items():
        if isinstance(pair, list) and len(pair) == 2:
            loads[str(rid)] = (_clean(pair[0]), _clean(pair[1]))
    return loads


class LoadSender:
    """The control plane's side: ``send(loads)`` never blocks and ignores every send error (no
    gateway bound: it starts with every value unknown)."""

    def __init__(self, path: Path | Sequence[Path]) -> None:
        paths = [path] if isinstance(path, (str, Path)) else list(path)
        self._addrs = [UnixAddress(Path(p)) for p in paths]  # one per gateway worker
        self._sock = socket.socket(socket.AF_UNIX, DGRAM)

    def send(self, loads: Mapping[str, tuple[float, float]]) -> None:
        datagram = encode(loads)
        for addr in self._addrs:
            with contextlib.suppress(OSError):
                self._sock.sendto(datagram, addr.addr)

    def close(self) -> None:
        self._sock.close()
        for addr in self._addrs:
            addr.close()


class LoadListener:
    """The gateway's side: binds the socket and calls ``apply(loads)`` on the event loop for the
    latest datagram of each wake-up, and ``apply({})`` once values are ``STALE_S`` old."""

    def __init__(self, path: Path, apply: Callable[[Loads], object]) -> None:
        self.path = Path(path)
        self.apply = apply
        self._bound: BoundSocket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._expiry: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._bound = BoundSocket(self.path)
        self._loop = loop
        loop.add_reader(self._bound.sock.fileno(), self._readable)

    def _readable(self) -> None:
        if self._bound is None or self._loop is None:
            return
        latest: Loads | None = None
        while True:
            try:
                data = self._bound.sock.recv(_RECV_BYTES)
            except OSError:  # BlockingIOError: drained
                break
            loads = decode(data)
            if loads is not None:
                latest = loads
        if latest is None:  # nothing of ours
            return
        self.apply(latest)
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry = self._loop.call_later(STALE_S, self.apply, {})

    def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        if self._bound is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._bound.sock.fileno())
        self._bound.close()
        self._bound = None
