"""Console sessions: the admin token once at login, then an opaque session id in an HttpOnly,
SameSite=Strict cookie, and a per-session CSRF token that every form posts back.

Sessions live in memory (a restart logs everyone out, which is what an operator expects of a
control plane that restarted). Every check takes ``now`` (seconds): no clock inside."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

COOKIE = "openeas_console"
"""Name of the session cookie."""

SESSION_TTL_S = 12 * 3600.0
"""A session ends 12 hours after login (seconds), whatever its use."""

MAX_SESSIONS = 1000
"""Sessions kept at most; logging in beyond drops the oldest."""


@dataclass(frozen=True)
class Session:
    id: str  # the cookie's value (32 random bytes, URL-safe)
    csrf: str  # what every form of this session posts back (32 random bytes, URL-safe)
    expires: float  # clock seconds


class Sessions:
    """Live console sessions by id."""

    def __init__(self, admin_token: str, ttl_s: float = SESSION_TTL_S) -> None:
        self._admin_token = admin_token
        self._ttl_s = ttl_s
        self._by_id: dict[str, Session] = {}

    def login(self, token: str, now: float) -> Session | None:
        """A new session when ``token`` is the admin token; None otherwise."""
        if not token or not hmac.compare_digest(token.encode(), self._admin_token.encode()):
            return None
        self._expire(now)
        while len(self._by_id) >= MAX_SESSIONS:
            self._by_id.pop(next(iter(self._by_id)))
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now + self._ttl_s)
        self._by_id[s.id] = s
        return s

    def get(self, session_id: str | None, now: float) -> Session | None:
        """The live session of a cookie value; None when missing, unknown or expired."""
        s = self._by_id.get(session_id or "")
        if s is None:
            return None
        if s.expires <= now:
            self._by_id.pop(s.id, None)
            return None
        return s

    def logout(self, session_id: str | None) -> None:
        self._by_id.pop(session_id or "", None)

    def _expire(self, now: float) -> None:
        for sid in [sid for sid, s in self._by_id.items() if s.expires <= now]:
            del self._by_id[sid]


def csrf_ok(session: Session | None, posted: str | None) -> bool:
    """Whether a form's posted CSRF token is its session's (constant time)."""
    if session is None or not posted:
        return False
    return hmac.compare_digest(session.csrf.encode(), posted.encode())
