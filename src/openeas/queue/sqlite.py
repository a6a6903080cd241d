"""The embedded queue backend: one SQLite file (WAL) under the data dir, ``DATA/queue.db``.

Every operation runs on one writer thread, in batches: the thread takes all the operations
waiting, runs them in one transaction (a savepoint each, so one failing rolls back alone) and
commits once (group commit), then resolves their futures on the event loop. An enqueue is
answered only after the commit that holds it; with ``synchronous=FULL`` the WAL is fsynced at
that commit, so an acknowledged request survives a kill -9 (and a power cut). Thousands of
enqueues a second share a few commits (bench/queue.py).

Two tables: ``messages`` (the input queue: one row per request until it has a result) and
``results`` (the sink: one row per request id, UNIQUE, which is what makes the stored result
exactly one). The store's database stays apart (``openeas.db``): queue traffic never waits for a
control-plane write lock, and the other way round.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from openeas.queue.model import Attributes, Backlog, DeadLetter, Message, QueueError, Result, State

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
  id INTEGER PRIMARY KEY AUTOINCREMENT,          -- the queue index; AUTOINCREMENT: never reused
  service TEXT NOT NULL,
  request_id TEXT NOT NULL UNIQUE,
  priority INTEGER NOT NULL DEFAULT 0,
  state INTEGER NOT NULL DEFAULT 0,              -- openeas.queue.model.State
  attempts INTEGER NOT NULL DEFAULT 0,
  consumer TEXT,                                 -- who holds the lease
  lease TEXT,                                    -- this delivery's token (consumer/attempt)
  lease_until REAL,                              -- epoch seconds
  method TEXT NOT NULL,
  path TEXT NOT NULL,
  headers TEXT NOT NULL,                         -- JSON [[name, value], ...]
  body BLOB,
  tags TEXT,                                     -- JSON {name: value}
  last_error TEXT,
  enqueued_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_pick ON messages(service, state, priority DESC, id);
CREATE INDEX IF NOT EXISTS messages_lease ON messages(state, lease_until);
CREATE TABLE IF NOT EXISTS results (
  sink_index INTEGER PRIMARY KEY AUTOINCREMENT,  -- the order results were stored in (the sink)
  request_id TEXT NOT NULL UNIQUE,               -- one result per request, whatever was redelivered
  service TEXT NOT NULL,
  idx INTEGER NOT NULL,
  status INTEGER NOT NULL,
  headers TEXT NOT NULL,
  body BLOB,
  tags TEXT,
  attempts INTEGER NOT NULL,
  enqueued_at REAL NOT NULL,
  finished_at REAL NOT NULL,
  expires_at REAL NOT NULL,
  read INTEGER NOT NULL DEFAULT 0                -- 1: read with _auto_delete_ (body deleted)
);
CREATE INDEX IF NOT EXISTS results_service ON results(service, sink_index);
CREATE INDEX IF NOT EXISTS results_expiry ON results(expires_at);
"""

_MSG_COLS = (
    "id, service, request_id, method, path, headers, body, tags, priority, attempts, enqueued_at, lease"
)
_RES_COLS = (
    "sink_index, request_id, service, idx, status, headers, body, tags, attempts, enqueued_at, "
    "finished_at, read"
)
_EXPIRED = "lease expired: the dispatcher holding the request stopped or its replica call outlived the lease"


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, fsync at commit."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10, isolation_level=None)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Private from the start: SQLite gives the -wal and -shm files the main file's mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # the WAL is fsynced at each (group) commit
        conn.executescript(SCHEMA)
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def _message(row: tuple[Any, ...]) -> Message:
    idx, service, rid, method, path, headers, body, tags, priority, attempts, enqueued_at, lease = row
    return Message(
        service=service,
        request_id=rid,
        method=method,
        path=path,
        headers=[(str(k), str(v)) for k, v in json.loads(headers)],
        body=body or b"",
        priority=priority,
        enqueued_at=enqueued_at,
        index=idx,
        attempts=attempts,
        tags=json.loads(tags) if tags else {},
        lease=lease or "",
    )


