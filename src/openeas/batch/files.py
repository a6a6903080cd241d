"""A batch job's files: the input read bounded, the output and errors files checked before the
job starts, and the job's own temporary names.

- The input is read streaming, line by line, never more than ``MAX_INPUT_BYTES`` (a line at most
  ``MAX_LINE_BYTES``); a local input must be a regular file (``/dev/zero``, a FIFO, a directory:
  refused, checked on the opened descriptor). A shard is read again by byte range when it is
  served, never more than its range.
- Paths and URLs are compared normalised (``file:///x``, ``//x``, ``/./x``, a symlink or a hard
  link to ``/x`` are all ``/x``): the output and the errors file may be neither the input nor
  each other; an existing output or errors file is replaced only with ``overwrite``; a directory
  is never an output.
- What the job writes besides the two files carries the job's id (``<output>.<job id>.parts/``,
  ``<name>.<job id>.tmp``), so removing it can never remove what the job did not create.
"""

from __future__ import annotations

import os
import posixpath
import shutil
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from openeas.batch.lines import cut_shards
from openeas.userfile import UserFileError, capped_lines, open_regular, read_range

MAX_INPUT_BYTES = 1024 * 1024 * 1024  # 1 GiB: a larger input is refused while it is read
MAX_LINE_BYTES = 16 * 1024 * 1024  # 16 MiB: one request line

Bounds = list[tuple[int, int, int, int]]  # see batch.lines.cut_shards


def url_key(url: str) -> tuple[str, str]:
    """``url`` as one spelling: (protocol, normalised path). Local paths are resolved (symlinks,
    ``..``, ``//``, ``/./``, ``file://``); other filesystems' paths are normalised as text."""
    fs, path = fsspec.core.url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        return "file", os.path.realpath(path)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol, posixpath.normpath("/" + path.lstrip("/"))


def _same_local_file(a: str, b: str) -> bool:
    """Two local paths that are one file (a hard link included); False when either is missing."""
    fa, pa = fsspec.core.url_to_fs(a)
    fb, pb = fsspec.core.url_to_fs(b)
    if not (isinstance(fa, LocalFileSystem) and isinstance(fb, LocalFileSystem)):
        return False
    try:
        return os.path.samefile(pa, pb)
    except OSError:
        return False


def same_file(a: str, b: str) -> bool:
    return url_key(a) == url_key(b) or _same_local_file(a, b)


def open_input(url: str, field: str = "input") -> BinaryIO:
    """The input opened for reading: a local one only if it is a regular file."""
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except Exception as e:
        raise UserFileError(f"{field}: {url} cannot be read ({type(e).__name__}: {e})") from None
    if isinstance(fs, LocalFileSystem):
        return open_regular(path, field)
    try:
        if not fs.exists(path):
            raise UserFileError(f"{field}: no such file: {url}")
        if fs.isdir(path):
            raise UserFileError(f"{field}: {url} is a directory, not a file")
        f: Any = fs.open(path, "rb")
    except UserFileError:
        raise
    except Exception as e:
        raise UserFileError(f"{field}: {url} cannot be read ({type(e).__name__}: {e})") from None
    return f


def scan_input(url: str, shard_lines: int) -> tuple[Bounds, int]:
    """The input's shards and request count, read once, streaming and bounded."""
    with open_input(url) as f:
        try:
            lines = capped_lines(f, url, "input", max_bytes=MAX_INPUT_BYTES, max_line_bytes=MAX_LINE_BYTES)
            return cut_shards(lines, shard_lines)
        except UserFileError:
            raise
        except (OSError, ValueError) as e:
            raise UserFileError(f"input: {url} cannot be read ({type(e).__name__}: {e})") from None


def read_shard(url: str, start: int, end: int) -> bytes:
    """One shard's bytes, by range: no more than ``end - start`` whatever the file is now."""
    with open_input(url) as f:
        return read_range(f, start, end)


def output_problems(input_url: str, output: str, errors: str, overwrite: bool) -> list[str]:
    """Every reason the job may not write ``output`` and ``errors`` (empty: it may)."""
    problems = []
    if same_file(output, input_url):
        problems.append(f"output: {output} is the input file ({input_url}); name another file")
    if same_file(errors, input_url):
        problems.append(f"errors: {errors} is the input file ({input_url}); name another file")
    if same_file(errors, output):
        problems.append(f"errors: {errors} is the output file ({output}); name another file")
    for field, url in (("output", output), ("errors", errors)):
        try:
            fs, path = fsspec.core.url_to_fs(url)
            if fs.isdir(path):
                problems.append(f"{field}: {url} is a directory; name a file in it")
            elif fs.exists(path) and not overwrite:
                problems.append(f"{field}: {url} exists; pass overwrite (--overwrite) to replace it")
        except Exception as e:
            problems.append(f"{field}: {url} cannot be written ({type(e).__name__}: {e})")
    return problems


def make_parent(url: str, field: str) -> None:
    """The folder ``url`` will be written in, made if missing."""
    try:
        fs, path = fsspec.core.url_to_fs(url)
        parent = path.rsplit("/", 1)[0]
        if parent:
            fs.makedirs(parent, exist_ok=True)
    except Exception as e:
        raise UserFileError(f"{field}: {url} cannot be written ({type(e).__name__}: {e})") from None


def parts_dir(output_url: str, job_id: str) -> str:
    """The job's own folder of shard parts, next to its output."""
    return f"{output_url}.{job_id}.parts"


def part_paths(output_url: str, job_id: str, shard: int) -> tuple[str, str]:
    base = f"{parts_dir(output_url, job_id)}/{shard:06d}"
    return f"{base}.out.jsonl", f"{base}.err.jsonl"


def write_whole(url: str, data: bytes, job_id: str) -> None:
    """Write ``url`` whole or not at all (the job's own temporary name, then a rename)."""
    fs, path = fsspec.core.url_to_fs(url)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.{job_id}.tmp"
    fs.pipe_file(tmp, data)
    fs.mv(tmp, path)


def concat_whole(sources: list[str], url: str, job_id: str) -> None:
    """``url`` made of ``sources`` in order, streamed (never whole in memory), then renamed."""
    fs, path = fsspec.core.url_to_fs(url)
    tmp = f"{path}.{job_id}.tmp"
    with fs.open(tmp, "wb") as out:
        for src in sources:
            sfs, spath = fsspec.core.url_to_fs(src)
            with sfs.open(spath, "rb") as f:
                shutil.copyfileobj(f, out, 1024 * 1024)
    fs.mv(tmp, path)


def remove_parts(output_url: str, job_id: str) -> None:
    """The job's parts folder (its own name: nothing else is removed)."""
    fs, path = fsspec.core.url_to_fs(parts_dir(output_url, job_id))
    if fs.exists(path):
        fs.rm(path, recursive=True)


__all__ = [
    "MAX_INPUT_BYTES",
    "MAX_LINE_BYTES",
    "concat_whole",
    "make_parent",
    "open_input",
    "output_problems",
    "part_paths",
    "parts_dir",
    "read_shard",
    "remove_parts",
    "same_file",
    "scan_input",
    "url_key",
    "write_whole",
]
