"""A spec's secrets at rest: env values and ``dockerAuth`` sealed with the token key.

A stored spec (a version's ``spec`` column, a batch job's spec) keeps everything as the user
wrote it, except that each ``containers[].env`` value (list or mapping spelling) and
``dockerAuth`` are replaced by ``SEALED`` + the Fernet ciphertext made with the key tokens already
use (``DATA/secret.key``, outside the database). So neither ``openeas.db`` nor its WAL holds them
in clear; :func:`unseal` gives the spec back exactly. Pure functions of the document and a cipher.
"""

from __future__ import annotations

from typing import Any

from openeas.spec.secrets import map_secrets
from openeas.tokens import TokenCipher

SEALED = "openeas-sealed:v1:"
"""Prefix of a sealed value (a Fernet token follows)."""


def seal(doc: dict[str, Any], cipher: TokenCipher) -> dict[str, Any]:
    """``doc`` with every secret sealed (even one that already looks sealed: unseal is exact)."""
    return map_secrets(doc, lambda v: SEALED + cipher.encrypt(v))


def seal_plain(doc: dict[str, Any], cipher: TokenCipher) -> dict[str, Any]:
    """``doc`` with the secrets not sealed yet sealed (the migration of older stores)."""
    return map_secrets(doc, lambda v: v if v.startswith(SEALED) else SEALED + cipher.encrypt(v))


def unseal(doc: dict[str, Any], cipher: TokenCipher) -> dict[str, Any]:
    """``doc`` with its sealed secrets in clear; a value stored before sealing is kept as it is."""
    return map_secrets(doc, lambda v: cipher.decrypt(v[len(SEALED) :]) if v.startswith(SEALED) else v)
