"""Batch mode: JSONL jobs in the OpenAI Batch API's line format, served through the gateway in
checkpointed shards, resumable after a kill at any point (docs/batch.md)."""

from openeas.batch.lines import BatchRequest, LineError, parse_line, shard_bounds
from openeas.batch.runner import BatchRunner
from openeas.batch.store import BatchStore, job_dict

__all__ = ["BatchRequest", "BatchRunner", "BatchStore", "LineError", "job_dict", "parse_line", "shard_bounds"]
