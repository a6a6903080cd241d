"""The ``openeas`` command: deploy and operate services on an OpenEAS server.

The server is found from ``--data-dir`` (before or after the command), ``OPENEAS_SERVER`` +
``OPENEAS_ADMIN_TOKEN``, ``OPENEAS_DATA_DIR``, or ``./.data`` (see ``openeas.sdk.discovery``).
Exit codes: 0 ok, 1 server/API error, 2 invalid input (a bad spec or argument, a 400 from the
API), 130 interrupted (Ctrl-C). ``openeas server`` uses the same codes.
"""

import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer

from openeas import __version__
from openeas.cli import render
from openeas.cli.cache import cache_app
from openeas.cli.cost import confirm_estimate, cost_app
from openeas.cli.evals import eval_cmd
from openeas.cli.group import group_app, rollout
from openeas.errors import SpecError
from openeas.sdk.client import ApiError, Client, WaitTimeout, ready_count
from openeas.sdk.discovery import DEFAULT_DATA_DIR, ENV_DATA_DIR, ServerNotFound, discover
from openeas.storage.cache_index import ENV_LIMIT as ENV_CACHE_LIMIT
from openeas.storage.cache_index import parse_limit

app = typer.Typer(
    name="openeas",
    no_args_is_help=True,
    add_completion=False,
    # Locals would print the admin token into a traceback.
    pretty_exceptions_show_locals=False,
)

app.add_typer(group_app)
app.command("rollout")(rollout)
app.command("eval")(eval_cmd)  # eval sets (cli/evals.py)

P = ParamSpec("P")
R = TypeVar("R")

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Data directory of the server (reads DIR/server.json).",
        show_default=False,
        file_okay=False,
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the API answer as one line of JSON.")]
WaitTimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds to wait before giving up.")]


class _State:
    data_dir: Path | None = None


_state = _State()


