"""``openeas cache``: the node cache of object-storage mounts (docs/cold-start.md).

``openeas cache ls`` lists its entries (newest use first: owner, size, last use, in use by a
running replica or not, source), its size against its limit and the hit ratio since the server
started; ``openeas cache prune`` evicts every entry no running replica uses.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from openeas.cli import render
from openeas.cli.common import cli_errors
from openeas.cli.common import client as _client

cache_app = typer.Typer(help="The node cache of object-storage mounts (docs/cold-start.md).")

JsonOut = Annotated[bool, typer.Option("--json", help="Print the API answer as one line of JSON.")]
DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory of the server (reads DIR/server.json).", file_okay=False),
]


def _call(method: str, path: str, data_dir: Path | None, show: Callable[[Any], None], json_out: bool) -> None:
    """One API call with the CLI's error handling (cli/common.py)."""

    def run() -> None:
        answer = _client(data_dir).request(method, path)
        render.print_json(answer) if json_out else show(answer)

    cli_errors(run)()


def size(n: int | None) -> str:
    """Bytes in binary units: 0 B, 999 B, 1.5 KiB, 250.0 MiB, 20.0 GiB."""
    if n is None:
        return "unbounded"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _when(ts: float) -> str:
    return render.age(datetime.fromtimestamp(ts, UTC).isoformat())


def cache_text(view: dict[str, Any]) -> tuple[str, Table | None]:
    s = view["stats"]
    ratio = "-" if s["hit_ratio"] is None else f"{s['hit_ratio']:.0%}"
    head = (
        f"node cache: {size(view['bytes'])} of {size(view['limit_bytes'])} "
        f"in {len(view['entries'])} entries; "
        f"hit ratio {ratio} ({s['hits']} hits, {s['misses']} misses, {s['shared']} shared, "
        f"{s['prefetches']} prefetched, {s['evictions']} evicted, {s['torn']} torn refetched)"
    )
    if view.get("over_limit_bytes"):
        head += f"\nover the limit by {size(view['over_limit_bytes'])}: held by running replicas"
    if not view["entries"]:
        return head, None
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("KEY", "OWNER", "SIZE", "FILES", "USED", "IN USE", "SOURCE"):
        table.add_column(col)
    for e in view["entries"]:
        table.add_row(
            e["key"][:12], e["owner"], size(e["bytes"]), str(e["files"]), _when(e["last_used"]),
            "yes" if e["in_use"] else "no", e["url"],
        )  # fmt: skip
    return head, table


def _show_ls(view: dict[str, Any]) -> None:
    head, table = cache_text(view)
    render.out.print(head, highlight=False, soft_wrap=True)
    if table is not None:
        render.out.print(table)


def _show_prune(answer: dict[str, Any]) -> None:
    gone = answer["evicted"]
    render.out.print(f"pruned {len(gone)} entries, freed {size(answer['freed_bytes'])}", highlight=False)
    for e in gone:
        render.out.print(f"  {e['key'][:12]} {e['owner']} {size(e['bytes'])} {e['url']}", highlight=False)


@cache_app.command("ls")
def ls_cmd(json_out: JsonOut = False, data_dir: DataDir = None) -> None:
    """The node cache's entries, its size against its limit, its hit ratio."""
    _call("GET", "/api/v1/cache", data_dir, _show_ls, json_out)


@cache_app.command("prune")
def prune_cmd(json_out: JsonOut = False, data_dir: DataDir = None) -> None:
    """Evict every entry no running replica uses (none used in the last minute)."""
    _call("POST", "/api/v1/cache/prune", data_dir, _show_prune, json_out)
