"""Routing acknowledgements: the gateway says which routing version it has applied.

The control plane's notification carries the store's ``routing_version`` it just committed
(``b"<version>"``), sent from a socket the gateway can answer. Once the gateway has applied a
table of that version or later, it answers ``b"applied <version> <pid>"`` to each sender still
waiting for a version up to the one it applied. The control plane's API waits for that answer
(bounded, :data:`ROUTING_ACK_TIMEOUT_S`) before it returns, so a request sent after the call
returned is routed by the new table.

The bookkeeping is pure (no sockets, no clock): `PendingAcks` on the gateway's side,
`AckOutcome` for what the API answers. Standard library only: the gateway process imports it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# How long an API call that changed the routing waits for the gateway's acknowledgement, seconds.
# The change is committed either way; past this the answer names the gateway that did not answer.
ROUTING_ACK_TIMEOUT_S = 2.0
# While waiting, the notification is sent again this often, seconds (a lost datagram, a gateway
# that was restarting and has bound its socket since).
RESEND_S = 0.05
# Senders the gateway remembers at once (each waits for one version: its highest).
MAX_PENDING = 64

Address = str | bytes  # a Unix datagram socket's address, as recvfrom gives it


def encode_notify(version: int) -> bytes:
    return b"%d" % version


def parse_notify(data: bytes) -> int | None:
    """The version a notification asks for; None for anything else (an old sender: no version)."""
    try:
        version = int(data.strip() or b"x")
    except ValueError:
        return None
    return version if version >= 0 else None


def encode_ack(version: int, pid: int) -> bytes:
    return b"applied %d %d" % (version, pid)


def parse_ack(data: bytes) -> tuple[int, int] | None:
    """(applied version, gateway pid) of an acknowledgement; None for anything else."""
    parts = data.split()
    if len(parts) != 3 or parts[0] != b"applied":
        return None
    try:
        version, pid = int(parts[1]), int(parts[2])
    except ValueError:
        return None
    return (version, pid) if version >= 0 and pid > 0 else None


class PendingAcks:
    """The gateway's side: who waits for which version (one entry per sender, its highest)."""

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self.max_pending = max_pending
        self._want: dict[Address, int] = {}

    def __len__(self) -> int:
        return len(self._want)

    def want(self, addr: Address, version: int) -> None:
        """``addr`` waits for ``version``. An unnamed sender (nothing to answer) is not recorded;
        past ``max_pending`` senders the oldest is forgotten (it resends while it waits)."""
        if not addr:
            return
        self._want[addr] = max(version, self._want.pop(addr, version))
        while len(self._want) > self.max_pending:
            del self._want[next(iter(self._want))]

    def due(self, applied: int) -> list[tuple[Address, int]]:
        """The senders whose version is applied now (taken out): answer each with ``applied``."""
        done = [(addr, v) for addr, v in self._want.items() if v <= applied]
        for addr, _ in done:
            del self._want[addr]
        return done


@dataclasses.dataclass(frozen=True)
class AckOutcome:
    """What an API call that changed the routing answers about the gateway (``routing``)."""

    version: int  # the routing version the call committed (or a later one)
    acknowledged: bool  # the gateway applied it before the call returned
    waited_s: float  # how long the call waited for the acknowledgement
    gateway: str  # which gateway: pid and socket
    timeout_s: float = ROUTING_ACK_TIMEOUT_S

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "acknowledged": self.acknowledged,
            "waited_ms": round(self.waited_s * 1000, 1),
            "gateway": self.gateway,
        }
        if not self.acknowledged:
            out["warning"] = (
                f"{self.gateway} did not acknowledge routing version {self.version} within "
                f"{self.timeout_s:g}s; the change is saved and the gateway applies it when it next "
                "reads the store (its poll runs every second)"
            )
        return out
