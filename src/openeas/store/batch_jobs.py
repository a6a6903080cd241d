"""Batch jobs in the store (``openeas.batch`` runs them): a job row (desired state: Running,
Cancelled; outcome and counts) and one row per shard, marked done in the same transaction that
counts its lines, after the shard's output part was written whole. A restarted server re-reads
them and goes on with the shards not done, so a job killed at any point loses and repeats no
line of its output.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from openeas.errors import Conflict, NotFound
from openeas.kernel.states import BATCH_FINAL, BatchState, check_batch_transition
from openeas.store.batch_schema import BatchJobRow, BatchShardRow
from openeas.store.db import Store

# Job states and their legal changes: openeas.kernel.states.BatchState, BATCH_TRANSITIONS.
RUNNING = BatchState.RUNNING
SUCCEEDED = BatchState.SUCCEEDED
FAILED = BatchState.FAILED
CANCELLED = BatchState.CANCELLED
__all__ = [
    "CANCELLED", "FAILED", "RUNNING", "SUCCEEDED",
    "BatchJobRow", "BatchShardRow", "BatchStore", "Shard", "job_dict", "new_job_id",
]  # fmt: skip


def new_job_id() -> str:
    return f"batch_{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True)
class Shard:
    job_id: str
    shard: int
    first_line: int
    end_line: int
    start_byte: int
    end_byte: int


def job_dict(row: BatchJobRow) -> dict[str, Any]:
    done = row.ok_lines + row.failed_lines
    return {
        "id": row.id,
        "service": row.service,
        "input": row.input_url,
        "output": row.output_url,
        "errors": row.errors_url,
        "state": row.state,
        "total_lines": row.total_lines,
        "done_lines": done,
        "ok_lines": row.ok_lines,
        "failed_lines": row.failed_lines,
        "shards": {"total": row.shards_total, "done": row.shards_done},
        "shard_lines": row.shard_lines,
        "concurrency": row.concurrency,
        "message": row.message,
        "temporary_service": row.spec is not None,
        "created_at": row.created_at,
        "finished_at": row.finished_at,
    }


class BatchStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(
        self,
        *,
        service: str,
        input_url: str,
        output_url: str,
        errors_url: str,
        shard_lines: int,
        concurrency: int,
        bounds: list[tuple[int, int, int, int]],
        total_lines: int,
        spec: str | None = None,
        job_id: str | None = None,
    ) -> BatchJobRow:
        job_id = job_id or new_job_id()
        with self.store.session() as s:
            row = BatchJobRow(
                id=job_id,
                service=service,
                input_url=input_url,
                output_url=output_url,
                errors_url=errors_url,
                state=RUNNING,
                total_lines=total_lines,
                shard_lines=shard_lines,
                concurrency=concurrency,
                ok_lines=0,
                failed_lines=0,
                shards_total=len(bounds),
                shards_done=0,
                spec=spec,
                created_at=time.time(),
            )
            s.add(row)
            for i, (first, end, start, stop) in enumerate(bounds):
                s.add(
                    BatchShardRow(
                        job_id=job_id,
                        shard=i,
                        first_line=first,
                        end_line=end,
                        start_byte=start,
                        end_byte=stop,
                        done=0,
                        ok=0,
                        failed=0,
                    )
                )
            return row

    def get(self, job_id: str) -> BatchJobRow:
        with self.store.read() as s:
            row = s.get(BatchJobRow, job_id)
            if row is None:
                raise NotFound(f"batch job '{job_id}' not found")
            return row

    def all(self) -> list[BatchJobRow]:
        with self.store.read() as s:
            return list(s.scalars(select(BatchJobRow).order_by(BatchJobRow.created_at)))

    def running(self) -> list[BatchJobRow]:
        with self.store.read() as s:
            return list(s.scalars(select(BatchJobRow).where(BatchJobRow.state == RUNNING)))

    def pending_shards(self, job_id: str) -> list[Shard]:
        with self.store.read() as s:
            rows = s.scalars(
                select(BatchShardRow)
                .where(BatchShardRow.job_id == job_id, BatchShardRow.done == 0)
                .order_by(BatchShardRow.shard)
            )
            return [
                Shard(r.job_id, r.shard, r.first_line, r.end_line, r.start_byte, r.end_byte) for r in rows
            ]

    def shard_done(self, shard: Shard, ok: int, failed: int) -> bool:
        """Checkpoint: the shard's parts are complete. False when it was already (a second run)."""
        with self.store.session() as s:
            row = s.get(BatchShardRow, (shard.job_id, shard.shard))
            job = s.get(BatchJobRow, shard.job_id)
            if row is None or job is None or row.done:
                return False
            row.done, row.ok, row.failed = 1, ok, failed
            job.ok_lines += ok
            job.failed_lines += failed
            job.shards_done += 1
            return True

    def set_state(
        self, job_id: str, state: str, message: str | None = None, *, expect: tuple[str, ...] = ()
    ) -> BatchJobRow:
        with self.store.session() as s:
            row = s.get(BatchJobRow, job_id)
            if row is None:
                raise NotFound(f"batch job '{job_id}' not found")
            if expect and row.state not in expect:
                raise Conflict(f"batch job '{job_id}' is {row.state}; this needs one of: {', '.join(expect)}")
            to = check_batch_transition(row.state, state)
            row.state = to.value
            row.message = message
            row.finished_at = time.time() if to in BATCH_FINAL else None
            return row