def _result(row: tuple[Any, ...]) -> Result:
    sink, rid, service, idx, status, headers, body, tags, attempts, enq, fin, _read = row
    return Result(
        service=service,
        request_id=rid,
        index=idx,
        status=status,
        headers=[(str(k), str(v)) for k, v in json.loads(headers)],
        body=body or b"",
        attempts=attempts,
        enqueued_at=enq,
        finished_at=fin,
        sink_index=sink,
        tags=json.loads(tags) if tags else {},
    )


class _Op:
    __slots__ = ("error", "fn", "future", "value")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], future: asyncio.Future[Any]) -> None:
        self.fn = fn
        self.future = future
        self.value: Any = None
        self.error: BaseException | None = None


class SqliteQueue:
    """`QueueBackend` over one SQLite file; every call from one event loop."""

    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn = connect(self.path)
        self._ops: list[_Op] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="openeas-queue-sqlite", daemon=True)
        self._thread.start()
        self.commits = 0  # group commits so far (bench/queue.py reports ops per commit)

    # --- the writer thread ---------------------------------------------------------------------
    def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        if self._closed:
            raise QueueError("the queue is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        with self._cond:
            self._ops.append(_Op(fn, future))
            if len(self._ops) == 1:
                self._cond.notify()
        return future

    def _run(self) -> None:
        conn = self._conn
        while True:
            with self._cond:
                while not self._ops and not self._closed:
                    self._cond.wait()
                if not self._ops and self._closed:
                    return
                batch, self._ops = self._ops, []
            try:
                conn.execute("BEGIN IMMEDIATE")
                for op in batch:
                    conn.execute("SAVEPOINT op")
                    try:
                        op.value = op.fn(conn)
                        conn.execute("RELEASE op")
                    except Exception as e:  # this op alone is undone; the others commit
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                        op.error = e
                conn.execute("COMMIT")
                self.commits += 1
            except sqlite3.Error as e:  # the commit itself failed: nothing of the batch is stored
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                for op in batch:
                    op.error = QueueError(f"queue database {self.path}: {e}")
            for op in batch:
                loop = op.future.get_loop()
                try:
                    loop.call_soon_threadsafe(_settle, op)
                except RuntimeError:  # the loop is closed: nobody waits for it any more
                    pass

    # --- QueueBackend ------------------------------------------------------------------------------
    async def enqueue(self, msg: Message) -> int:
        def op(c: sqlite3.Connection) -> int:
            cur = c.execute(
                "INSERT INTO messages(service, request_id, priority, method, path, headers, body, tags, "
                "enqueued_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    msg.service,
                    msg.request_id,
                    msg.priority,
                    msg.method,
                    msg.path,
                    json.dumps(msg.headers),
                    msg.body,
                    json.dumps(msg.tags) if msg.tags else None,
                    msg.enqueued_at,
                ),
            )
            return int(cur.lastrowid or 0)

        msg.index = await self._submit(op)
        return msg.index

    async def claim(self, service: str, consumer: str, n: int, lease_s: float, now: float) -> list[Message]:
        def op(c: sqlite3.Connection) -> list[Message]:
            rows = c.execute(
                "UPDATE messages SET state=1, consumer=?, attempts=attempts+1, "
                "lease=? || '/' || (attempts+1), lease_until=? "
                "WHERE id IN (SELECT id FROM messages WHERE service=? AND state=0 "
                f"ORDER BY priority DESC, id LIMIT ?) RETURNING {_MSG_COLS}",
                (consumer, consumer, now + lease_s, service, n),
            ).fetchall()
            msgs = [_message(r) for r in rows]
            msgs.sort(key=lambda m: (-m.priority, m.index))
            return msgs

        return await self._submit(op)

    async def complete(self, msg: Message, result: Result) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            row = c.execute("SELECT state FROM messages WHERE id=?", (msg.index,)).fetchone()
            if row is None or row[0] not in (State.QUEUED, State.IN_FLIGHT):
                return False  # already answered (a redelivered copy finished first), or dead
            cur = _insert_result(c, result)
            c.execute("DELETE FROM messages WHERE id=?", (msg.index,))
            if cur.rowcount != 1:
                return False
            result.sink_index = int(cur.lastrowid or 0)
            return True

        return await self._submit(op)

    async def fail(self, msg: Message, error: str, max_delivery: int, now: float) -> State:
        def op(c: sqlite3.Connection) -> State:
            row = c.execute("SELECT state, attempts, lease FROM messages WHERE id=?", (msg.index,)).fetchone()
            if row is None:
                return State.DONE  # answered meanwhile by another delivery
            state, attempts, lease = row
            if state != State.IN_FLIGHT or lease != msg.lease:
                return State(state)  # this delivery's lease was taken back: the new one decides
            new = State.DEAD if attempts >= max_delivery else State.QUEUED
            c.execute(
                "UPDATE messages SET state=?, consumer=NULL, lease=NULL, lease_until=NULL, last_error=? "
                "WHERE id=?",
                (int(new), error, msg.index),
            )
            return new

        return await self._submit(op)

    async def release(self, msgs: list[Message]) -> None:
        def op(c: sqlite3.Connection) -> None:
            c.executemany(
                "UPDATE messages SET state=0, attempts=max(attempts-1, 0), consumer=NULL, lease=NULL, "
                "lease_until=NULL WHERE id=? AND state=1 AND lease=?",
                [(m.index, m.lease) for m in msgs],
            )

        if msgs:
            await self._submit(op)

    async def renew(self, consumer: str, msgs: list[Message], lease_s: float, now: float) -> None:
        def op(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE messages SET lease_until=? WHERE state=1 AND consumer=?", (now + lease_s, consumer)
            )

        await self._submit(op)

    async def reclaim(self, service: str, max_delivery: int, now: float) -> int:
        def op(c: sqlite3.Connection) -> int:
            dead = c.execute(
                "UPDATE messages SET state=3, consumer=NULL, lease=NULL, lease_until=NULL, last_error=? "
                "WHERE service=? AND state=1 AND lease_until < ? AND attempts >= ?",
                (_EXPIRED, service, now, max_delivery),
            ).rowcount
            back = c.execute(
                "UPDATE messages SET state=0, consumer=NULL, lease=NULL, lease_until=NULL, last_error=? "
                "WHERE service=? AND state=1 AND lease_until < ?",
                (_EXPIRED, service, now),
            ).rowcount
            return int(dead + back)

        return await self._submit(op)

    async def lookup(self, service: str, request_id: str) -> tuple[State | None, Result | None]:
        return await self._submit(lambda c: _lookup(c, service, "request_id", request_id))

    async def lookup_index(self, service: str, index: int) -> tuple[State | None, Result | None]:
        return await self._submit(lambda c: _lookup(c, service, "idx", index))

    async def mark_read(self, service: str, request_ids: list[str]) -> int:
        def op(c: sqlite3.Connection) -> int:
            n = 0
            for rid in request_ids:
                n += c.execute(
                    "UPDATE results SET read=1, body=NULL WHERE service=? AND request_id=? AND read=0",
                    (service, rid),
                ).rowcount
            return n

        return await self._submit(op)

    async def results_after(self, service: str, sink_index: int, limit: int) -> list[Result]:
        def op(c: sqlite3.Connection) -> list[Result]:
            rows = c.execute(
                f"SELECT {_RES_COLS} FROM results WHERE service=? AND sink_index>? AND read=0 "
                "ORDER BY sink_index LIMIT ?",
                (service, sink_index, limit),
            ).fetchall()
            return [_result(r) for r in rows]

        return await self._submit(op)

    async def put_result(self, result: Result) -> int:
        def op(c: sqlite3.Connection) -> int:
            cur = _insert_result(c, result)
            return int(cur.lastrowid or 0) if cur.rowcount == 1 else 0

        result.sink_index = await self._submit(op)
        return result.sink_index

    async def lookup_sink(self, service: str, sink_index: int) -> tuple[State | None, Result | None]:
        return await self._submit(lambda c: _lookup(c, service, "sink_index", sink_index))

    async def truncate_results(self, service: str, below: int) -> int:
        return await self._submit(
            lambda c: int(
                c.execute(
                    "UPDATE results SET read=1, body=NULL WHERE service=? AND sink_index<? AND read=0",
                    (service, below),
                ).rowcount
            )
        )

    async def sink_stats(self, service: str) -> tuple[int, int]:
        def op(c: sqlite3.Connection) -> tuple[int, int]:
            unread, last = c.execute(
                "SELECT sum(read=0), max(sink_index) FROM results WHERE service=?", (service,)
            ).fetchone()
            return int(unread or 0), int(last or 0)

        return await self._submit(op)

    async def messages_from(self, service: str, index: int, limit: int) -> list[Message]:
        def op(c: sqlite3.Connection) -> list[Message]:
            rows = c.execute(
                f"SELECT {_MSG_COLS} FROM messages WHERE service=? AND id>=? AND state IN (0, 1) "
                "ORDER BY id LIMIT ?",
                (service, index, limit),
            ).fetchall()
            return [_message(r) for r in rows]

        return await self._submit(op)

    async def find_message(self, service: str, request_id: str) -> Message | None:
        def op(c: sqlite3.Connection) -> Message | None:
            row = c.execute(
                f"SELECT {_MSG_COLS} FROM messages WHERE service=? AND request_id=? AND state IN (0, 1)",
                (service, request_id),
            ).fetchone()
            return None if row is None else _message(row)

        return await self._submit(op)

    async def delete_messages(self, service: str, indexes: list[int]) -> int:
        def op(c: sqlite3.Connection) -> int:
            return sum(
                int(c.execute("DELETE FROM messages WHERE service=? AND id=?", (service, i)).rowcount)
                for i in indexes
            )

        return await self._submit(op)

    async def truncate_messages(self, service: str, below: int) -> int:
        sql = "DELETE FROM messages WHERE service=? AND id<?"
        return await self._submit(lambda c: int(c.execute(sql, (service, below)).rowcount))

    async def attributes(self, service: str, max_length: int, now: float) -> Attributes:
        return await self._submit(lambda c: read_attributes(c, service, max_length, now))

    async def backlog(self, service: str) -> Backlog:
        return await self._submit(lambda c: read_backlog(c, service))

    async def dead_letters(self, service: str, limit: int) -> list[DeadLetter]:
        def op(c: sqlite3.Connection) -> list[DeadLetter]:
            rows = c.execute(
                "SELECT request_id, id, attempts, last_error, enqueued_at FROM messages "
                "WHERE service=? AND state=3 ORDER BY id LIMIT ?",
                (service, limit),
            ).fetchall()
            return [DeadLetter(service, rid, idx, att, err or "", enq) for rid, idx, att, err, enq in rows]

        return await self._submit(op)

    async def redrive(self, service: str, request_ids: list[str] | None) -> int:
        def op(c: sqlite3.Connection) -> int:
            sql = "UPDATE messages SET state=0, attempts=0 WHERE service=? AND state=3"
            if request_ids is None:
                return int(c.execute(sql, (service,)).rowcount)
            return sum(int(c.execute(sql + " AND request_id=?", (service, r)).rowcount) for r in request_ids)

        return await self._submit(op)

    async def expire(self, now: float) -> int:
        return await self._submit(
            lambda c: int(c.execute("DELETE FROM results WHERE expires_at<?", (now,)).rowcount)
        )

    async def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        await asyncio.to_thread(self._thread.join, 10)
        self._conn.close()


