"""``openeas group …``: service groups from the command line (weights, members, rollback,
describe with per-member traffic, compare of mirrored pairs). ``openeas deploy -f group.yaml``
(``kind: ServiceGroup``) and ``openeas call-info <group>`` live in main.py."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.table import Table

from openeas.cli import render
from openeas.cli.common import cli_errors
from openeas.cli.common import client as _client

group_app = typer.Typer(
    name="group",
    help="Service groups: one endpoint, weighted members, match rules, mirroring.",
    no_args_is_help=True,
)

JsonOut = Annotated[bool, typer.Option("--json", help="Print the API answer as one line of JSON.")]
DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory of the server (reads DIR/server.json).", file_okay=False),
]


P = ParamSpec("P")
R = TypeVar("R")


def parse_pairs(items: list[str], what: str) -> dict[str, int]:
    """``["a=900", "b=100"]`` → ``{"a": 900, "b": 100}``; exit 2 naming the bad item."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = int(value)
        except ValueError:
            typer.echo(f"error: {what}: expected SERVICE=INTEGER, got {item!r}", err=True)
            raise typer.Exit(2) from None
    return out


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.2f}%"


def _ms(v: Any) -> str:
    return "-" if v is None else f"{float(v):g}"


def _dur(seconds: Any) -> str:
    """``"42s"``, ``"12m"``, ``"5.5h"``: how long a member has been at weight 0."""
    if seconds is None:
        return "-"
    s = float(seconds)
    if s >= 3600:
        return f"{s / 3600:.1f}h"
    return f"{int(s // 60)}m" if s >= 60 else f"{int(s)}s"


def members_table(d: dict[str, Any]) -> Table:
    stats = d.get("stats") or {}
    t = Table(title=f"group {d['name']} ({d['traffic_mode']})  {d['endpoint']}", title_justify="left")
    for col in ("member", "weight", "share", "mirror", "match", "status", "ready", "at 0 for"):
        t.add_column(col)
    for col in ("live req", "success", "p50 ms", "p99 ms", "mirror req", "m.success", "m.p99 ms", "dropped"):
        t.add_column(col, justify="right")
    for m in d.get("members") or []:
        s = stats.get(m["service"]) or {}
        live, mirror = s.get("live") or {}, s.get("mirror") or {}
        dropped = sum((mirror.get("dropped") or {}).values())
        t.add_row(
            m["service"],
            str(m["weight"]),
            f"{m['share_percent']:g}%",
            f"{m['mirror_weight']}%" if m.get("mirror_weight") else "-",
            "yes" if m.get("match") else "-",
            render.styled(m.get("status")),
            str(m.get("ready_replicas", 0)),
            _dur(m.get("at_zero_s")),
            str(live.get("requests", 0)),
            _pct(live.get("success")),
            _ms(live.get("p50_ms")),
            _ms(live.get("p99_ms")),
            str(mirror.get("requests", 0)),
            _pct(mirror.get("success")),
            _ms(mirror.get("p99_ms")),
            str(dropped),
        )
    return t


@group_app.command("ls")
@cli_errors
def list_groups(json_out: JsonOut = False, data_dir: DataDir = None) -> None:
    """List groups."""

    groups = _client(data_dir).groups()
    if json_out:
        render.print_json({"groups": groups})
        return
    if not groups:
        render.out.print("no groups")
        return
    t = Table()
    for col in ("name", "mode", "members", "endpoint"):
        t.add_column(col)
    for g in groups:
        members = ", ".join(f"{m['service']}={m['weight']}" for m in g.get("members") or [])
        t.add_row(g["name"], g["traffic_mode"], members, g["endpoint"])
    render.out.print(t)


