"""The spec's ``storage``: one mount per entry (oss, nfs, empty_dir, git or cache) and sizes."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from openeas.spec.base import Number, SpecModel, is_stored
from openeas.spec.paths import mount_path_problem


class OssSource(SpecModel):
    path: str = Field(description="any fsspec URL: oss://, s3://, file:// or a local path")
    readOnly: bool = True


class GitSource(SpecModel):
    """A Git repository cloned once per node into the cache, mounted read-only."""

    repo: str = Field(min_length=1, description="clone URL (https://, ssh, file:// or a local path)")
    branch: str | None = Field(default=None, description="branch or tag (default: the remote's HEAD)")
    commit: str | None = Field(default=None, description="a commit to check out (pins the content)")

    @field_validator("branch", "commit")
    @classmethod
    def _not_an_option(cls, v: str | None, info: ValidationInfo) -> str | None:
        # The value reaches git's command line: it must not read as an option or hold a space.
        bad = v is not None and (not v or v.startswith("-") or any(c.isspace() for c in v))
        if bad and not is_stored(info):
            raise ValueError(f"{v!r} is not a branch, tag or commit: no leading '-', no spaces")
        return v


class CacheSource(SpecModel):
    """EAS's model-loading cache: ``path`` (another storage entry's mount_path) seen read-only at
    this mount_path. Here every mount is already node-local, so it is the same folder, read-only."""

    path: str = Field(description="the mount_path of the storage entry to cache")
    capacity: Number | str | None = Field(
        default=None, description="memory for the cache (EAS); not needed here"
    )


# A size as EAS writes it: a number of GB (20), or a quantity with a unit ("512Mi", "2Gi", "1G").
_QUANTITY_RE = re.compile(r"(?P<n>\d+(?:\.\d+)?)\s*(?P<u>[KMGT]i?|[kmgt]i?)?[bB]?")
_UNIT_BYTES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def quantity_bytes(value: Number | str, *, default_unit: int) -> int:
    """``value`` in bytes: a bare number counts in ``default_unit`` bytes; "512Mi" = 512 * 2^20,
    "1G" = 10^9. ValueError with the accepted forms otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a size, not a boolean")
    if isinstance(value, int | float):
        if value <= 0:
            raise ValueError("must be > 0")
        return int(value * default_unit)
    m = _QUANTITY_RE.fullmatch(value.strip())
    if not m or float(m.group("n")) <= 0:
        raise ValueError(f"{value!r} is not a size: write a number of GB (20) or a quantity (512Mi, 2Gi)")
    unit = (m.group("u") or "").lower()
    if not unit:
        return int(float(m.group("n")) * default_unit)
    base = 1024 ** (" kmgt".index(unit[0])) if unit.endswith("i") else _UNIT_BYTES[unit[0]]
    return int(float(m.group("n")) * base)


class EmptyDir(SpecModel):
    """A scratch directory per replica; ``medium: memory`` makes it a tmpfs (container runtime)."""

    medium: str | None = Field(default=None, description="'memory' for a tmpfs; empty/absent for disk")
    size_limit: Number | str | None = Field(
        default=None, description="largest size: a number of GB (EAS) or a quantity such as 512Mi"
    )

    @field_validator("medium")
    @classmethod
    def _medium(cls, v: str | None) -> str | None:
        if v is not None and v.lower() not in ("", "memory"):
            raise ValueError(f"{v!r} is not a medium: use 'memory' (a tmpfs) or leave it out (disk)")
        return v

    @field_validator("size_limit")
    @classmethod
    def _size(cls, v: Number | str | None) -> Number | str | None:
        if v is not None:
            quantity_bytes(v, default_unit=2**30)
        return v

    @property
    def in_memory(self) -> bool:
        return (self.medium or "").lower() == "memory"

    def size_bytes(self) -> int | None:
        return None if self.size_limit is None else quantity_bytes(self.size_limit, default_unit=2**30)


# Storage kinds OpenEAS cannot serve, each with what to write instead (EAS: "Mount storage").
UNSERVABLE_STORAGE = {
    "image": (
        "an `image` mount copies files out of another image, which OpenEAS does not do: put the "
        "files in object storage and mount them with `oss`, or build them into the container's own image"
    ),
    "dataset": (
        "a PAI `dataset` is an asset of the cloud workspace: mount the OSS path it registers with "
        "`oss` instead"
    ),
    "code": (
        "a PAI `code` set is an asset of the cloud workspace: put a checkout of its repository in "
        "object storage and mount it with `oss`"
    ),
}
STORAGE_KINDS = ("oss", "nfs", "empty_dir", "git", "cache")


class StorageMount(SpecModel):
    mount_path: str = Field(json_schema_extra={"pattern": "^/[^\\u0000-\\u001f\\u007f]*$"})
    oss: OssSource | None = None
    nfs: dict[str, Any] | None = None
    empty_dir: EmptyDir | None = None
    git: GitSource | None = None
    cache: CacheSource | None = None

    @field_validator("mount_path")
    @classmethod
    def _abs(cls, v: str, info: ValidationInfo) -> str:
        if not v.startswith("/"):
            raise ValueError("must be an absolute path")
        if not v.strip("/"):
            raise ValueError("must not be '/' (mount below it, e.g. /mnt/data)")
        if ".." in v.split("/"):
            raise ValueError("must not contain '..'")
        if is_stored(info):
            return v
        if any(ord(c) < 0x20 or c == "\x7f" for c in v):
            raise ValueError("must not contain control characters (newline, NUL, ...)")
        if problem := mount_path_problem(v):
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _one_source(self) -> StorageMount:
        extra = self.__pydantic_extra__ or {}
        for kind, why in UNSERVABLE_STORAGE.items():
            if extra.get(kind) is not None:
                raise ValueError(f"{kind}: {why}")
        sources = [k for k in STORAGE_KINDS if getattr(self, k) is not None]
        if len(sources) != 1:
            raise ValueError(
                "exactly one of 'oss', 'nfs', 'empty_dir', 'git' or 'cache' is required"
                + (f" (found {', '.join(sources)})" if sources else "")
            )
        return self
