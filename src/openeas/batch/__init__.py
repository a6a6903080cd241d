"""Batch mode: JSONL jobs in the OpenAI Batch API's line format, served through the gateway in
checkpointed shards, resumable after a kill at any point (docs/batch.md). The jobs are kept by
the store (``openeas.store.batch_jobs``)."""

from openeas.batch.lines import BatchRequest, LineError, parse_line, shard_bounds
from openeas.batch.runner import BatchRunner

__all__ = ["BatchRequest", "BatchRunner", "LineError", "parse_line", "shard_bounds"]
