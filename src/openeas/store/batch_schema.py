"""The batch tables (``batch_jobs``, ``batch_shards``): their rows and the migration that adds
them. Apart from ``store/batch_jobs.py`` (which reads and writes them) so that the migration in
``store/db.py`` imports a schema, not the store that imports ``db``."""

from __future__ import annotations

from sqlalchemy import Connection, Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from openeas.store.schema import Base


class BatchJobRow(Base):
    __tablename__ = "batch_jobs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    service: Mapped[str] = mapped_column(String(64), index=True)
    input_url: Mapped[str] = mapped_column(Text)
    output_url: Mapped[str] = mapped_column(Text)
    errors_url: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    total_lines: Mapped[int] = mapped_column(Integer, default=0)  # requests (blank lines excluded)
    shard_lines: Mapped[int] = mapped_column(Integer)  # input lines per shard
    concurrency: Mapped[int] = mapped_column(Integer)  # requests in flight at once
    ok_lines: Mapped[int] = mapped_column(Integer, default=0)  # output lines written (done shards)
    failed_lines: Mapped[int] = mapped_column(Integer, default=0)  # error lines written (done shards)
    shards_total: Mapped[int] = mapped_column(Integer, default=0)
    shards_done: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    # A job submitted with a spec owns its service: the spec (JSON) it is created from (again on
    # resume), deleted when the job ends. None: the job uses an existing service.
    spec: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class BatchShardRow(Base):
    __tablename__ = "batch_shards"
    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    first_line: Mapped[int] = mapped_column(Integer)
    end_line: Mapped[int] = mapped_column(Integer)  # exclusive
    start_byte: Mapped[int] = mapped_column(Integer)
    end_byte: Mapped[int] = mapped_column(Integer)
    done: Mapped[int] = mapped_column(Integer, default=0)  # 1 once its part files are complete
    ok: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)


def create_tables(conn: Connection) -> None:
    """The store migration that adds the batch tables."""
    Base.metadata.create_all(conn, tables=[BatchJobRow.__table__, BatchShardRow.__table__])  # type: ignore[list-item]
