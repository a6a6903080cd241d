"""Owns the request-head vocabulary of the proxy: which client headers the gateway reads
(`HEADER_KINDS`), which it drops because they concern one hop only (``Connection``, its kin,
and every header ``Connection`` names: `without_named`; the gateway speaks for itself on each
side), and the framing bytes of what it writes to a
replica. Every other header is forwarded unchanged, in the client's order and spelling.
"""

from __future__ import annotations

# What the proxy does with a header, by lowercase name (absent: forward it unchanged).
AUTHORIZATION = 0  # read (credentials), never forwarded
HOP_BY_HOP = 1  # dropped
TRANSFER_ENCODING = 2  # dropped; a chunked body is forwarded chunked (CHUNKED_END_OF_HEAD)
CONTENT_LENGTH = 3  # read and forwarded
CONTENT_TYPE = 4  # read (signed requests) and forwarded
CONTENT_MD5 = 5  # read (signed requests) and forwarded
DATE = 6  # read (signed requests) and forwarded
CONNECTION = 7  # read (the headers it names are dropped too), never forwarded
UPGRADE = 8  # read; a WebSocket handshake gets its own Connection/Upgrade pair (`upgrade_end`)
EXPLAIN = 9  # read (X-OpenEAS-Explain: 1 asks for X-OpenEAS-Replica on the answer) and forwarded
SESSION = 10  # read (session affinity's key) and forwarded

HEADER_KINDS: dict[bytes, int] = {
    b"authorization": AUTHORIZATION,
    b"connection": CONNECTION,
    b"keep-alive": HOP_BY_HOP,
    b"proxy-connection": HOP_BY_HOP,
    b"te": HOP_BY_HOP,
    b"trailer": HOP_BY_HOP,
    b"upgrade": UPGRADE,
    b"transfer-encoding": TRANSFER_ENCODING,
    b"content-length": CONTENT_LENGTH,
    b"content-type": CONTENT_TYPE,
    b"content-md5": CONTENT_MD5,
    b"date": DATE,
    b"x-openeas-explain": EXPLAIN,
    b"x-openeas-session": SESSION,
}

# The per-header lookup, bound once. Callers import this, not the dict: CPython 3.11 compiles
# `IMPORTED_NAME.get(...)` as an attribute load that builds a bound method on every call (it
# guesses an imported name is a module), ~1k instructions per proxied request here.
header_kind = HEADER_KINDS.get

HEAD_METHOD = b"HEAD"  # its answer ends with its headers, whatever they say
CHUNKED_END_OF_HEAD = b"Transfer-Encoding: chunked\r\n\r\n"  # last header line + blank line
END_OF_HEAD = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"
WEBSOCKET = b"websocket"


def upgrade_end(protocol: bytes) -> bytes:
    """The last header lines of a protocol-upgrade request to a replica (a WebSocket handshake)."""
    return b"Connection: Upgrade\r\nUpgrade: " + protocol + b"\r\n\r\n"

# Connection options that name no header (RFC 9110 7.6.1): nothing more to drop for them.
_CONNECTION_OPTIONS = frozenset((b"close", b"keep-alive", b"upgrade", b""))


def without_named(headers: list[bytes], connection: bytes) -> list[bytes]:
    """``headers`` (the proxy's flat head: [request line, name, ": ", value, CRLF, ...]) without
    the headers the client's ``Connection`` value names. Returns ``headers`` itself when it names
    none (the usual ``keep-alive``/``close``)."""
    named = {token.strip().lower() for token in connection.split(b",")} - _CONNECTION_OPTIONS
    if not named:
        return headers
    kept = [headers[0]]
    for i in range(1, len(headers), 4):
        if headers[i].lower() not in named:
            kept += headers[i : i + 4]
    return kept
