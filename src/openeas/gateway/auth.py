"""Owns request authentication: pure functions of the request's headers, the route's token and
``now``, and the buffer that holds a signed request's body until its Content-MD5 is checked.

Accepted forms of the ``Authorization`` header when a route has a token:

- ``<token>`` and ``Bearer <token>`` (what curl users and the OpenAI SDK send);
- ``EAS <signature>``, what the official EAS Python SDK (``eas_prediction.PredictClient``) sends:
  ``base64(HMAC-SHA1(token, "<METHOD>\\n<Content-MD5>\\n<Content-Type>\\n<Date>\\n/api/predict/<svc>"))``
  where Content-MD5 is the hex md5 of the body (the SDK's choice; RFC 1864 base64 is accepted too),
  and Date is an RFC 1123 date checked against the gateway clock.

Every comparison with a secret uses ``hmac.compare_digest``. Messages never contain the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from openeas.gateway.errors import GatewayError

DEFAULT_MAX_DATE_SKEW_S = 15 * 60.0  # seconds between a signed request's Date and the gateway clock


class AuthError(GatewayError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(401, code, message)


@dataclass(frozen=True, slots=True)
class Credentials:
    """A route's token, pre-encoded once per routing-table swap (not per request)."""

    token: bytes
    bearer: bytes  # b"Bearer " + token: the OpenAI SDK's form, checked without splitting

    @classmethod
    def from_token(cls, token: str) -> Credentials:
        return cls(token.encode(), b"Bearer " + token.encode())

    def fast_match(self, authorization: bytes | None) -> bool:
        """True for ``<token>`` or ``Bearer <token>`` (the hot path); else call `authorize`."""
        return authorization is not None and (
            hmac.compare_digest(authorization, self.bearer) or hmac.compare_digest(authorization, self.token)
        )


def eas_signature(
    token: bytes, method: bytes, content_md5: bytes, content_type: bytes, date: bytes, resource: bytes
) -> bytes:
    """The EAS SDK's signature (``PredictClient.generate_singaure``), base64 encoded."""
    message = b"\n".join((method, content_md5, content_type, date, resource)).strip()
    return base64.b64encode(hmac.new(token, message, hashlib.sha1).digest())


def authorize(
    creds: Credentials,
    service: str,
    authorization: bytes | None,
    *,
    method: bytes = b"POST",
    content_md5: bytes | None = None,
    content_type: bytes | None = None,
    date: bytes | None = None,
    path: bytes | None = None,
    now: float,
    max_skew_s: float = DEFAULT_MAX_DATE_SKEW_S,
) -> bytes | None:
    """Check one request; raise `AuthError` when refused.

    Returns the Content-MD5 value the body must still be checked against (signed requests that
    carry one; see `verify_content_md5`), else None.
    """
    if not authorization:
        raise AuthError(
            "missing_token",
            f"service '{service}' requires a token: send 'Authorization: <token>' or "
            "'Authorization: Bearer <token>'",
        )
    token = creds.token
    if hmac.compare_digest(authorization, token):
        return None
    scheme, _, credential = authorization.partition(b" ")
    scheme = scheme.lower()
    if scheme == b"bearer":
        if hmac.compare_digest(credential.strip(), token):
            return None
        raise AuthError("invalid_token", f"wrong token for service '{service}'")
    if scheme != b"eas":
        raise AuthError("invalid_token", f"wrong token for service '{service}'")
    if not date:
        raise AuthError("missing_date", "signed request (Authorization: EAS ...) without a Date header")
    # The SDK signs `/api/predict/<service_name>`, where its service name may carry a sub path
    # (`svc/v1/completions`): accept a signature over the request path as well as the bare one.
    signed = credential.strip()
    resources = [b"/api/predict/" + service.encode()]
    if path and path != resources[0]:
        resources.append(path)
    if not any(
        hmac.compare_digest(
            signed, eas_signature(token, method, content_md5 or b"", content_type or b"", date, resource)
        )
        for resource in resources
    ):
        raise AuthError(
            "invalid_signature",
            f"wrong EAS signature for service '{service}' (HMAC-SHA1 of method, Content-MD5, "
            f"Content-Type, Date and the request path /api/predict/{service}[/sub/path] with the "
            "service token)",
        )
    check_date(date, now=now, max_skew_s=max_skew_s)
    return content_md5 or None


def check_date(date: bytes, *, now: float, max_skew_s: float) -> None:
    """Reject a signed request whose Date is unparseable or more than ``max_skew_s`` from ``now``."""
    text = date.decode("latin-1")
    try:
        ts = parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        raise AuthError("invalid_date", f"signed request has an unparseable Date header {text!r}") from None
    skew = now - ts
    if abs(skew) > max_skew_s:
        raise AuthError(
            "stale_signature_date",
            f"stale signature: Date {text!r} is {abs(skew):.0f} s "
            f"{'behind' if skew > 0 else 'ahead of'} the gateway clock (allowed: {max_skew_s:.0f} s)",
        )


def verify_content_md5(expected: bytes, body: bytes) -> None:
    """The body of a signed request must match its Content-MD5 (hex, as the SDK sends, or base64)."""
    digest = hashlib.md5(body).digest()
    value = expected.strip()
    if hmac.compare_digest(value.lower(), digest.hex().encode()) or hmac.compare_digest(
        value, base64.b64encode(digest)
    ):
        return
    raise AuthError("content_md5_mismatch", "Content-MD5 header does not match the request body")


class SignedBody:
    """The body of a signed request that carries a Content-MD5: kept until it can be checked.

    The request goes to no replica before the check passes, so a tampered body never leaves the
    gateway.
    """

    __slots__ = ("expected_md5", "parts")

    def __init__(self, expected_md5: bytes) -> None:
        self.expected_md5 = expected_md5
        self.parts: list[bytes] = []

    def verify(self) -> None:
        """Raise `AuthError` when the body read so far does not match the Content-MD5 header."""
        verify_content_md5(self.expected_md5, b"".join(self.parts))
