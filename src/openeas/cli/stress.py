"""``openeas stress``: the one-click stress test, run from the CLI's own process.

``openeas stress TARGET [options]`` (the same as ``openeas stress run TARGET``) ramps load on a
service through this OpenEAS's gateway, shows each step as it ends, and prints the saturation
point and the recommended autoscaler settings; the report is kept in the server's store
(``openeas stress ls``, ``openeas stress show ID``). ``--apply`` writes the recommendation into
the service's spec as a new version. Ctrl-C stops the test and keeps a partial report (exit 130).

TARGET may name a service group (services and groups share one namespace): the test loads the
group's endpoint with its token, through its weights and match rules, and the report breaks the
answers down by member (the gateway's ``X-OpenEAS-Member`` header).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
import webbrowser
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from typer.core import TyperGroup

from openeas.cli import render
from openeas.cli.common import cli_errors
from openeas.cli.common import client as _client
from openeas.cli.common import fail as _fail
from openeas.sdk.client import ApiError, Client
from openeas.stress.analysis import StepResult
from openeas.stress.apply import apply_recommendation
from openeas.stress.generator import Generator
from openeas.stress.members import GroupInfo
from openeas.stress.observe import ApiObserver
from openeas.stress.plan import PlanError, StressPlan, build_plan
from openeas.stress.report import members_table, steps_table, summary_lines, to_html
from openeas.stress.runner import run_against


class _RunByDefault(TyperGroup):
    """``openeas stress TARGET`` means ``openeas stress run TARGET``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # typer vendors click: any Context
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


stress_app = typer.Typer(
    cls=_RunByDefault,
    no_args_is_help=True,
    help="Stress-test a service or a group's endpoint: find the saturation point and the autoscaler "
    "target (docs/stress.md).",
)

JsonOut = Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")]


def _resolve(client: Client, target: str) -> tuple[dict[str, Any], dict[str, str], GroupInfo | None]:
    """The service's (or group's) detail and call info, and the group; an unknown name is invalid
    input (exit 2)."""
    try:
        detail = client.describe(target)
    except ApiError as exc:
        if exc.status != 404:
            raise
        try:
            group = client.group(target, stats=False)
        except ApiError as gexc:
            if gexc.status == 404:
                _fail(
                    f"unknown service or group '{target}': nothing was sent "
                    "(openeas ls lists the services, openeas group ls the groups)",
                    code=2,
                )
            raise
        return group, client.group_call_info(target), GroupInfo.from_detail(group)
    if detail.get("status") == "Stopped":
        _fail(f"service '{target}' is stopped: start it first (openeas start {target})", code=2)
    return detail, client.call_info(target), None


def _progress_line(s: StepResult) -> str:
    p99 = s.p99_ms
    mark = f"  [red]knee: {s.knee}[/red]" if s.knee else ""
    return (
        f"step {s.index + 1}: offered {s.offered:g} → {s.throughput:.1f} ok/s, "
        f"p99 {'-' if p99 is None else f'{p99:.1f} ms'}, {s.errors} errors"
        f"{'' if s.replicas is None else f', {s.replicas:g} replicas'}{mark}"
    )


def _run(
    plan: StressPlan,
    client: Client,
    endpoint: str,
    token: str,
    detail: dict[str, Any],
    quiet: bool,
    group: GroupInfo | None = None,
) -> dict[str, Any]:
    gateway_url = endpoint.split("/api/predict/", 1)[0]
    observer_client = Client(client.api_url, client.admin_token, timeout_s=5)
    path = f"/api/v1/services/{plan.target}/load"
    observer = ApiObserver(lambda: observer_client.request("GET", path)).start()
    min_replicas = int((detail.get("spec") or {}).get("autoscaling", {}).get("min_replicas") or 1)
    ready = float(detail.get("ready_replicas") or 1)
    if group is not None:  # the group's replicas: its members'
        ready = float(sum(m.get("ready_replicas") or 0 for m in detail.get("members") or []) or 1)
    holder: dict[str, Generator] = {}

    def on_generator(gen: Generator) -> None:
        holder["gen"] = gen
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGINT, gen.stop)

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=render.err,
        transient=False,
    )
    task = progress.add_task(f"stress {plan.target}: starting", total=plan.duration_s)
    t0 = time.monotonic()
    stop_tick = threading.Event()

    def tick() -> None:  # the bar moves during a step, not only at its end
        while not stop_tick.wait(0.5):
            progress.update(task, completed=min(plan.duration_s, time.monotonic() - t0))

    def on_step(s: StepResult) -> None:
        if not quiet:
            progress.console.print(_progress_line(s), highlight=False)
        progress.update(task, description=f"stress {plan.target}: step {s.index + 1}")

    ticker = threading.Thread(target=tick, daemon=True)
    try:
        if not quiet:
            progress.start()
            ticker.start()
        report = asyncio.run(
            run_against(
                plan,
                gateway_url=gateway_url,
                token=token,
                observer=observer,
                on_step=on_step,
                on_generator=on_generator,
                min_replicas=min_replicas,
                replicas_fallback=ready,
                group=group,
            )
        )
    finally:
        stop_tick.set()
        observer.stop()
        observer_client.close()
        if not quiet:
            progress.stop()
    return report


