"""The ``openeas`` command: deploy and operate services on an OpenEAS server.

The server is found from ``--data-dir`` (before or after the command), ``OPENEAS_SERVER`` +
``OPENEAS_ADMIN_TOKEN``, ``OPENEAS_DATA_DIR``, or ``./.data`` (see ``openeas.sdk.discovery``).
Exit codes: 0 ok, 1 server/API error, 2 invalid input (a bad spec or argument, a 400 from the
API), 130 interrupted (Ctrl-C). ``openeas server`` uses the same codes.
"""

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from openeas import __version__
from openeas.cli import render
from openeas.cli.archive import archive_commands
from openeas.cli.batch import batch_app
from openeas.cli.cache import cache_app
from openeas.cli.cluster import cluster_app, cluster_env, nodes_view
from openeas.cli.coldstart import show as coldstart_show
from openeas.cli.common import DataDir, JsonOut, WaitTimeoutOpt, cli_errors
from openeas.cli.common import client as _client
from openeas.cli.common import fail as _fail
from openeas.cli.common import read_spec as _read_spec
from openeas.cli.common import spinner as _spinner
from openeas.cli.common import state as _state
from openeas.cli.common import wait_ready as _wait_ready
from openeas.cli.cost import confirm_estimate, cost_app
from openeas.cli.evals import eval_cmd
from openeas.cli.group import group_app, rollout
from openeas.cli.server import server
from openeas.cli.simulate import simulate_cmd, trace_cmd
from openeas.cli.stress import stress_app
from openeas.sdk.client import ApiError, Client, ready_count

app = typer.Typer(
    name="openeas",
    no_args_is_help=True,
    add_completion=False,
    # Locals would print the admin token into a traceback.
    pretty_exceptions_show_locals=False,
)

app.add_typer(group_app)
app.add_typer(cluster_app, name="cluster")
app.command("rollout")(rollout)
app.command("eval")(eval_cmd)  # eval sets (cli/evals.py)
app.command()(server)  # cli/server.py
app.add_typer(stress_app, name="stress")  # cli/stress.py
app.add_typer(batch_app, name="batch")  # cli/batch.py
# The 180-day rule's archive (cli/archive.py): ``archive ls`` and ``restore``.
archive_app, restore_cmd = archive_commands(lambda: _client(), _fail)
app.add_typer(archive_app, name="archive")
app.command("restore")(cli_errors(restore_cmd))
app.add_typer(cost_app, name="cost")  # cli/cost.py
app.command("simulate")(cli_errors(simulate_cmd))  # cli/simulate.py
app.command("trace")(trace_cmd)  # cli/simulate.py: a field-guide shape as a trace CSV
app.add_typer(cache_app, name="cache")  # `cache ls`, `cache prune` (cli/cache.py)
BAKE_TIMEOUT_S = 1900.0  # how long `openeas bake` waits for the server's build, seconds

def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"openeas {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    data_dir: DataDir = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
    cluster: Annotated[
        Path | None,
        typer.Option("--cluster", help="Talk to the local cluster of this folder ('openeas cluster up')."),
    ] = None,
) -> None:
    """OpenEAS: deploy, route, autoscale and observe model servers.

    Server: --data-dir, else OPENEAS_SERVER (+ OPENEAS_ADMIN_TOKEN), else OPENEAS_DATA_DIR, else ./.data.
    """
    _state.data_dir = data_dir
    if cluster is not None:  # the same as OPENEAS_SERVER + OPENEAS_ADMIN_TOKEN
        os.environ.update(cluster_env(cluster))


# -- services -----------------------------------------------------------------------------------


@app.command()
@cli_errors
def deploy(
    file: Annotated[
        str, typer.Option("-f", "--file", help="Service spec (EAS JSON or YAML); '-' reads stdin.")
    ],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the replicas are Ready.")] = True,
    timeout: WaitTimeoutOpt = 600,
    json_out: JsonOut = False,
    data_dir: DataDir = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Validate and show what would happen (runtime and why); change nothing."
        ),
    ] = False,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", "-y", help="Apply without asking after the monthly estimate (asked only on a terminal)."
        ),
    ] = False,
) -> None:
    """Create a service from a spec, or roll out a new version if it exists; shows the monthly
    estimate first (docs/cost.md)."""
    spec = _read_spec(file)
    client = _client(data_dir)
    if spec.get("kind") == "ServiceGroup":
        _deploy_group(client, spec, json_out, dry_run)
        return
    if dry_run:
        plan = client.dry_run(spec)
        if json_out:
            render.print_json(plan)
        else:
            render.out.print(render.dry_run_text(plan), highlight=False, soft_wrap=True)
        return
    if not json_out and not confirm_estimate(client, spec, yes):
        _fail("not deployed", code=1)
    detail, created = client.apply(spec)
    name = str(detail.get("name") or spec["metadata"]["name"])
    if not json_out:
        what = "created" if created else "updated"
        render.out.print(f"{what} service {name}: version {detail.get('version')}", highlight=False)
    if wait:
        detail = _wait_ready(client, name, None, timeout, quiet=json_out)
    if json_out:
        render.print_json(detail)
    elif wait:
        render.out.print(f"endpoint: {detail.get('endpoint', '')}", highlight=False, soft_wrap=True)