@group_app.command()
@cli_errors
def describe(
    name: Annotated[str, typer.Argument(help="Group name.")],
    json_out: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Members with weights, shares, time at weight 0, and live/mirrored requests, success, p50/p99."""

    d = _client(data_dir).group(name)
    if json_out:
        render.print_json(d)
        return
    render.out.print(members_table(d))
    if d.get("stats") is None:
        render.out.print("(the gateway did not answer: no traffic figures)")
    keep = d.get("keep_old_hours")
    render.out.print(f"a member that left the traffic needs --force to be deleted or stopped for {keep:g} h")


@group_app.command("set-weight")
@cli_errors
def set_weight(
    name: Annotated[str, typer.Argument(help="Group name.")],
    weights: Annotated[list[str] | None, typer.Argument(help="SERVICE=WEIGHT (0..1000) ...")] = None,
    mirror: Annotated[
        list[str] | None,
        typer.Option("--mirror", help="SERVICE=PERCENT of requests copied to it (repeatable)."),
    ] = None,
    json_out: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Change weights (in effect at the gateway when the command returns; recorded as an event)."""

    w = parse_pairs(weights or [], "weights")
    m = parse_pairs(mirror or [], "--mirror")
    d = _client(data_dir).group_weights(name, w, m)
    _routing_warning(d)
    if json_out:
        render.print_json(d)
    else:
        render.out.print(f"{name}: " + _shares(d), highlight=False)


def _routing_warning(d: dict[str, Any]) -> None:
    """On stderr, when the gateway did not acknowledge the change before the call returned."""
    warning = (d.get("routing") or {}).get("warning")
    if warning:
        render.err.print(f"warning: {warning}", highlight=False)


def _shares(d: dict[str, Any]) -> str:
    parts = []
    for m in d.get("members") or []:
        text = f"{m['service']} {m['weight']} ({m['share_percent']:g}%)"
        if m.get("mirror_weight"):
            text += f" mirror {m['mirror_weight']}%"
        parts.append(text)
    return ", ".join(parts) or "no members"


@group_app.command()
@cli_errors
def rollback(
    name: Annotated[str, typer.Argument(help="Group name.")],
    json_out: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Restore the weights as they were before the last change (one command)."""

    d = _client(data_dir).group_rollback(name)
    _routing_warning(d)
    if json_out:
        render.print_json(d)
    else:
        render.out.print(f"{name} rolled back: " + _shares(d), highlight=False)


@group_app.command()
@cli_errors
def join(
    name: Annotated[str, typer.Argument(help="Group name.")],
    service: Annotated[str, typer.Argument(help="Service to add.")],
    weight: Annotated[
        int, typer.Option("--weight", min=0, max=1000, help="Its weight (default 0: no traffic).")
    ] = 0,
    json_out: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Add a service to a group (weight 0 unless given)."""

    d = _client(data_dir).group_join(name, service, weight)
    _routing_warning(d)
    render.print_json(d) if json_out else render.out.print(f"{name}: " + _shares(d), highlight=False)


@group_app.command()
@cli_errors
def leave(
    name: Annotated[str, typer.Argument(help="Group name.")],
    service: Annotated[str, typer.Argument(help="Member to remove.")],
    json_out: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Remove a member from a group."""

    d = _client(data_dir).group_leave(name, service)
    _routing_warning(d)
    render.print_json(d) if json_out else render.out.print(f"{name}: " + _shares(d), highlight=False)


@group_app.command()
@cli_errors
def compare(
    name: Annotated[str, typer.Argument(help="Group name.")],
    json_out: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Mirrored pairs: the candidate's answers against the member that served each request."""

    d = _client(data_dir).group_compare(name)
    if json_out:
        render.print_json(d)
        return
    cands = d.get("candidates") or {}
    if not cands:
        render.out.print(f"group {name} has no mirrored pairs (give a member a mirror weight)")
        return
    t = Table(title=f"group {name}: candidates vs baseline on mirrored pairs", title_justify="left")
    for col in (
        "candidate",
        "pairs",
        "same status",
        "same body",
        "latency Δ ms",
        "m.p50 ms",
        "m.p99 ms",
        "dropped",
    ):
        t.add_column(col, justify="right" if col != "candidate" else "left")
    for svc, c in cands.items():
        mirror = c.get("mirror") or {}
        t.add_row(
            svc,
            str(c["pairs"]),
            _pct(c.get("status_agreement")),
            _pct(c.get("body_agreement")),
            _ms(c.get("latency_delta_ms_mean")),
            _ms(mirror.get("p50_ms")),
            _ms(mirror.get("p99_ms")),
            str(sum((c.get("mirror_dropped") or {}).values())),
        )
    render.out.print(t)
    for svc, b in (d.get("baseline_live") or {}).items():
        render.out.print(
            f"baseline {svc}: {b['requests']} live requests, success {_pct(b['success'])}, "
            f"p50 {_ms(b['p50_ms'])} ms, p99 {_ms(b['p99_ms'])} ms",
            highlight=False,
        )
    for svc, c in cands.items():
        for s in (c.get("samples") or [])[:3]:
            render.out.print(
                f"\n[{svc}] differs from {s['primary']}: status {s['status']} vs {s['mirror_status']}",
                highlight=False,
                markup=False,
            )
            render.out.print(f"  {s['primary']}: {s['body'][:300]}", highlight=False, markup=False)
            render.out.print(f"  {svc}: {s['mirror_body'][:300]}", highlight=False, markup=False)


@group_app.command()
@cli_errors
def delete(
    name: Annotated[str, typer.Argument(help="Group name.")],
    json_out: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Delete a group (its members stay; their own endpoints keep working)."""

    body = _client(data_dir).group_delete(name)
    render.print_json(body) if json_out else render.out.print(f"deleted group {name}")


@group_app.command()
@cli_errors
def events(
    name: Annotated[str, typer.Argument(help="Group name.")],
    limit: Annotated[int, typer.Option("--limit", min=1)] = 50,
    json_out: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """A group's events: weight changes, members, rollouts."""

    evs = _client(data_dir).group_events(name, limit=limit)
    if json_out:
        render.print_json({"events": evs})
    elif not evs:
        render.out.print("no events")
    else:
        render.out.print(render.events_table(evs))


# -- staged rollout -----------------------------------------------------------------------------------

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"5m"``, ``"1h"``, ``"1.5h"`` → seconds; ValueError otherwise."""
    t = text.strip().lower()
    unit = _UNITS.get(t[-1:]) if t else None
    number = t[:-1] if unit is not None else t
    seconds = float(number) * (unit or 1.0)
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(text)
    return seconds


def rollout_text(d: dict[str, Any]) -> str:
    plan, state = d["plan"], d["state"]
    line = (
        f"rollout of {d['group']} to {plan['candidate']} (from {plan['baseline']}): {state['status']}, "
        f"step {d['step']} at {d['percent']}%"
    )
    if state.get("routes_restored") is False:
        line += " (restoring the routes of before it)"
    last = d.get("last_look")
    reason = last["reason"] if last and state["status"] == "Running" else state.get("reason")
    return line + (f"\n  {reason}" if reason else "")


ToOpt = Annotated[str | None, typer.Option("--to", help="The candidate member (starts a rollout).")]
FromOpt = Annotated[
    str | None, typer.Option("--from", help="The baseline member (default: the other one with most weight).")
]
StepsOpt = Annotated[str, typer.Option("--steps", help="Percent to the candidate at each step.")]
HoldOpt = Annotated[str, typer.Option("--hold", help="How long each step is held and checked: 90s, 10m, 1h.")]
MaxP99Opt = Annotated[
    float | None,
    typer.Option("--max-p99-ms", help="Roll back when the candidate's p99 over a step exceeds it."),
]
MinSuccessOpt = Annotated[
    float | None,
    typer.Option(
        "--min-success", help="Roll back when the candidate's success over a step falls under it (%)."
    ),
]
MinRequestsOpt = Annotated[
    int | None,
    typer.Option("--min-requests", min=1, help="Candidate answers a step needs to be judged (20)."),
]
EvalSetOpt = Annotated[
    Path | None,
    typer.Option("--eval-set", help="Step 0: the candidate must pass this eval set (JSONL) first."),
]
MinPassOpt = Annotated[
    float | None, typer.Option("--min-pass", min=0.0, max=1.0, help="The eval set's pass rate needed (0.95).")
]
PauseOpt = Annotated[bool, typer.Option("--pause", help="Pause the running rollout.")]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Resume a paused rollout (the step's hold starts again).")
]
AbortOpt = Annotated[bool, typer.Option("--abort", help="End it and restore the routes of before it.")]


def _rollout_args(commands: list[str], to: str | None, steps: str, hold: str) -> tuple[list[int], float]:
    """The steps and the hold in seconds; invalid input exits 2 before the server is asked."""
    if len(commands) > 1 or (commands and to):
        typer.echo("error: give one of --to, --pause, --resume, --abort", err=True)
        raise typer.Exit(2)
    try:
        step_list = [int(s) for s in steps.split(",") if s.strip()]
    except ValueError:
        typer.echo(f"error: --steps: expected percentages such as 5,25,50,100, got {steps!r}", err=True)
        raise typer.Exit(2) from None
    try:
        return step_list, parse_duration(hold)
    except ValueError:
        typer.echo(f"error: --hold: expected a duration such as 90s, 10m, 1h, got {hold!r}", err=True)
        raise typer.Exit(2) from None


@cli_errors
def rollout(
    group: Annotated[str, typer.Argument(help="Group name.")],
    to: ToOpt = None,
    baseline: FromOpt = None,
    steps: StepsOpt = "5,25,50,100",
    hold: HoldOpt = "1h",
    max_p99_ms: MaxP99Opt = None,
    min_success: MinSuccessOpt = None,
    min_requests: MinRequestsOpt = None,
    eval_set: EvalSetOpt = None,
    min_pass: MinPassOpt = None,
    pause: PauseOpt = False,
    resume: ResumeOpt = False,
    abort: AbortOpt = False,
    json_out: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Staged rollout: shift a group's traffic to --to step by step, holding each step while the
    candidate's success and p99 are checked; roll back automatically on a breach. Without --to
    (or a command), show the group's rollout."""

    commands = [w for w, on in (("pause", pause), ("resume", resume), ("abort", abort)) if on]
    step_list, hold_s = _rollout_args(commands, to, steps, hold)

    eval_text = None
    if eval_set is not None:
        from openeas.cli.evalfile import read_eval_set

        eval_text = read_eval_set(eval_set, "--eval-set")
    client = _client(data_dir)
    if commands:
        d = client.rollout_command(group, commands[0])
    elif to is not None:
        d = client.rollout_start(
            group,
            to,
            steps=step_list,
            hold_s=hold_s,
            baseline=baseline,
            max_p99_ms=max_p99_ms,
            min_success=min_success,
            min_requests=min_requests,
            eval_set=eval_text,
            min_pass=min_pass,
        )
    else:
        d = client.rollout(group)
    if json_out:
        render.print_json(d)
    else:
        render.out.print(rollout_text(d), highlight=False)
