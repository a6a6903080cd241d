"""Persistence: services, immutable versions, replicas with phase timestamps, events."""

from openeas.store.db import Store, db_path
from openeas.store.migrations import MIGRATIONS, migrate
from openeas.store.schema import EventRow, ReplicaRow, ServiceRow, VersionRow
from openeas.store.secrets import TokenCipher, new_token, same

__all__ = [
    "MIGRATIONS",
    "EventRow",
    "ReplicaRow",
    "ServiceRow",
    "Store",
    "TokenCipher",
    "VersionRow",
    "db_path",
    "migrate",
    "new_token",
    "same",
]