def _settle(op: _Op) -> None:
    if op.future.done():
        return
    if op.error is not None:
        op.future.set_exception(op.error)
    else:
        op.future.set_result(op.value)


def _lookup(
    c: sqlite3.Connection, service: str, column: str, key: object
) -> tuple[State | None, Result | None]:
    row = c.execute(
        f"SELECT {_RES_COLS} FROM results WHERE service=? AND {column}=?", (service, key)
    ).fetchone()
    if row is not None:
        if row[-1]:
            return State.READ, None
        return State.DONE, _result(row)
    if column == "sink_index":
        return None, None
    mcol = "request_id" if column == "request_id" else "id"
    srow = c.execute(f"SELECT state FROM messages WHERE service=? AND {mcol}=?", (service, key)).fetchone()
    return (State(srow[0]), None) if srow is not None else (None, None)


def read_backlog(c: sqlite3.Connection, service: str) -> Backlog:
    counts = dict(
        c.execute(
            "SELECT state, count(*) FROM messages WHERE service=? AND state IN (0, 1) GROUP BY state",
            (service,),
        ).fetchall()
    )
    return Backlog(queued=int(counts.get(0, 0)), in_flight=int(counts.get(1, 0)))


def read_attributes(c: sqlite3.Connection, service: str, max_length: int, now: float) -> Attributes:
    counts = dict(
        c.execute(
            "SELECT state, count(*) FROM messages WHERE service=? GROUP BY state", (service,)
        ).fetchall()
    )
    oldest = c.execute(
        "SELECT min(enqueued_at) FROM messages WHERE service=? AND state=0", (service,)
    ).fetchone()[0]
    last = c.execute("SELECT max(id) FROM messages WHERE service=?", (service,)).fetchone()[0]
    last_done = c.execute(
        "SELECT max(idx), sum(read=0) FROM results WHERE service=?", (service,)
    ).fetchone()
    return Attributes(
        queued=int(counts.get(0, 0)),
        in_flight=int(counts.get(1, 0)),
        dead=int(counts.get(3, 0)),
        results=int(last_done[1] or 0),
        oldest_age_s=max(0.0, now - oldest) if oldest is not None else None,
        last_index=max(int(last or 0), int(last_done[0] or 0)),
        max_length=max_length,
    )