@app.command()
@cli_errors
def validate(
    file: Annotated[
        str, typer.Option("-f", "--file", help="Service spec (EAS JSON or YAML); '-' reads stdin.")
    ],
    json_out: JsonOut = False,
) -> None:
    """Check a spec without a server: errors (exit 2), what is accepted but not used, warnings.

    `deploy --dry-run` asks the server and also says which runtime would run it, and why."""
    from openeas.api.control import spec_warnings
    from openeas.spec import parse_spec

    spec = parse_spec(_read_spec(file))
    unused, warnings = spec.unused_fields(), spec_warnings(spec)
    if json_out:
        render.print_json(
            {"name": spec.name, "valid": True, "accepted_unused": unused, "warnings": warnings,
             "spec": spec.public_dict()}
        )  # fmt: skip
        return
    render.out.print(f"spec is valid: service {spec.name}", highlight=False)
    if unused:
        line = f"accepted, not used by this runtime: {', '.join(unused)}"
        render.out.print(line, highlight=False, soft_wrap=True)
    for w in warnings:
        render.out.print(f"warning: {w}", highlight=False, soft_wrap=True)


def _deploy_group(client: Client, spec: dict[str, Any], json_out: bool, dry_run: bool) -> None:
    """Apply a group spec whole (create, or replace settings and routes)."""
    if dry_run:
        plan = {"name": spec["name"], "kind": "ServiceGroup", "valid": True, "spec": spec}
        if json_out:
            render.print_json(plan)
        else:
            render.out.print(f"group {spec['name']}: valid", highlight=False)
        return
    detail, created = client.group_apply(spec)
    if json_out:
        render.print_json(detail)
        return
    shares = ", ".join(f"{m['service']} {m['share_percent']:g}%" for m in detail.get("members") or [])
    what = "created" if created else "updated"
    render.out.print(f"{what} group {detail['name']}: {shares or 'no members'}", highlight=False)
    render.out.print(f"endpoint: {detail.get('endpoint', '')}", highlight=False, soft_wrap=True)


@app.command("ls")
@cli_errors
def list_services(json_out: JsonOut = False, data_dir: DataDir = None) -> None:
    """List services."""
    services = _client(data_dir).list()
    if json_out:
        render.print_json({"services": services})
    elif not services:
        render.out.print("no services")
    else:
        render.out.print(render.services_table(services))
        for s in services:  # the idle-spend alarm, one line each (docs/cost.md)
            if s.get("idle"):
                render.out.print(f"idle spend: {s['name']}: {s['idle']['message']}", highlight=False)


@app.command()
@cli_errors
def gateways(json_out: JsonOut = False, data_dir: DataDir = None) -> None:
    """The gateways registered in the store, on any machine: URL, host, pid, the routing version
    each applied, heartbeat age, live (heartbeat within 3 s)."""
    view = _client(data_dir).gateways()
    if json_out:
        render.print_json(view)
    elif not view.get("gateways"):
        render.out.print("no gateways registered")
    else:
        render.out.print(render.gateways_table(view["gateways"]))
        render.out.print(f"routing version {view['routing_version']}; {view['live']} live", highlight=False)


@app.command()
@cli_errors
def nodes(json_out: JsonOut = False, data_dir: DataDir = None) -> None:
    """The nodes replicas run on: replicas per node, by service ('local': the server's machine)."""
    client = _client(data_dir)
    view = nodes_view([client.describe(s["name"]) for s in client.list()])
    if json_out:
        render.print_json({"nodes": view})
    elif not view:
        render.out.print("no replicas on any node")
    else:
        for n in view:
            each = ", ".join(f"{k} {v}" for k, v in n["services"].items())
            render.out.print(f"{n['node']}: {n['replicas']} replicas ({each})", highlight=False)


