"""PostgreSQL for the tests: a real server (Debian's postgresql) started once per test session on
127.0.0.1 and a free port, in a temporary folder, and a fresh database for each test that asks.

PostgreSQL refuses to run as root: as root, the cluster belongs to the ``postgres`` system user
(made by Debian's package) and runs as it (``runuser``). Trust authentication on 127.0.0.1 only;
no durability (fsync off): the data is thrown away at the end of the session.

A test module imports what it uses (``from tests.pg_fixtures import pg_server, store_url``).
``store_url`` is parametrized over the store's two backends: ``None`` (SQLite in the data dir,
the default) and a ``postgresql://`` URL of a database of the test's own.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from openeas.runtime import free_port

# Debian installs the server's programs under /usr/lib/postgresql/<major>/bin, off the PATH.
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
STORE_BACKENDS = [pytest.param("sqlite", id="sqlite"), pytest.param("postgresql", id="postgresql")]
START_TIMEOUT_S = 30.0


def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in sorted(Path("/").glob(PG_BIN_GLOB.lstrip("/")), reverse=True):
        if (folder / name).is_file():
            return str(folder / name)
    return None


def _as_owner(argv: list[str]) -> list[str]:
    """As root: run as the postgres system user (the server will not run as root)."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


def _wait_ready(port: int, proc: subprocess.Popen[bytes], logfile: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited ({proc.returncode}): {logfile.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                pass
            import psycopg

            with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=2):
                return
        except (OSError, Exception):
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"postgres did not answer within {START_TIMEOUT_S} s") from None
            time.sleep(0.1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A PostgreSQL server for the session; yields its admin URL without a database name
    (skips when PostgreSQL or the psycopg driver is missing: scripts/setup.sh installs both)."""
    initdb, postgres = pg_bin("initdb"), pg_bin("postgres")
    if initdb is None or postgres is None:
        pytest.skip("postgresql is not installed (scripts/setup.sh installs Debian's postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("postgresql driver psycopg is not installed (scripts/setup.sh installs it)")
    with running_postgres(initdb, postgres) as url:
        yield url


@contextmanager
def running_postgres(initdb: str, postgres: str, *, durable: bool = False) -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 (trust on loopback) from the binaries ``initdb`` and
    ``postgres``; yields its admin URL without a database name; stopped and removed at the end.
    Not ``durable`` (the tests): fsync, synchronous commit and full-page writes off. ``durable``
    (bench/cluster.py's store figures): left on, as a real store runs."""
    # Not under pytest's tmp dirs: those are private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="openeas-pg-"))
    data = root / "data"
    logfile = root / "postgres.log"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    subprocess.run(
        _as_owner([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    port = free_port()
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": str(root),
        "max_connections": "300",
    }
    if not durable:
        settings.update({"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
    argv = [postgres, "-D", str(data), *[a for k, v in settings.items() for a in ("-c", f"{k}={v}")]]
    with open(logfile, "ab") as log:
        if os.geteuid() == 0:
            shutil.chown(logfile, "postgres")
        proc = subprocess.Popen(_as_owner(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_ready(port, proc, logfile)
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        proc.terminate()  # runuser passes SIGTERM on: postgres's "smart" shutdown
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(root, ignore_errors=True)


def new_database(server: str) -> str:
    """A new, empty database on ``server``; its URL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


def drop_database(url: str) -> None:
    import psycopg

    server, _, name = url.rpartition("/")
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A database of this test's own on the session's PostgreSQL server."""
    url = new_database(pg_server)
    yield url
    drop_database(url)


@pytest.fixture(params=STORE_BACKENDS)
def store_url(request: pytest.FixtureRequest) -> str | None:
    """The store's backend for this run of the test: None (SQLite in the data dir) or a
    postgresql:// URL of a fresh database."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_url")
    return url
