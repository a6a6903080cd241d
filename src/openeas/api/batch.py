"""The batch-job routes of the control-plane API: submit, list, describe, cancel, resume.

Submitting checks what can be checked at once (the files are absolute paths inside the host
folders the server was allowed, ``--allow-host-path``, or object storage URLs: the rule of
storage/hostpaths.py; the service exists, the input is a regular file within the cap and has
lines, the output and errors files are neither the input nor each other, exist only with
``overwrite``, their folder can be made; batch/files.py) and answers 400 naming each field; the
lines themselves are checked as they are served (an invalid line goes to the errors file, the
job goes on)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from openeas.batch.files import make_parent, output_problems, scan_input
from openeas.batch.service import ensure_service, remove_service, temporary_spec
from openeas.errors import SpecError
from openeas.spec import ServiceSpec
from openeas.store import Store
from openeas.store.batch_jobs import CANCELLED, FAILED, RUNNING, BatchStore, job_dict, new_job_id
from openeas.store.spec_secrets import seal
from openeas.userfile import UserFileError

DEFAULT_SHARD_LINES = 500  # lines per checkpoint: a kill repeats at most this many requests
DEFAULT_CONCURRENCY = 16  # requests of one job in flight at once


class SubmitBody(BaseModel):
    service: str | None = Field(default=None, description="the existing service that serves the lines")
    spec: dict[str, Any] | None = Field(
        default=None,
        description="instead of service: a service spec whose replicas serve this job only (deleted after)",
    )
    instance_type: str | None = Field(
        default=None, description="with spec: the instance type of its replicas (e.g. a preemptible one)"
    )
    input: str = Field(description="JSONL file: a path or an fsspec URL (file://, s3://, ...)")
    output: str = Field(description="where the output JSONL goes (path or fsspec URL)")
    errors: str | None = Field(
        default=None, description="the errors JSONL; default: <output stem>.errors.jsonl"
    )
    shard_lines: int = Field(
        default=DEFAULT_SHARD_LINES, ge=1, le=100_000, description="lines per checkpoint"
    )
    concurrency: int = Field(
        default=DEFAULT_CONCURRENCY, ge=1, le=1024, description="requests in flight at once"
    )
    overwrite: bool = Field(
        default=False, description="replace an existing output or errors file (else submitting is a 400)"
    )


def errors_url(output: str) -> str:
    stem = output[: -len(".jsonl")] if output.endswith(".jsonl") else output
    return stem + ".errors.jsonl"


def _check(body: SubmitBody) -> tuple[list[tuple[int, int, int, int]], int]:
    """The input's shards and request count; every problem with the files at once (400)."""
    problems: list[str] = []
    bounds: list[tuple[int, int, int, int]] = []
    total = 0
    try:
        bounds, total = scan_input(body.input, body.shard_lines)
        if total == 0:
            problems.append(f"input: {body.input} has no lines")
    except UserFileError as e:
        problems.append(str(e))
    errors = body.errors or errors_url(body.output)
    problems += output_problems(body.input, body.output, errors, body.overwrite)
    if not problems:
        try:
            make_parent(body.output, "output")
            make_parent(errors, "errors")
        except UserFileError as e:
            problems.append(str(e))
    if problems:
        raise SpecError(problems)
    return bounds, total


def add_batch_routes(
    app: FastAPI,
    store: Store,
    auth: list[Any],
    wake: Callable[[], object],
    check_spec: Callable[[ServiceSpec], None] = lambda _spec: None,
    check_files: Callable[[Mapping[str, str | None]], list[str]] = lambda _files: [],
) -> None:
    """``check_spec``: the server's host-path rule for a job's spec; ``check_files``: the same
    rule for the job's files, ``{field: url}`` → every problem (a SpecError refuses either)."""
    jobs = BatchStore(store)

    @app.post("/api/v1/batch", status_code=201, dependencies=auth)
    async def submit(body: SubmitBody) -> dict[str, Any]:
        """Start a batch job; it runs in the server until every line has an output or an error line."""
        job_id = new_job_id()
        spec_json = None
        problems = check_files({"input": body.input, "output": body.output, "errors": body.errors})
        if (body.service is None) == (body.spec is None):
            problems.append("service, spec: give exactly one (an existing service, or a spec for the job)")
        if problems:
            raise SpecError(problems)
        if body.spec is not None:
            spec = temporary_spec(body.spec, job_id, body.instance_type)
            check_spec(spec)
            spec_json, service = json.dumps(seal(spec.to_dict(), store.cipher)), spec.name
        else:
            if body.instance_type is not None:
                raise SpecError(["instance_type: only with spec (an existing service keeps its own)"])
            service = str(body.service)
            await asyncio.to_thread(store.get_service, service)  # 404 names the service
        bounds, total = await asyncio.to_thread(_check, body)
        if spec_json is not None:
            await asyncio.to_thread(ensure_service, store, spec_json)
        row = await asyncio.to_thread(
            jobs.create,
            job_id=job_id,
            spec=spec_json,
            service=service,
            input_url=body.input,
            output_url=body.output,
            errors_url=body.errors or errors_url(body.output),
            shard_lines=body.shard_lines,
            concurrency=body.concurrency,
            bounds=bounds,
            total_lines=total,
        )
        wake()
        return job_dict(row)

    @app.get("/api/v1/batch", dependencies=auth)
    def list_jobs() -> list[dict[str, Any]]:
        return [job_dict(r) for r in jobs.all()]

    @app.get("/api/v1/batch/{job_id}", dependencies=auth)
    def describe(job_id: str) -> dict[str, Any]:
        return job_dict(jobs.get(job_id))

    @app.post("/api/v1/batch/{job_id}/cancel", dependencies=auth)
    def cancel(job_id: str) -> dict[str, Any]:
        """Stop after the shard being served; the shards done stay done (resume goes on from there)."""
        row = jobs.set_state(job_id, CANCELLED, "cancelled", expect=(RUNNING,))
        if row.spec is not None:
            remove_service(store, row.service, "cancelled")
            wake()
        return job_dict(row)

    @app.post("/api/v1/batch/{job_id}/resume", dependencies=auth)
    def resume(job_id: str) -> dict[str, Any]:
        """Go on with a cancelled or failed job from its last checkpoint (its files checked again:
        a job stored before the host-path rule, or by a server allowed more, is refused here)."""
        row = jobs.get(job_id)
        files = {"input": row.input_url, "output": row.output_url, "errors": row.errors_url}
        if problems := check_files(files):
            raise SpecError(problems)
        row = jobs.set_state(job_id, RUNNING, None, expect=(CANCELLED, FAILED))
        wake()
        return job_dict(row)
