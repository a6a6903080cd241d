"""A processor package on disk: unpacked into the replica's own folder, its entry file found.

EAS gives a processor as ``processor_path`` (a directory, or a ``.zip`` / ``.tar.gz`` / ``.tgz`` /
``.tar`` archive) and ``processor_entry`` (the module file in it). The node cache keeps the
package read-only and shared; a processor may write next to its code (logs, temporary files), so
:func:`unpack` gives each replica a writable copy: an archive is extracted, a directory copied
(a directory holding nothing but one archive counts as that archive). :func:`find_entry` accepts
the entry as written in real specs: ``app.py``, ``./app.py``, ``src/app.py``, or ``app.py`` inside
the single top folder an archive often wraps everything in.

Archives are extracted safely: a member whose path is absolute or climbs out with ``..`` (zip and
tar), or a link or device (tar, Python's ``data`` filter), is refused with a PackageError naming it.
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

ARCHIVES = (".tar.gz", ".tgz", ".tar", ".zip")


class PackageError(Exception):
    """The processor package or its entry cannot be used; the message says why."""


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVES)


def _safe_member(name: str, archive: Path) -> None:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts:
        raise PackageError(f"{archive.name}: member {name!r} would be written outside the package folder")


def extract(archive: Path, dest: Path) -> None:
    """Extract ``archive`` (zip or tar, gzip'd or not) into ``dest`` (created)."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                for name in z.namelist():
                    _safe_member(name, archive)
                z.extractall(dest)
        else:
            with tarfile.open(archive) as t:
                for m in t.getmembers():
                    _safe_member(m.name, archive)
                t.extractall(dest, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
        raise PackageError(f"{archive.name}: cannot extract: {exc}") from exc


def _single_archive(folder: Path) -> Path | None:
    items = [p for p in folder.iterdir() if not p.name.startswith(".")]
    return items[0] if len(items) == 1 and is_archive(items[0]) else None


def unpack(source: Path, dest: Path) -> Path:
    """A fresh, writable copy of the package at ``source`` in ``dest``; returns ``dest``."""
    if not source.exists():
        raise PackageError(f"{source}: the processor package does not exist")
    shutil.rmtree(dest, ignore_errors=True)
    if source.is_dir() and (inner := _single_archive(source)) is not None:
        source = inner
    if is_archive(source):
        extract(source, dest)
    elif source.is_dir():
        shutil.copytree(source, dest, symlinks=True)
        for p in [dest, *dest.rglob("*")]:  # the node cache's copies are read-only
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | 0o200)
    else:
        dest.mkdir(parents=True)
        shutil.copy(source, dest / source.name)
        (dest / source.name).chmod(0o644)
    return dest


def find_entry(root: Path, entry: str) -> Path:
    """The entry file ``entry`` (as written in the spec) inside the unpacked package ``root``."""
    rel = PurePosixPath(entry.strip())
    if rel.is_absolute() or ".." in rel.parts or not rel.name:
        raise PackageError(f"processor_entry {entry!r}: must be a file path inside the processor package")
    direct = root.joinpath(*rel.parts)
    if direct.is_file():
        return direct
    tail = rel.parts
    found = sorted(
        p for p in root.rglob(rel.name) if p.is_file() and p.relative_to(root).parts[-len(tail) :] == tail
    )
    if len(found) == 1:
        return found[0]
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.py"))[:10]
    if found:
        where = ", ".join(str(p.relative_to(root)) for p in found)
        raise PackageError(f"processor_entry {entry!r}: found more than once ({where}); write its folder too")
    raise PackageError(
        f"processor_entry {entry!r}: not in the processor package"
        + (f" (its Python files: {', '.join(files)})" if files else " (it has no Python files)")
    )


def model_dir(source: Path, dest: Path) -> Path:
    """The model folder a processor reads: ``source`` itself, or ``dest`` holding the extracted
    archive when ``source`` is an archive or a folder holding just one (EAS unpacks those too)."""
    archive = source if is_archive(source) else _single_archive(source) if source.is_dir() else None
    if archive is None:
        return source
    shutil.rmtree(dest, ignore_errors=True)
    extract(archive, dest)
    return dest