def backlogs(path: Path, services: list[str]) -> dict[str, Backlog]:
    """The backlog of each service, read synchronously (the control plane's side); empty when
    the queue file does not exist yet."""
    if not Path(path).exists():
        return {s: Backlog(0, 0) for s in services}
    conn = connect(Path(path), readonly=True)
    try:
        return {s: read_backlog(conn, s) for s in services}
    finally:
        conn.close()


def url_path(url: str, data_dir: Path) -> Path:
    """The file of ``sqlite:////abs/path.db`` or ``sqlite:///abs/path.db`` (absolute), or of
    ``sqlite://relative.db`` (relative to the data dir)."""
    rest = url.partition("://")[2]
    return Path("/" + rest.lstrip("/")) if rest.startswith("/") else Path(data_dir) / rest


def from_url(url: str, data_dir: Path) -> SqliteQueue:
    return SqliteQueue(url_path(url, data_dir))


def _insert_result(c: sqlite3.Connection, result: Result) -> sqlite3.Cursor:
    """Store ``result`` once (a second insert of the same request id is ignored)."""
    return c.execute(
        "INSERT OR IGNORE INTO results(request_id, service, idx, status, headers, body, tags, "
        "attempts, enqueued_at, finished_at, expires_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (
            result.request_id,
            result.service,
            result.index,
            result.status,
            json.dumps(result.headers),
            result.body,
            json.dumps(result.tags) if result.tags else None,
            result.attempts,
            result.enqueued_at,
            result.finished_at,
            result.finished_at + result.ttl_s,
        ),
    )
