"""Owns the gateway's own error answers: `GatewayError` and the HTTP responses built from it.

Every error the gateway itself produces is ``{"error": {"code": ..., "message": ...}}`` with a
precise message; responses from replicas are forwarded untouched.
"""

from __future__ import annotations

import json
import math
from http import HTTPStatus


class GatewayError(Exception):
    """An error answered by the gateway (not by a replica)."""

    def __init__(self, status: int, code: str, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s  # seconds, sent as Retry-After (429, 503) when set


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def plain_response(
    status: int, body: bytes, content_type: bytes, *, close: bool, extra: bytes = b""
) -> bytes:
    """A complete HTTP/1.1 response (head + body) as one bytes object; ``extra``: more header lines."""
    try:
        reason = HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b"Unknown"
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, reason),
            b"Content-Type: %s\r\n" % content_type,
            b"Content-Length: %d\r\n" % len(body),
            b"Connection: close\r\n" if close else b"",
            extra,
            b"\r\n",
            body,
        )
    )


def error_response(err: GatewayError, *, close: bool) -> bytes:
    extra = b"Retry-After: %d\r\n" % err.retry_after_s if err.retry_after_s is not None else b""
    return plain_response(
        err.status, error_body(err.code, err.message), b"application/json", close=close, extra=extra
    )


def rate_limited(service: str, rate: float, wait_s: float) -> GatewayError:
    """429: the service's metadata.rpc.rate_limit was reached (the request reached no replica)."""
    return GatewayError(
        429,
        "rate_limited",
        f"service '{service}' accepts at most {rate:g} requests per second "
        "(metadata.rpc.rate_limit); retry later",
        retry_after_s=max(1, math.ceil(wait_s)),
    )


def body_too_large(limit_bytes: int, service: str) -> GatewayError:
    return GatewayError(
        413, "body_too_large", f"request body exceeds {limit_bytes} bytes, the limit of service '{service}'"
    )