@app.command()
@cli_errors
def describe(
    name: Annotated[str, typer.Argument(help="Service name.")],
    json_out: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Show a service: status, replicas with their phases and cold-start breakdown, versions."""
    d = _client(data_dir).describe(name)
    if json_out:
        render.print_json(d)
        return
    render.out.print(render.summary_grid(d))
    if d.get("autoscaling"):
        render.out.print()
        render.out.print(render.autoscaling_grid(d["autoscaling"], d.get("desired_replicas")))
    replicas = d.get("replicas") or []
    render.out.print()
    if replicas:
        render.out.print(render.replicas_table(replicas))
    else:
        render.out.print("no replicas")


@app.command()
@cli_errors
def autoscale(
    name: Annotated[str, typer.Argument(help="Service name.")],
    json_out: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Show the autoscaler for a service: each metric vs its target, desired vs Ready replicas,
    bounds and cron rule in force, and the last decision's reason (also when it did nothing)."""
    a = _client(data_dir).autoscaling(name)
    if json_out:
        render.print_json(a)
    else:
        render.out.print(render.autoscaling_grid(a, a.get("desired_replicas")))


def _changed(
    d: dict[str, Any],
    message: str,
    json_out: bool,
    client: Client,
    wait: bool,
    replicas: int | None,
    timeout: float,
) -> None:
    if not json_out:
        render.out.print(message, highlight=False)
    if wait:
        d = _wait_ready(client, str(d.get("name")), replicas, timeout, quiet=json_out)
    if json_out:
        render.print_json(d)


WaitOpt = Annotated[bool, typer.Option("--wait", help="Wait until the replicas are Ready.")]
ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Go ahead although the service carries, or left less than keep_old_hours (48 h) ago, "
        "a group's traffic.",
    ),
]


