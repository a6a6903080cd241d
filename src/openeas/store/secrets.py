"""Tokens at rest, as the store uses them: the implementation is :mod:`openeas.tokens`.

It lives outside this package so the gateway process can decrypt tokens without importing the
store (SQLAlchemy) or the spec (pydantic); these names stay importable from here.
"""

from openeas.tokens import TokenCipher, new_token, same, write_private

__all__ = ["TokenCipher", "new_token", "same", "write_private"]
