"""The batch runner (in the server process): serves the running jobs' shards through the gateway,
checkpoints each finished shard, and writes the output and errors files when all are done.

A shard is served whole, then its two parts (``<output>.<job id>.parts/<shard>.out.jsonl`` and
``.err.jsonl``: the job's own folder) are written under a temporary name and renamed, and only
then is the shard marked done in the store. A kill at any point leaves each shard either done (its
parts complete) or not done (served again from the start after the restart: its requests may
reach the replicas twice, its lines are written once). The final files are the parts
concatenated in shard order, so the output has one line per input line, each once.

Lines are sent to ``/api/predict/<service><url>`` with the service's token, ``concurrency`` at a
time; a refused or failed request (no answer, 429, 5xx) is tried again up to ``ATTEMPTS`` times;
an async service's request id is followed to its result (the sink, long-polled).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from openeas.batch.files import concat_whole, part_paths, read_shard, remove_parts, write_whole
from openeas.batch.lines import BatchRequest, LineError, error_line, output_line, parse_line
from openeas.batch.service import ensure_service, remove_service
from openeas.errors import NotFound
from openeas.kernel.clock import LOOP_CLOCK, Clock
from openeas.store import Store
from openeas.store.batch_jobs import CANCELLED, FAILED, RUNNING, SUCCEEDED, BatchJobRow, BatchStore, Shard

log = logging.getLogger("openeas.batch")

ATTEMPTS = 4  # tries per line before it goes to the errors file (no answer, 429 or 5xx)
RETRY_BACKOFF_S = 0.5  # seconds before the second try, doubled for each further one
REQUEST_TIMEOUT_S = 600.0  # one request, hold and queue included
LOOK_EVERY_S = 1.0  # seconds between two looks for running jobs when nothing woke the runner
REQUEST_ID = "X-Eas-Queueservice-Request-Id"


class BatchRunner:
    def __init__(
        self,
        store: Store,
        gateway_url: str,
        on_change: Callable[[], object] = lambda: None,
        check_files: Callable[[Mapping[str, str | None]], list[str]] = lambda _files: [],
        clock: Clock = LOOP_CLOCK,
    ) -> None:
        self.jobs = BatchStore(store)
        self.clock = clock  # paces the look for jobs and the retries' backoff
        # The server's host-path rule for a job's files, {field: url} -> problems: a job stored
        # before the rule (or by a server allowed more folders) fails instead of reading them.
        self.check_files = check_files
        self.on_change = on_change  # desired state changed (a job's own service): wake the reconciler
        self.store = store
        self.gateway_url = gateway_url.rstrip("/")
        self._wake = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._session: Any = None

    def wake(self) -> None:
        """A job was submitted or resumed: look now."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    for job in await asyncio.to_thread(self.jobs.running):
                        task = self._running.get(job.id)
                        if task is None or task.done():
                            self._running[job.id] = asyncio.create_task(self._run_job(job.id))
                except Exception:
                    log.exception("batch: could not read the running jobs")
                await self.clock.sleep(LOOK_EVERY_S, until=self._wake)
        finally:
            for task in self._running.values():
                task.cancel()
            await asyncio.gather(*self._running.values(), return_exceptions=True)
            await self._session.close()

    async def _run_job(self, job_id: str) -> None:
        try:
            job = await asyncio.to_thread(self.jobs.get, job_id)
            files = {"input": job.input_url, "output": job.output_url, "errors": job.errors_url}
            if problems := self.check_files(files):
                await asyncio.to_thread(self.jobs.set_state, job_id, FAILED, "; ".join(problems))
                if job.spec is not None:
                    await asyncio.to_thread(remove_service, self.store, job.service, "failed")
                    self.on_change()
                return
            if job.spec is not None:  # the job's own service: there, or made again (a resume)
                await asyncio.to_thread(ensure_service, self.store, job.spec)
                self.on_change()
            try:
                token = await asyncio.to_thread(self.store.token, job.service)
            except NotFound:
                await asyncio.to_thread(
                    self.jobs.set_state, job_id, FAILED, f"service '{job.service}' not found"
                )
                return
            for shard in await asyncio.to_thread(self.jobs.pending_shards, job_id):
                current = await asyncio.to_thread(self.jobs.get, job_id)
                if current.state != RUNNING:
                    return  # cancelled meanwhile: the shards done stay done
                raw = await asyncio.to_thread(read_shard, job.input_url, shard.start_byte, shard.end_byte)
                out, err, ok, failed = await self._serve_shard(job, token, shard, raw)
                out_url, err_url = part_paths(job.output_url, job_id, shard.shard)
                await asyncio.to_thread(write_whole, out_url, out, job_id)
                await asyncio.to_thread(write_whole, err_url, err, job_id)
                await asyncio.to_thread(self.jobs.shard_done, shard, ok, failed)
            await self._finish(job_id)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("batch job %s failed", job_id)
            with contextlib.suppress(Exception):
                row = await asyncio.to_thread(self.jobs.set_state, job_id, FAILED, f"{type(e).__name__}: {e}")
                if row.spec is not None:
                    await asyncio.to_thread(remove_service, self.store, row.service, "failed")
                    self.on_change()

    async def _finish(self, job_id: str) -> None:
        job = await asyncio.to_thread(self.jobs.get, job_id)
        if job.state != RUNNING or job.shards_done < job.shards_total:
            return
        parts = [part_paths(job.output_url, job_id, i) for i in range(job.shards_total)]
        await asyncio.to_thread(concat_whole, [out for out, _ in parts], job.output_url, job_id)
        await asyncio.to_thread(concat_whole, [err for _, err in parts], job.errors_url, job_id)
        message = f"{job.ok_lines} lines answered, {job.failed_lines} in the errors file"
        await asyncio.to_thread(self.jobs.set_state, job_id, SUCCEEDED, message, expect=(RUNNING,))
        if job.spec is not None:
            await asyncio.to_thread(remove_service, self.store, job.service, "succeeded")
            self.on_change()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(remove_parts, job.output_url, job_id)

    async def _serve_shard(
        self, job: BatchJobRow, token: str, shard: Shard, raw: bytes
    ) -> tuple[bytes, bytes, int, int]:
        results: dict[int, tuple[bool, bytes]] = {}
        gate = asyncio.Semaphore(job.concurrency)

        async def one(req: BatchRequest) -> None:
            async with gate:
                results[req.line] = await self._call(job.service, token, req)

        tasks = []
        for offset, line in enumerate(raw.splitlines()):
            parsed = parse_line(shard.first_line + offset, line)
            if parsed is None:
                continue
            if isinstance(parsed, LineError):
                results[parsed.line] = (
                    False,
                    error_line(parsed.line, parsed.custom_id, parsed.code, parsed.message),
                )
            else:
                tasks.append(asyncio.create_task(one(parsed)))
        await asyncio.gather(*tasks)
        out = [data for _, (ok, data) in sorted(results.items()) if ok]
        err = [data for _, (ok, data) in sorted(results.items()) if not ok]
        return b"".join(out), b"".join(err), len(out), len(err)

    async def _call(self, service: str, token: str, req: BatchRequest) -> tuple[bool, bytes]:
        import aiohttp

        url = f"{self.gateway_url}/api/predict/{service}{req.url}"
        headers = {"Authorization": token}
        last = ""
        status: int | None = None
        body: Any = None
        for attempt in range(ATTEMPTS):
            if attempt:
                await self.clock.sleep(RETRY_BACKOFF_S * 2 ** (attempt - 1))
            try:
                async with self._session.request(
                    req.method,
                    url,
                    json=req.body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
                ) as resp:
                    status, raw = resp.status, await resp.read()
                    rid = resp.headers.get(REQUEST_ID, "")
                if status == 200 and rid and req.url.split("?")[0] != "/sink":
                    status, raw = await self._async_result(service, headers, rid)
            except (aiohttp.ClientError, TimeoutError) as e:
                status, last = None, f"{type(e).__name__}: {e}"
                continue
            body = _decode(raw)
            if status is not None and (status >= 500 or status == 429):
                last = f"HTTP {status}"
                continue
            if 200 <= status < 300:
                return True, output_line(req, status, body, rid or f"req_{req.line}")
            return False, error_line(req.line, req.custom_id, "http_error", f"HTTP {status}", status, body)
        return False, error_line(
            req.line,
            req.custom_id,
            "request_failed",
            f"no answer after {ATTEMPTS} attempts: {last}",
            status,
            body,
        )

    async def _async_result(self, service: str, headers: dict[str, str], rid: str) -> tuple[int, bytes]:
        """An async service answered with a request id: wait for its result in the sink."""
        sink = f"{self.gateway_url}/api/predict/{service}/sink"
        while True:
            async with self._session.get(
                sink, params={"requestId": rid, "_timeout_": "30s"}, headers=headers
            ) as r:
                if r.status != 204:
                    return r.status, await r.read()


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


__all__ = ["CANCELLED", "BatchRunner", "part_paths"]
