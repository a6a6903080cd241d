"""``openeas cost``: what a spec costs a month, before it is deployed (docs/cost.md).

``openeas cost estimate -f spec.json [--traffic profile.yaml] [--catalog FILE]`` prints the field
guide's table (min-replica baseline, burst replicas, per-request fees, cold-start reads), each line
with its arithmetic, the monthly total and the traps the spec falls into. It runs in the CLI's
own process, priced by ``--catalog``, else ``OPENEAS_CATALOG``, else the shipped catalog.

``openeas cost report [--by service|day|month] [--service NAME] [--csv|--json]`` prints the
server's meter: what replicas have cost so far (openeas.cost.meter, ``/api/v1/cost/report``).

``openeas deploy`` shows the server's estimate before it applies (:func:`confirm_estimate`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from openeas.cli import render
from openeas.cli.common import client as _client
from openeas.cli.common import fail as _fail
from openeas.cli.common import read_spec
from openeas.cost import estimate, load_catalog, parse_traffic, render_text
from openeas.cost.meter import BY_CHOICES, render_csv
from openeas.cost.meter import render_text as render_report
from openeas.errors import SpecError
from openeas.sdk.client import ApiError, Client
from openeas.spec import parse_spec

cost_app = typer.Typer(
    help="What services cost: the monthly estimate of a spec, the meter of what ran (docs/cost.md)."
)

ENV_CATALOG = "OPENEAS_CATALOG"


def _traffic(path: Path | None) -> Any:
    if path is None:
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError([f"traffic {path}: cannot read it ({exc.strerror or exc})"]) from None
    except yaml.YAMLError as exc:
        raise SpecError([f"traffic {path}: not YAML ({exc})"]) from None
    return parse_traffic(data, f"traffic {path}")


@cost_app.command("estimate")
def estimate_cmd(
    file: Annotated[
        str, typer.Option("-f", "--file", help="Service spec (EAS JSON or YAML); '-' reads stdin.")
    ],
    traffic: Annotated[
        Path | None,
        typer.Option(
            "--traffic", help="Traffic profile (YAML): burst, requests, cold_starts (docs/cost.md)."
        ),
    ] = None,
    catalog: Annotated[
        Path | None,
        typer.Option("--catalog", help="Instance catalog (default: OPENEAS_CATALOG, else the shipped one)."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the estimate as one line of JSON.")] = False,
) -> None:
    """The monthly estimate of a spec: each line with its arithmetic, the total, the traps."""
    data = read_spec(file, groups_ok=False)
    errors: list[str] = []
    cat = prof = None
    try:
        cat = load_catalog(catalog or os.environ.get(ENV_CATALOG) or None)
    except SpecError as exc:
        errors += exc.errors
    try:
        prof = _traffic(traffic)
    except SpecError as exc:
        errors += exc.errors
    if errors or cat is None:
        _fail("cannot estimate", errors, code=2)
    est = estimate(parse_spec(data), cat, prof)
    if json_out:
        render.print_json(est.as_dict())
    else:
        render.out.print(render_text(est), highlight=False, soft_wrap=True)


def _estimate_text(answer: dict[str, Any]) -> str:
    if answer.get("error"):
        return f"cost: no estimate ({answer['error']})"
    cur = answer.get("currency", "")
    lines = [f"cost: {answer['pricing']['how']}"]
    for ln in answer.get("lines") or []:
        lines.append(f"  {ln['name']}: {ln['arithmetic']} = {render_money(ln['amount'])} {cur}")
    if answer.get("monthly_total") is not None:
        lines.append(f"  monthly estimate: {render_money(answer['monthly_total'])} {cur}/month")
    lines += [f"  note: {n}" for n in answer.get("notes") or []]
    lines += [f"  warning: {w}" for w in answer.get("warnings") or []]
    return "\n".join(lines)


def render_money(v: float) -> str:
    return f"{v:,.2f}"


def confirm_estimate(client: Client, spec: dict[str, Any], yes: bool) -> bool:
    """Before ``deploy`` applies: print the server's monthly estimate (on stderr) and, when stdin
    is a terminal and ``--yes`` was not given, ask. Without a terminal it proceeds (scripts, CI):
    the estimate is still printed. False: the user said no."""
    try:
        answer = client.request("POST", "/api/v1/cost/estimate", json_body={"spec": spec})
    except ApiError as exc:
        answer = {"error": exc.message}
    render.err.print(_estimate_text(answer), highlight=False, soft_wrap=True)
    if yes or not sys.stdin.isatty():
        return True
    return typer.confirm("deploy?", default=True, err=True)


@cost_app.command("report")
def report_cmd(
    by: Annotated[
        str, typer.Option("--by", help="Rows by service, UTC day or UTC month (service, day, month).")
    ] = "service",
    service: Annotated[str | None, typer.Option("--service", help="Only this service.")] = None,
    csv_out: Annotated[
        bool, typer.Option("--csv", help="Print the rows as CSV (with a header line).")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as one line of JSON.")] = False,
) -> None:
    """What replicas have cost so far (the meter): replica-hours by instance type, cold starts and
    their storage reads, in the server's catalog's currency."""
    if by not in BY_CHOICES:
        _fail("cannot report", [f"--by: {by!r} is not one of {', '.join(BY_CHOICES)}"], code=2)
    params = {"by": by, **({"service": service} if service else {})}
    try:
        answer = _client().request("GET", "/api/v1/cost/report", params=params)
    except ApiError as exc:
        _fail("cannot report", [exc.message, *exc.errors])
    if json_out:
        render.print_json(answer)
    elif csv_out:
        sys.stdout.write(render_csv(answer))
    else:
        render.out.print(render_report(answer), highlight=False, soft_wrap=True)