def _fail(message: str, lines: list[str] | None = None, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    for line in lines or []:
        typer.echo(f"  {line}", err=True)
    raise typer.Exit(code)


def cli_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn known failures into ``error: ...`` on stderr and an exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ServerNotFound as exc:
            _fail(str(exc))
        except SpecError as exc:
            _fail("invalid spec", exc.errors, code=2)
        except ApiError as exc:
            _fail(exc.message, exc.errors, code=2 if exc.status in (400, 422) else 1)
        except WaitTimeout as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted", code=130)

    return wrapper


def _client(data_dir: Path | None = None) -> Client:
    return Client.from_info(discover(data_dir if data_dir is not None else _state.data_dir))


@contextmanager
def _spinner(text: str, enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """A rich spinner on stderr (stdout stays clean for ``--json``); yields a function to update it."""
    if not enabled:
        yield lambda _text: None
        return
    with render.err.status(text) as status:
        yield lambda new: status.update(new)


def _wait_ready(
    client: Client, name: str, replicas: int | None, timeout_s: float, quiet: bool = False
) -> dict[str, Any]:
    with _spinner(f"waiting for {name}", enabled=not quiet) as update:

        def progress(d: dict[str, Any]) -> None:
            wanted = replicas if replicas is not None else int(d.get("desired_replicas") or 0)
            update(render.progress_line(d, ready_count(d), wanted))

        detail = client.wait_ready(name, replicas=replicas, timeout_s=timeout_s, on_progress=progress)
    if not quiet:
        wanted = replicas if replicas is not None else detail.get("desired_replicas", 0)
        line = f"{name} is ready: {ready_count(detail)}/{wanted} replicas"
        cold = render.cold_start_line(detail)
        render.out.print(line + (f" · {cold}" if cold else ""), highlight=False)
    return detail


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
) -> None:
    """OpenEAS: deploy, route, autoscale and observe model servers.

    Server: --data-dir, else OPENEAS_SERVER (+ OPENEAS_ADMIN_TOKEN), else OPENEAS_DATA_DIR, else ./.data.
    """
    _state.data_dir = data_dir


# -- server -------------------------------------------------------------------------------------


@app.command()
def server(
    data_dir: DataDir = None,
    host: Annotated[str, typer.Option(help="Address the API and gateway listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Control-plane API port.")] = 8080,
    gateway_port: Annotated[int, typer.Option(help="Gateway (data plane) port.")] = 8081,
    deploy: Annotated[
        list[Path] | None,
        typer.Option("--deploy", help="Spec file deployed at start if the service is absent (repeatable)."),
    ] = None,
    oss_root: Annotated[
        Path | None,
        typer.Option(help="Local folder that oss://bucket/key maps to (default DIR/oss)."),
    ] = None,
    keep_replicas: Annotated[
        bool,
        typer.Option(
            "--keep-replicas",
            help="On exit leave replica processes running, to be adopted by the next start (upgrades).",
        ),
    ] = False,
    public_metrics: Annotated[
        bool,
        typer.Option(
            "--public-metrics",
            help="Serve the API's /metrics without the admin token (it names every service).",
        ),
    ] = False,
    registry_auth: Annotated[
        Path | None,
        typer.Option(
            help="Registry credentials (a containers auth.json / docker config.json) for image pulls "
            "of specs without dockerAuth.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    node_cpu: Annotated[
        float | None,
        typer.Option(min=0.01, help="Cores replicas may request in all (default: this node's cores)."),
    ] = None,
    node_memory: Annotated[
        int | None,
        typer.Option(min=1, help="MB replicas may request in all (default: this node's memory)."),
    ] = None,
    queue_url: Annotated[
        str | None,
        typer.Option(
            help="Async services' queue: redis://HOST:PORT/DB for several gateways (default: SQLite in "
            "DIR/queue.db). Also OPENEAS_QUEUE_URL.",
        ),
    ] = None,
    gateway_limit: Annotated[
        list[str] | None,
        typer.Option("--gateway-limit", help="NAME=VALUE: a gateway client limit (repeatable; docs/cli.md)."),
    ] = None,
    replica_user: Annotated[
        str,
        typer.Option(
            help="When root: the account whose group process replicas get, each service running as a "
            "uid of its own (created if missing); 'none': replicas run as the server's user.",
        ),
    ] = "openeas-replica",
    allow_host_path: Annotated[
        list[Path] | None,
        typer.Option(
            "--allow-host-path",
            help="A host folder specs may read (file:// and local paths, nfs.path, git repositories, "
            "warmup files), and batch jobs and stress tests may name (input, output, errors, data.path); "
            "repeatable. None by default, besides the local bucket (--oss-root).",
        ),
    ] = None,
    nfs_export: Annotated[
        list[str] | None,
        typer.Option(
            "--nfs-export",
            help="SERVER:/EXPORT=DIR: the NFS export a spec's nfs {server, path} names is mounted on this "
            "node at DIR (repeatable).",
        ),
    ] = None,
    catalog: Annotated[
        Path | None,
        typer.Option(
            help="Instance catalog (YAML: types, prices, currency) costs are priced by (docs/cost.md; "
            "default: the shipped one). Also OPENEAS_CATALOG.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    cache_limit: Annotated[
        str | None,
        typer.Option(
            help="The node cache's bound (20GiB, 500MB, bytes, or none): least recently used entries "
            "no replica uses are evicted above it (docs/cold-start.md). Default 20GiB.",
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="The store: postgresql://USER@HOST:PORT/DB (default: SQLite in DIR/openeas.db). "
            "DIR still holds secret.key. Also OPENEAS_STORE.",
            envvar="OPENEAS_STORE",
        ),
    ] = None,
) -> None:
    """Start the server (API, gateway, reconciler); writes DIR/server.json once it answers."""
    from openeas.server import run_server

    if catalog:  # the instance catalog the API prices by (api/cost.py reads it from there)
        os.environ["OPENEAS_CATALOG"] = str(catalog.resolve())
    if cache_limit is not None:  # the reconciler's node cache reads it (storage/cache_index.py)
        try:
            parse_limit(cache_limit)
        except SpecError as exc:  # a bad size is invalid input (exit 2) before anything starts
            _fail("cannot start the server", exc.errors, code=2)
        os.environ[ENV_CACHE_LIMIT] = cache_limit
    if queue_url:
        os.environ["OPENEAS_QUEUE_URL"] = queue_url  # the gateway and the backlog reader take it from there
    for f in deploy or []:
        # a bad --deploy spec is invalid input (exit 2) before anything starts
        _read_spec(str(f), groups_ok=False)
    if store and not store.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        raise typer.BadParameter(
            f"expected postgresql://USER@HOST:PORT/DB, got {store!r}", param_hint="--store"
        )
    resolved = data_dir or _state.data_dir or Path(os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR)
    run_server(
        data_dir=resolved,
        host=host,
        port=port,
        gateway_port=gateway_port,
        deploy=list(deploy or []),
        oss_root=oss_root,
        registry_auth=registry_auth.resolve() if registry_auth else None,
        keep_replicas=keep_replicas,
        public_metrics=public_metrics,
        gateway_limits=list(gateway_limit or []),
        node_cpu=node_cpu,
        node_memory_mb=node_memory,
        replica_user=replica_user,
        allow_host_paths=[p.resolve() for p in allow_host_path or []],
        nfs_exports=list(nfs_export or []),
        store_url=store or None,
    )


# -- services -----------------------------------------------------------------------------------


def _read_spec(file: str, groups_ok: bool = True) -> dict[str, Any]:
    """A service spec, or (``groups_ok``) a group's (``kind: ServiceGroup``), validated here."""
    from openeas.spec import parse_spec, parse_text
    from openeas.spec.group import is_group_document, parse_group
    from openeas.spec.load import MAX_SPEC_FILE_BYTES, read_spec_file

    try:
        if file == "-":
            text = sys.stdin.read(MAX_SPEC_FILE_BYTES + 1)
            if len(text) > MAX_SPEC_FILE_BYTES:
                raise SpecError([f"spec: stdin is larger than {MAX_SPEC_FILE_BYTES} bytes (16 MiB)"])
        else:
            try:
                text = read_spec_file(file)
            except OSError as exc:
                _fail(f"cannot read {file}: {exc.strerror or exc}", code=2)
        data = parse_text(text)
        if groups_ok and is_group_document(data):
            parse_group(data)
            return data
        parse_spec(data)  # validate here: errors name the field before anything reaches the server
    except SpecError as exc:
        _fail(f"invalid spec {'on stdin' if file == '-' else file}", exc.errors, code=2)
    return data


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
    json_out: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """List the versions of a service (each deploy or rollback makes one)."""
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


# -- stress -------------------------------------------------------------------------------------

from openeas.cli.stress import stress_app  # noqa: E402  (it uses this module's helpers)

app.add_typer(stress_app, name="stress")

# The `batch` verbs (cli/batch.py): imported last, they use the helpers above.
from openeas.cli.batch import batch_app  # noqa: E402

app.add_typer(batch_app, name="batch")
app.add_typer(cost_app, name="cost")  # `cost` verbs (cli/cost.py)

app.add_typer(cache_app, name="cache")  # `cache ls`, `cache prune` (cli/cache.py)
