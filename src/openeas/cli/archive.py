"""``openeas archive ls`` and ``openeas restore NAME``: the 180-day rule's archive (docs/archive.md)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import typer

from openeas.cli import render
from openeas.sdk.client import ApiError, Client


def _when(t: float | None) -> str:
    return "-" if t is None else dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def render_archive(answer: dict[str, Any]) -> str:
    lines = [f"rule: services are archived {answer['rule']['text']}"]
    items = answer.get("items", [])
    if not items:
        return "\n".join([*lines, "no archived service"])
    lines.append(f"{'NAME':<24} {'ARCHIVED':<21} {'NOT RUNNING SINCE':<21} VERSIONS EVENTS GROUPS")
    for i in items:
        groups = ",".join(i["groups"]) or "-"
        lines.append(
            f"{i['name']:<24} {_when(i['archived_at']):<21} {_when(i['dormant_since']):<21} "
            f"{i['versions']:<8} {i['events']:<6} {groups}"
        )
    return "\n".join(lines)


def archive_commands(
    client: Callable[[], Client], fail: Callable[[str, list[str]], NoReturn]
) -> tuple[typer.Typer, Callable[..., None]]:
    """The ``archive`` verbs and the ``restore`` command, with the CLI's client and error exit
    (passed in: this module does not import cli/main.py)."""
    archive_app = typer.Typer(help="Services archived by the 180-day rule (docs/archive.md).")

    @archive_app.command("ls")
    def ls_cmd(
        json_out: Annotated[
            bool, typer.Option("--json", help="Print the archive as one line of JSON.")
        ] = False,
    ) -> None:
        """The archived services: when, since when they were not Running, what the archive holds."""
        try:
            answer = client().request("GET", "/api/v1/archive")
        except ApiError as exc:
            fail("cannot list the archive", [exc.message, *exc.errors])
        if json_out:
            render.print_json(answer)
        else:
            render.out.print(render_archive(answer), highlight=False, soft_wrap=True)

    def restore_cmd(
        name: Annotated[str, typer.Argument(help="The archived service.")],
        json_out: Annotated[
            bool, typer.Option("--json", help="Print the answer as one line of JSON.")
        ] = False,
    ) -> None:
        """Bring an archived service back whole (spec, versions, events, token, groups), Stopped."""
        try:
            answer = client().request("POST", f"/api/v1/archive/{name}/restore")
        except ApiError as exc:
            fail(f"cannot restore {name}", [exc.message, *exc.errors])
        if json_out:
            render.print_json(answer)
            return
        line = f"{name} restored (Stopped): {answer['versions']} version(s), {answer['events']} event(s)"
        if answer["groups"]:
            line += f", rejoined {', '.join(answer['groups'])}"
        if answer["groups_missing"]:
            line += f"; group(s) no longer there: {', '.join(answer['groups_missing'])}"
        render.out.print(line + f"; `openeas start {name}` runs it", highlight=False, soft_wrap=True)

    return archive_app, restore_cmd
