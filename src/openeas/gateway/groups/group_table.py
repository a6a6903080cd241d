"""The service groups of a routing table, as plain values: what the gateway needs to split and
mirror a group's traffic, read from the store's ``groups`` and ``group_members`` tables (or a
routing file) and nothing else. Standard library only (the gateway imports no pydantic).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection
from typing import Any

from openeas.kernel.groups import DEFAULT_REGION_HEADER, GroupDef, GroupMember, MemberMatch

_GROUPS = "SELECT name, traffic_mode, region_header, token_enc FROM groups{where}"
_MEMBERS = (
    'SELECT "group", service, weight, mirror_weight, match FROM group_members{where} '
    'ORDER BY "group", position'
)
_HAS_GROUPS = "SELECT 1 FROM sqlite_master WHERE type='table' AND name='group_members'"


def load_groups(
    db: sqlite3.Connection | Any,
    token: Any,
    has_groups_sql: str = _HAS_GROUPS,
    names: Collection[str] | None = None,
    param: str = "?",
) -> dict[str, GroupDef]:
    """The groups in the store (``token(ciphertext) -> plaintext``); none in a database that
    predates them (schema v3). ``db``: a sqlite3 or psycopg connection (both have ``execute``);
    ``has_groups_sql``: the query that finds the members' table in that database; ``names``:
    only the groups of these names (those that exist), all when None; ``param``: the driver's
    placeholder (``?`` for sqlite3, ``%s`` for psycopg)."""
    if names is not None and not names:
        return {}
    if db.execute(has_groups_sql).fetchone() is None:
        return {}
    args: tuple[str, ...] = ()
    where_group = where_name = ""
    if names is not None:
        args = tuple(sorted(names))
        marks = ", ".join([param] * len(args))
        where_group, where_name = f' WHERE "group" IN ({marks})', f" WHERE name IN ({marks})"
    members: dict[str, list[GroupMember]] = {}
    for group, service, weight, mirror_weight, match in db.execute(_MEMBERS.format(where=where_group), args):
        m = json.loads(match) if isinstance(match, str) else match
        members.setdefault(group, []).append(
            GroupMember(str(service), int(weight), int(mirror_weight), MemberMatch.from_dict(m))
        )
    out = {}
    for name, mode, region_header, token_enc in db.execute(_GROUPS.format(where=where_name), args):
        out[name] = GroupDef(
            name=name,
            token=token(token_enc),
            members=tuple(members.get(name, ())),
            traffic_mode=mode,
            region_header=region_header or DEFAULT_REGION_HEADER,
        )
    return out
