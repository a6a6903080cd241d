#!/usr/bin/env bash
# README command 2: set up, then run the checks and the whole test suite (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
echo "[test] ruff"; ruff check src tests bench scripts
echo "[test] mypy"; mypy
# Where setup installed podman (root on Debian), the container runtime's tests must run, not skip.
if [ "$(id -u)" = 0 ] && command -v podman >/dev/null; then export OPENEAS_REQUIRE_CONTAINERS=1; fi
echo "[test] pytest"; python -m pytest -q -ra "$@"
