#!/usr/bin/env bash
# README command 2: set up, then run the checks and the whole test suite (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
echo "[test] ruff"; ruff check src tests bench scripts
echo "[test] mypy"; mypy
# Setup installs redis-server, PostgreSQL, and podman where we are root: here a test that skips for
# want of one of them fails (tests/conftest.py), and the run ends with every skip and its reason.
export OPENEAS_REQUIRE_REDIS=1
export OPENEAS_REQUIRE_POSTGRES=1
if [ "$(id -u)" = 0 ]; then export OPENEAS_REQUIRE_CONTAINERS=1; fi
echo "[test] pytest"; python -m pytest -q -ra "$@"
