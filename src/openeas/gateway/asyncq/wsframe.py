"""Owns the little of WebSocket (RFC 6455) the gateway speaks itself: the handshake answer and
the frames of a server that only pushes (the async queue's ``watch``, which the EAS SDK's
``QueueClient.watch()`` opens). Replicas' WebSockets are tunnelled, never parsed (guard.py).

A pushing server sends unmasked binary frames; it reads the client's masked frames only to
answer pings and closes (the EAS SDK pings every 2 s). Messages from the client are ignored.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Iterator

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

TEXT = 0x1
BINARY = 0x2
CLOSE = 0x8
PING = 0x9
PONG = 0xA

MAX_CONTROL_BYTES = 125  # RFC 6455 5.5: control frames carry at most 125 bytes
MAX_CLIENT_FRAME_BYTES = 64 * 1024  # a pushing server has no use for large client messages


class FrameError(Exception):
    """The client sent something that is not a valid (masked, small) WebSocket frame."""


def accept_key(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value for a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.strip() + _GUID).digest())


def handshake(key: bytes) -> bytes:
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n"
    )


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame (what a server sends)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


class FrameReader:
    """Parses the client's frames from the bytes as they arrive."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        """(opcode, unmasked payload) of every complete frame; raises `FrameError`."""
        self.buffer += data
        buf = self.buffer
        while len(buf) >= 2:
            opcode = buf[0] & 0x0F
            masked = buf[1] & 0x80
            n = buf[1] & 0x7F
            offset = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n = struct.unpack_from("!H", buf, 2)[0]
                offset = 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n = struct.unpack_from("!Q", buf, 2)[0]
                offset = 10
            if not masked:
                raise FrameError("client frames must be masked (RFC 6455 5.1)")
            if n > MAX_CLIENT_FRAME_BYTES:
                raise FrameError(f"client frame of {n} bytes; at most {MAX_CLIENT_FRAME_BYTES} are read")
            if len(buf) < offset + 4 + n:
                return
            mask = buf[offset : offset + 4]
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(buf[offset + 4 : offset + 4 + n]))
            del buf[: offset + 4 + n]
            yield opcode, payload