@app.command()
@cli_errors
def scale(
    name: Annotated[str, typer.Argument(help="Service name.")],
    replicas: Annotated[int, typer.Argument(min=0, help="Desired replica count.")],
    wait: WaitOpt = False,
    timeout: WaitTimeoutOpt = 600,
    json_out: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Set the desired replica count."""
    client = _client(data_dir)
    d = client.scale(name, replicas)
    _changed(d, f"scaling {name} to {replicas} replicas", json_out, client, wait, replicas, timeout)


@app.command()
@cli_errors
def stop(
    name: Annotated[str, typer.Argument(help="Service name.")],
    force: ForceOpt = False,
    json_out: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Stop all replicas of a service (it keeps its spec, versions and endpoint)."""
    client = _client(data_dir)
    d = client.stop(name, force=force)
    _changed(d, f"stopping {name}", json_out, client, False, None, 0)


@app.command()
@cli_errors
def start(
    name: Annotated[str, typer.Argument(help="Service name.")],
    wait: WaitOpt = False,
    timeout: WaitTimeoutOpt = 600,
    json_out: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Start a stopped service."""
    client = _client(data_dir)
    d = client.start(name)
    _changed(d, f"starting {name}", json_out, client, wait, None, timeout)


@app.command()
@cli_errors
def delete(
    name: Annotated[str, typer.Argument(help="Service name.")],
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until its replicas are stopped and it is gone.")
    ] = False,
    timeout: WaitTimeoutOpt = 600,
    force: ForceOpt = False,
    json_out: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Delete a service; its replicas are stopped in the background (--wait waits for that)."""
    client = _client(data_dir)
    body = client.delete(name, force=force)
    if wait:
        with _spinner(f"deleting {name}", enabled=not json_out) as update:
            client.wait_deleted(
                name,
                timeout_s=timeout,
                on_progress=lambda d: update(render.progress_line(d, ready_count(d), 0)),
            )
    if json_out:
        render.print_json(body)
    else:
        render.out.print(f"deleted {name}" if wait else f"deleting {name}", highlight=False)


@app.command()
@cli_errors
def versions(
    name: Annotated[str, typer.Argument(help="Service name.")],
    diff: Annotated[
        tuple[int, int] | None,
        typer.Option("--diff", metavar="FROM TO", help="Show what changed between two versions' specs."),
    ] = None,
    json_out: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """List the versions of a service (each deploy or rollback makes one), or diff two of them."""
    if diff is not None:
        answer = _client(data_dir).version_diff(name, *diff)
        if json_out:
            render.print_json(answer)
        else:
            typer.echo("\n".join(answer["diff"]) or f"v{diff[0]} and v{diff[1]} have the same spec")
        return
    vs = _client(data_dir).versions(name)
    if json_out:
        render.print_json({"versions": vs})
    else:
        render.out.print(render.versions_table(vs))


@app.command()
@cli_errors
def rollback(
    name: Annotated[str, typer.Argument(help="Service name.")],
    version: Annotated[int, typer.Argument(min=1, help="The version whose spec to roll back to.")],
    wait: WaitOpt = False,
    timeout: WaitTimeoutOpt = 600,
    json_out: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Roll out the spec of an earlier version again (as a new version)."""
    client = _client(data_dir)
    d = client.rollback(name, version)
    msg = f"rolled back {name} to the spec of version {version}: now version {d.get('version')}"
    _changed(d, msg, json_out, client, wait, None, timeout)


@app.command()
@cli_errors
def logs(
    name: Annotated[str, typer.Argument(help="Service name.")],
    replica: Annotated[str | None, typer.Option("--replica", help="Only this replica.")] = None,
    tail: Annotated[int, typer.Option("--tail", min=1, help="Lines per replica.")] = 200,
    json_out: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Print the last lines of the replicas' output."""
    entries = _client(data_dir).logs(name, replica=replica, tail=tail)
    if json_out:
        render.print_json({"logs": entries})
        return
    for i, entry in enumerate(entries):
        if len(entries) > 1:
            typer.echo(("\n" if i else "") + f"==> {entry.get('replica')} <==")
        text = str(entry.get("text", ""))
        typer.echo(text, nl=not text.endswith("\n"))


@app.command()
@cli_errors
def events(
    name: Annotated[str, typer.Argument(help="Service name.")],
    limit: Annotated[int, typer.Option("--limit", min=1, help="Most recent N events.")] = 50,
    json_out: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Show a service's events (scaling, replica phases, failures)."""
    evs = _client(data_dir).events(name, limit=limit)
    if json_out:
        render.print_json({"events": evs})
    elif not evs:
        render.out.print("no events")
    else:
        render.out.print(render.events_table(evs))


@app.command("call-info")
@cli_errors
def call_info(
    name: Annotated[str, typer.Argument(help="Service or group name.")],
    json_out: Annotated[bool, typer.Option("--json", help='Print {"endpoint": ..., "token": ...}.')] = False,
    data_dir: DataDir = None,
) -> None:
    """Show the endpoint and token to call a service or a service group with (and an OpenAI SDK snippet)."""
    client = _client(data_dir)
    try:
        info = client.call_info(name)
    except ApiError as exc:
        if exc.status != 404:
            raise
        info = client.group_call_info(name)  # a group's endpoint and token
    if json_out:
        render.print_json({"endpoint": info["endpoint"], "token": info["token"]})
        return
    endpoint, token = info["endpoint"], info["token"]
    typer.echo(f"endpoint: {endpoint}")
    typer.echo(f"token:    {token}")
    typer.echo("")
    typer.echo("# OpenAI-compatible servers:")
    typer.echo("from openai import OpenAI")
    typer.echo(f'client = OpenAI(base_url="{endpoint}/v1", api_key="{token}")')
    typer.echo("")
    typer.echo("# any HTTP server:")
    typer.echo(f"curl -H 'Authorization: {token}' {endpoint}")


@app.command()
@cli_errors
def coldstart(
    name: Annotated[str, typer.Argument(help="Service name.")],
    window: Annotated[int, typer.Option("--window", "-n", help="How many recent starts (1-100).")] = 20,
    json_out: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """p50/p90 of each cold-start phase over recent starts, and the cron pre-scaling's lead."""
    answer = _client(data_dir).request("GET", f"/api/v1/services/{name}/coldstart?window={window}")
    render.print_json(answer) if json_out else coldstart_show(answer)  # cli/coldstart.py


@app.command()
@cli_errors
def bake(
    name: Annotated[str, typer.Argument(help="Service name.")],
    base_image: Annotated[
        str | None, typer.Option("--base-image", help="Image the weights go onto (default: the spec's).")
    ] = None,
    no_rollout: Annotated[
        bool, typer.Option("--no-rollout", help="Build the image only; roll out no version.")
    ] = False,
    json_out: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Build an image with the current version's object-storage mounts baked in (podman/docker
    build on the server's node, no registry) and roll out a version that uses it (docs/cold-start.md)."""
    client = _client(data_dir)
    client.timeout_s = BAKE_TIMEOUT_S  # the build copies the model: minutes for gigabytes
    body = {"base_image": base_image, "rollout": not no_rollout}
    with _spinner(f"baking {name}'s mounts into an image", enabled=not json_out):
        answer = client.request("POST", f"/api/v1/services/{name}/bake", json_body=body)
    if json_out:
        render.print_json(answer)
        return
    for b in answer["baked"]:
        typer.echo(f"baked {b['storage']} ({b['bytes']} bytes) at {b['mount_path']}")
    typer.echo(f"image: {answer['image']} (on {answer['base_image']}; built in {answer['build_s']:.1f} s)")
    if answer["version"] is not None:
        typer.echo(f"version {answer['version']} uses it, rolling out (see: openeas coldstart {name})")