@stress_app.command("run")
def run_cmd(
    target: Annotated[
        str, typer.Argument(help="The service or group to load (through this OpenEAS's gateway).")
    ],
    mode: Annotated[str | None, typer.Option("--mode", help="auto (ramp to the knee), scan, manual.")] = None,
    task: Annotated[
        Path | None, typer.Option("--task", help="An EAS benchmark task JSON (options below win over it).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="Request bodies, one JSON request per line.")
    ] = None,
    body: Annotated[
        str | None, typer.Option("--body", help="One request body used for every request.")
    ] = None,
    path: Annotated[str | None, typer.Option("--path", help="Sub path, e.g. /v1/chat/completions.")] = None,
    load: Annotated[str | None, typer.Option("--load", help="rate (open loop) or concurrency.")] = None,
    arrival: Annotated[str | None, typer.Option("--arrival", help="constant or poisson.")] = None,
    min_qps: Annotated[float | None, typer.Option("--min-qps", help="First rate, req/s.")] = None,
    max_qps: Annotated[float | None, typer.Option("--max-qps", help="Highest rate offered, req/s.")] = None,
    qps_delta: Annotated[
        float | None, typer.Option("--qps-delta", help="scan: req/s added per step.")
    ] = None,
    qps: Annotated[float | None, typer.Option("--qps", help="manual: the rate, req/s.")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", help="manual concurrency load.")] = None,
    max_concurrency: Annotated[
        int | None, typer.Option("--max-concurrency", help="concurrency ramp's top.")
    ] = None,
    step_s: Annotated[float | None, typer.Option("--step", help="Seconds per step.")] = None,
    duration_s: Annotated[float | None, typer.Option("--duration", help="Cap on the whole test, s.")] = None,
    max_requests: Annotated[int | None, typer.Option("--max-requests", help="Cap on requests sent.")] = None,
    max_rt_ms: Annotated[
        float | None, typer.Option("--max-rt", help="p99 above this (ms) is the knee.")
    ] = None,
    fault_tolerate: Annotated[
        float | None, typer.Option("--fault-tolerate", help="Error fraction tolerated per step.")
    ] = None,
    timeout_s: Annotated[float | None, typer.Option("--timeout", help="Per request, s.")] = None,
    peak_qps: Annotated[
        float | None, typer.Option("--peak-qps", help="Expected peak req/s, for max_replicas.")
    ] = None,
    json_out: JsonOut = False,
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write the HTML report to this file.")
    ] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the HTML report in a browser.")] = False,
    apply: Annotated[
        bool, typer.Option("--apply", help="Write the recommendation into the service's spec (new version).")
    ] = False,
) -> None:
    """Ramp load on TARGET until its saturation point; recommend the autoscaler target."""
    @cli_errors
    def go() -> None:
        options = {
            "mode": mode, "data_path": str(data) if data else None, "body": body, "path": path,
            "load": load, "arrival": arrival, "min_qps": min_qps, "max_qps": max_qps,
            "qps_growth_delta": qps_delta, "qps": qps, "concurrency": concurrency,
            "max_concurrency": max_concurrency, "step_s": step_s, "duration_s": duration_s,
            "max_requests": max_requests, "max_rt_ms": max_rt_ms, "fault_tolerate": fault_tolerate,
            "timeout_s": timeout_s, "expected_peak_qps": peak_qps,
        }  # fmt: skip
        plan = _plan(target, task, options)
        client = _client()
        detail, info, group = _resolve(client, target)
        if apply and group is not None:
            _fail(
                f"--apply: '{target}' is a group, which has no autoscaling of its own: nothing was "
                "sent (stress-test a member to apply its recommendation to it)",
                code=2,
            )
        try:
            report = _run(plan, client, info["endpoint"], info["token"], detail, json_out, group)
        except PlanError as exc:
            _fail("cannot run the stress test: nothing was sent", exc.errors, code=2)
            return
        _deliver(report, client, target, apply=apply, html=html, open_browser=open_browser, json_out=json_out)

    go()


def _plan(target: str, task: Path | None, options: dict[str, Any]) -> StressPlan:
    """The plan from the task file (if any) and the options; exits 2 naming every problem."""
    raw_task = None
    if task is not None:
        try:
            raw_task = json.loads(task.read_text())
        except (OSError, ValueError) as exc:
            _fail(f"cannot read the task {task}: {exc}", code=2)
    try:
        return build_plan(target, raw_task, options)
    except PlanError as exc:
        _fail("invalid stress plan: nothing was sent", exc.errors, code=2)
        raise


def _deliver(
    report: dict[str, Any],
    client: Client,
    target: str,
    *,
    apply: bool,
    html: Path | None,
    open_browser: bool,
    json_out: bool,
) -> None:
    """Keep the report in the store, apply its recommendation if asked, write and show it."""
    try:
        client.request("POST", "/api/v1/stress/reports", json_body=report)
    except ApiError as exc:
        render.err.print(f"warning: the report was not kept in the store: {exc.message}", highlight=False)
    if apply and report.get("recommendation") and report["status"] == "completed":
        new = apply_recommendation(client, target, report["recommendation"])
        report["applied"] = {"version": new.get("version")}
    if html is not None:
        html.write_text(to_html(report))
    if open_browser:
        out = html or Path(f"stress-{report['id']}.html")
        if html is None:
            out.write_text(to_html(report))
        webbrowser.open(out.resolve().as_uri())
    if json_out:
        render.print_json(report)
    else:
        _print_report(report)
        if "applied" in report:
            render.out.print(
                f"applied: {target} is now version {report['applied']['version']}", highlight=False
            )
        elif apply:
            render.out.print("not applied: the test did not complete", highlight=False)
    if report["status"] == "interrupted":
        raise typer.Exit(130)


def _print_report(report: dict[str, Any]) -> None:
    render.out.print(steps_table(report))
    if report.get("members"):
        render.out.print(members_table(report))
    for line in summary_lines(report):
        render.out.print(line, highlight=False, soft_wrap=True)
    render.out.print(
        f"report: {report['id']} (openeas stress show {report['id']} --html FILE)", highlight=False
    )


@stress_app.command("ls")
def ls_cmd(
    target: Annotated[str | None, typer.Option("--target", help="Only this service's reports.")] = None,
    json_out: JsonOut = False,
) -> None:
    """List stored stress reports, newest first."""
    @cli_errors
    def go() -> None:
        params = {"target": target} if target else None
        rows = _client().request("GET", "/api/v1/stress", params=params)["reports"]
        if json_out:
            render.print_json({"reports": rows})
            return
        if not rows:
            render.out.print("no stress reports")
            return
        from rich.table import Table

        t = Table()
        for col in ("id", "target", "status", "mode", "steps", "req/s per replica", "in flight per replica",
                    "recommended"):  # fmt: skip
            t.add_column(col)
        for r in rows:
            rec = (
                f"{r.get('recommended_metric')} {r.get('recommended_target')}"
                if r.get("recommended_metric")
                else "-"
            )
            t.add_row(
                str(r.get("id")), str(r.get("target")), str(r.get("status")), str(r.get("mode")),
                str(r.get("steps")), _fmt(r.get("qps_per_replica")),
                _fmt(r.get("concurrency_per_replica")), rec,
            )  # fmt: skip
        render.out.print(t)

    go()


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:g}"


@stress_app.command("show")
def show_cmd(
    report_id: Annotated[str, typer.Argument(help="A report id (openeas stress ls).")],
    json_out: JsonOut = False,
    html: Annotated[Path | None, typer.Option("--html", help="Write the HTML report to this file.")] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the HTML report in a browser.")] = False,
) -> None:
    """Show a stored stress report (table, JSON or HTML)."""
    @cli_errors
    def go() -> None:
        report = _client().request("GET", f"/api/v1/stress/{report_id}")
        if html is not None or open_browser:
            out = html or Path(f"stress-{report_id}.html")
            out.write_text(to_html(report))
            if open_browser:
                webbrowser.open(out.resolve().as_uri())
        if json_out:
            render.print_json(report)
        elif report.get("status") == "running":
            render.out.print(f"{report_id}: running", highlight=False)
        else:
            _print_report(report)

    go()
