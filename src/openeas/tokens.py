"""Tokens: generated, compared in constant time, and encrypted at rest with a key kept apart
from the database (a 0600 key file in the data dir).

Depends only on the standard library and ``cryptography``: the gateway process decrypts the
service tokens it routes with, and must not pull in the store's ORM to do so.
(``openeas.store.secrets`` re-exports these names for the control plane.)
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken


def write_private(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write a file only its owner can read (mode 0600 from its creation, never wider).

    `exclusive`: fail with FileExistsError if it exists (a key must never be replaced);
    otherwise the file is replaced atomically, so readers never see half of it.
    """
    if exclusive:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class TokenCipher:
    """Encrypts service and admin tokens; the key file sits in the data dir, never in the DB."""

    def __init__(self, key_path: Path) -> None:
        if not key_path.exists():
            key_path.parent.mkdir(parents=True, exist_ok=True)
            try:
                write_private(key_path, Fernet.generate_key(), exclusive=True)
            except FileExistsError:
                pass  # another process created it first
        self._fernet = Fernet(key_path.read_bytes().strip())

    def encrypt(self, token: str) -> str:
        return self._fernet.encrypt(token.encode()).decode()

    def decrypt(self, blob: str) -> str:
        try:
            return self._fernet.decrypt(blob.encode()).decode()
        except InvalidToken:
            raise ValueError("token cannot be decrypted: the key file does not match this store") from None


def new_token() -> str:
    return secrets.token_urlsafe(32)


def same(a: str, b: str) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(a.encode(), b.encode())
