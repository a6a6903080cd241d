"""The service groups of a routing table, as plain values: what the gateway needs to split and
mirror a group's traffic, read from the store's ``groups`` and ``group_members`` tables (or a
routing file) and nothing else. Standard library only (the gateway imports no pydantic).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from openeas.kernel.groups import DEFAULT_REGION_HEADER, GroupDef, GroupMember, MemberMatch

_GROUPS = "SELECT name, traffic_mode, region_header, token_enc FROM groups"
_MEMBERS = (
    'SELECT "group", service, weight, mirror_weight, match FROM group_members ORDER BY "group", position'
)
_HAS_GROUPS = "SELECT 1 FROM sqlite_master WHERE type='table' AND name='group_members'"


def load_groups(
    db: sqlite3.Connection | Any, token: Any, has_groups_sql: str = _HAS_GROUPS
) -> dict[str, GroupDef]:
    """The groups in the store (``token(ciphertext) -> plaintext``); none in a database that
    predates them (schema v3). ``db``: a sqlite3 or psycopg connection (both have ``execute``);
    ``has_groups_sql``: the query that finds the members' table in that database."""
    if db.execute(has_groups_sql).fetchone() is None:
        return {}
    members: dict[str, list[GroupMember]] = {}
    for group, service, weight, mirror_weight, match in db.execute(_MEMBERS):
        m = json.loads(match) if isinstance(match, str) else match
        members.setdefault(group, []).append(
            GroupMember(str(service), int(weight), int(mirror_weight), MemberMatch.from_dict(m))
        )
    out = {}
    for name, mode, region_header, token_enc in db.execute(_GROUPS):
        out[name] = GroupDef(
            name=name,
            token=token(token_enc),
            members=tuple(members.get(name, ())),
            traffic_mode=mode,
            region_header=region_header or DEFAULT_REGION_HEADER,
        )
    return out
