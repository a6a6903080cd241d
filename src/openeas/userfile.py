"""Files a user names (a stress test's ``data.path``, a batch job's input) read bounded.

A path from a request may name anything: ``/dev/zero`` (endless, ``st_size`` 0), a FIFO (a read
that never returns), a directory. Every such file is opened without blocking (``O_NONBLOCK``: a
FIFO with no writer does not hang the open), checked on the opened descriptor (``fstat`` +
``S_ISREG``, so a swap between check and read cannot slip a device in) and read in chunks that
stop at the caller's cap, whatever ``st_size`` says. Errors are :class:`UserFileError`, whose
message names the field and what was wrong. Standard library only.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

CHUNK_BYTES = 1024 * 1024  # one read() of a bounded whole-file read


class UserFileError(ValueError):
    """A user-named file that cannot be read: the message starts with the field's name."""


def describe_mode(mode: int) -> str:
    """What a file that is not a regular file is, for an error message."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def size_text(n: int) -> str:
    """``n`` bytes in the unit a cap is documented in (64 MiB, 1 GiB)."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def open_regular(path: str, field: str, max_bytes: int | None = None) -> BinaryIO:
    """``path`` opened for reading, if it is a regular file (checked on the open descriptor) and,
    with ``max_bytes``, its ``st_size`` is at most that (nothing read: a sparse giant is refused
    at once; a reader still counts what it reads, since /proc files say 0)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UserFileError(f"{field}: no such file: {path}") from None
    except OSError as e:
        raise UserFileError(f"{field}: cannot read {path}: {e.strerror or e}") from None
    try:
        _check_stat(os.fstat(fd), path, field, max_bytes)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def check_regular(path: str, field: str, max_bytes: int) -> None:
    """What `read_regular` would refuse, without opening ``path``: missing, not a regular file
    (following links), or ``st_size`` over ``max_bytes`` (a read still counts: /proc lies)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserFileError(f"{field}: no such file: {path}") from None
    except OSError as e:
        raise UserFileError(f"{field}: cannot read {path}: {e.strerror or e}") from None
    _check_stat(st, path, field, max_bytes)


def _check_stat(st: os.stat_result, path: str, field: str, max_bytes: int | None) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise UserFileError(f"{field}: {path} is {describe_mode(st.st_mode)}, not a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise UserFileError(f"{field}: {path} is larger than {size_text(max_bytes)}")


def read_capped(f: BinaryIO, path: str, field: str, max_bytes: int) -> bytes:
    """All of ``f``, refused as soon as more than ``max_bytes`` were read."""
    parts: list[bytes] = []
    total = 0
    while True:
        chunk = f.read(min(CHUNK_BYTES, max_bytes + 1 - total))
        if not chunk:
            return b"".join(parts)
        total += len(chunk)
        if total > max_bytes:
            raise UserFileError(f"{field}: {path} is larger than {size_text(max_bytes)}")
        parts.append(chunk)


def read_regular(path: str, field: str, max_bytes: int) -> bytes:
    """A regular file's bytes, at most ``max_bytes`` of them (more is an error)."""
    with open_regular(path, field) as f:
        return read_capped(f, path, field, max_bytes)


def capped_lines(
    f: BinaryIO, path: str, field: str, *, max_bytes: int, max_line_bytes: int
) -> Iterator[bytes]:
    """The lines of ``f`` (each with its newline), read one at a time: a line longer than
    ``max_line_bytes`` or a file longer than ``max_bytes`` is an error when it is reached."""
    total = 0
    line_no = 0
    while True:
        line = f.readline(max_line_bytes + 1)
        if not line:
            return
        line_no += 1
        if len(line) > max_line_bytes and not (len(line) == max_line_bytes + 1 and line.endswith(b"\n")):
            raise UserFileError(f"{field}: {path} line {line_no} is longer than {size_text(max_line_bytes)}")
        total += len(line)
        if total > max_bytes:
            raise UserFileError(f"{field}: {path} is larger than {size_text(max_bytes)}")
        yield line


def read_range(f: BinaryIO, start: int, end: int) -> bytes:
    """Bytes ``start``..``end`` of ``f`` (fewer if it is shorter now): never more than asked."""
    f.seek(start)
    parts: list[bytes] = []
    left = end - start
    while left > 0:
        chunk = f.read(min(CHUNK_BYTES, left))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


__all__ = [
    "UserFileError",
    "capped_lines",
    "check_regular",
    "describe_mode",
    "open_regular",
    "read_capped",
    "read_range",
    "read_regular",
    "size_text",
]
