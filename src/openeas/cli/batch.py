"""``openeas batch submit | ls | describe | cancel | resume``: batch jobs from the command line,
with a progress bar while a job runs (docs/cli.md, docs/batch.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from openeas.cli import render
from openeas.cli.common import DataDir, JsonOut, cli_errors
from openeas.cli.common import client as _client
from openeas.cli.common import read_spec as _read_spec
from openeas.sdk.client import Client

batch_app: typer.Typer = typer.Typer(
    help="Batch jobs: JSONL in (OpenAI Batch API lines), JSONL out; resumable.", no_args_is_help=True
)

WaitOpt = Annotated[
    bool, typer.Option("--wait/--no-wait", help="Follow the job with a progress bar until it ends.")
]
JobId = Annotated[str, typer.Argument(help="Batch job id (batch_...).")]
POLL_S = 0.5


def _show(job: dict[str, Any]) -> None:
    render.out.print(
        f"{job['id']}  {job['state']}  service {job['service']}  "
        f"{job['done_lines']}/{job['total_lines']} lines "
        f"({job['ok_lines']} ok, {job['failed_lines']} errors)  "
        f"shards {job['shards']['done']}/{job['shards']['total']}",
        highlight=False,
    )
    render.out.print(
        f"  input  {job['input']}\n  output {job['output']}\n  errors {job['errors']}", highlight=False
    )
    if job.get("message"):
        render.out.print(f"  {job['message']}", highlight=False)


def _follow(client: Client, job: dict[str, Any], quiet: bool) -> dict[str, Any]:
    """Poll the job until it leaves Running; a progress bar on stderr meanwhile."""
    if quiet:
        while job["state"] == "Running":
            time.sleep(POLL_S)
            job = client.request("GET", f"/api/v1/batch/{job['id']}")
        return job
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=render.err, transient=True) as bar:
        task = bar.add_task(job["id"], total=job["total_lines"], completed=job["done_lines"])
        while job["state"] == "Running":
            time.sleep(POLL_S)
            job = client.request("GET", f"/api/v1/batch/{job['id']}")
            bar.update(task, completed=job["done_lines"])
    return job


def _end(job: dict[str, Any], json_out: bool) -> None:
    if json_out:
        render.print_json(job)
    else:
        _show(job)
    if job["state"] == "Failed":
        raise typer.Exit(1)


@batch_app.command("submit")
@cli_errors
def submit(
    input_url: Annotated[str, typer.Option("--input", help="JSONL input: a path or an fsspec URL.")],
    output_url: Annotated[str, typer.Option("--output", help="JSONL output: a path or an fsspec URL.")],
    errors_url: Annotated[
        str | None, typer.Option("--errors", help="Errors JSONL (default <output stem>.errors.jsonl).")
    ] = None,
    service: Annotated[
        str | None, typer.Option("--service", help="The existing service that serves the lines.")
    ] = None,
    spec_file: Annotated[
        str | None,
        typer.Option(
            "--spec",
            help="Instead of --service: a spec file whose replicas serve this job only (removed after).",
        ),
    ] = None,
    instance_type: Annotated[
        str | None,
        typer.Option(help="With --spec: the instance type of its replicas (e.g. a preemptible one)."),
    ] = None,
    shard_lines: Annotated[int, typer.Option(help="Lines per checkpoint.")] = 500,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.")] = 16,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output or errors file (else refused).")
    ] = False,
    wait: WaitOpt = True,
    json_out: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Submit a batch job (local paths are made absolute: the server reads them)."""
    client = _client(data_dir)

    def local(url: str) -> str:
        return url if "://" in url else str(Path(url).resolve())

    body = {
        "service": service,
        "spec": _read_spec(spec_file) if spec_file else None,
        "instance_type": instance_type,
        "input": local(input_url),
        "output": local(output_url),
        "errors": local(errors_url) if errors_url else None,
        "shard_lines": shard_lines,
        "concurrency": concurrency,
        "overwrite": overwrite,
    }
    job = client.request("POST", "/api/v1/batch", json_body=body)
    if not json_out:
        render.err.print(
            f"submitted {job['id']}: {job['total_lines']} lines in {job['shards']['total']} shards"
        )
    if wait:
        job = _follow(client, job, quiet=json_out)
    _end(job, json_out)


@batch_app.command("ls")
@cli_errors
def list_jobs(json_out: JsonOut = False, data_dir: DataDir = None) -> None:
    """List batch jobs."""
    jobs = _client(data_dir).request("GET", "/api/v1/batch")
    if json_out:
        render.print_json({"jobs": jobs})
        return
    if not jobs:
        render.out.print("no batch jobs")
        return
    table = Table("ID", "SERVICE", "STATE", "LINES", "OK", "ERRORS", "OUTPUT")
    for j in jobs:
        table.add_row(
            j["id"],
            j["service"],
            j["state"],
            f"{j['done_lines']}/{j['total_lines']}",
            str(j["ok_lines"]),
            str(j["failed_lines"]),
            j["output"],
        )
    render.out.print(table)


@batch_app.command("describe")
@cli_errors
def describe_job(job_id: JobId, json_out: JsonOut = False, data_dir: DataDir = None) -> None:
    """Show a batch job: state, counts, shards, files."""
    _end(_client(data_dir).request("GET", f"/api/v1/batch/{job_id}"), json_out)


@batch_app.command("cancel")
@cli_errors
def cancel(job_id: JobId, json_out: JsonOut = False, data_dir: DataDir = None) -> None:
    """Cancel a running job after its current shard (resume goes on from there)."""
    _end(_client(data_dir).request("POST", f"/api/v1/batch/{job_id}/cancel"), json_out)


@batch_app.command("resume")
@cli_errors
def resume(job_id: JobId, wait: WaitOpt = True, json_out: JsonOut = False, data_dir: DataDir = None) -> None:
    """Go on with a cancelled or failed job from its last checkpoint."""
    client = _client(data_dir)
    job = client.request("POST", f"/api/v1/batch/{job_id}/resume")
    if wait:
        job = _follow(client, job, quiet=json_out)
    _end(job, json_out)
