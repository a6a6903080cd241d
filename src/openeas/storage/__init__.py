"""Storage mounts: fsspec URL → content-addressed node cache → the path a replica sees."""

from __future__ import annotations

from openeas.storage.cache import Materialized, NodeCache
from openeas.storage.mounts import MountFetch, MountPlan, nfs_local_path, prepare_mounts

__all__ = ["Materialized", "MountFetch", "MountPlan", "NodeCache", "nfs_local_path", "prepare_mounts"]
