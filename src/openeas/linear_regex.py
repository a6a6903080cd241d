"""Regular expressions from a spec (a group's ``match.user_agent``), matched in linear time.

Python's ``re`` backtracks: ``^(a+)+$`` against 28 ``a`` and a ``b`` takes seconds, doubling per
character, and in the gateway's event loop that froze every service. RE2 (PyPI ``google-re2``)
matches in time linear in the text, whatever the pattern; it refuses what it cannot do so
(backreferences, lookaround), and such a pattern is refused when the spec is applied, with RE2's
reason. The text matched is bounded too: a header longer than ``MAX_MATCHED_CHARS`` never
matches (a real User-Agent is a few hundred characters).
"""

from __future__ import annotations

from typing import Any

import re2

MAX_MATCHED_CHARS = 1024
"""A header value longer than this (in characters) does not match any pattern."""


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # the reason is returned (a 400), not written to stderr
    return options


def compile_problem(pattern: str) -> str | None:
    """Why RE2 cannot compile ``pattern`` (its own words), or None when it can."""
    try:
        re2.compile(pattern, _options())
    except re2.error as e:
        reason = e.args[0] if e.args else e
        return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
    return None


class LinearPattern:
    """A compiled pattern: ``search(text)`` is linear in ``len(text)`` (at most ``max_chars``)."""

    __slots__ = ("_regexp", "max_chars", "pattern")

    def __init__(self, pattern: str, max_chars: int = MAX_MATCHED_CHARS) -> None:
        """Raises ValueError with RE2's reason for a pattern it cannot compile."""
        self.pattern = pattern
        self.max_chars = max_chars
        try:
            self._regexp: Any = re2.compile(pattern, _options())
        except re2.error:
            raise ValueError(f"RE2 cannot compile {pattern!r}: {compile_problem(pattern)}") from None

    def search(self, text: str) -> bool:
        """Whether the pattern occurs in ``text``; False for a text over the bound."""
        if len(text) > self.max_chars:
            return False
        return self._regexp.search(text) is not None

    def __repr__(self) -> str:
        return f"LinearPattern({self.pattern!r})"


__all__ = ["MAX_MATCHED_CHARS", "LinearPattern", "compile_problem"]
