#!/usr/bin/env bash
# README command 2: set up, then run the checks and the whole test suite (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
echo "[test] ruff"; ruff check src tests bench scripts
echo "[test] mypy"; mypy
# Setup installs redis-server, PostgreSQL, wrk, nginx, Ray (the [ray] extra) and Chromium, and
# podman where we are root: here a test that skips for want of one of them fails
# (tests/conftest.py), and the run ends with every skip and its reason.
export OPENEAS_REQUIRE_REDIS=1 OPENEAS_REQUIRE_POSTGRES=1 OPENEAS_REQUIRE_WRK=1 OPENEAS_REQUIRE_NGINX=1
export OPENEAS_REQUIRE_RAY=1 OPENEAS_REQUIRE_BROWSER=1
# Real vLLM (tests/test_e2e_vllm.py): setup installs it into .venv-vllm from the machine image's
# CPU torch wheel; where that wheel is missing setup says so and the test fails here, not skips.
export OPENEAS_REQUIRE_VLLM=1
if [ "$(id -u)" = 0 ]; then export OPENEAS_REQUIRE_CONTAINERS=1; fi
# The container suite runs once per engine: podman, and docker where setup installed dockerd. With
# no systemd to start docker's daemon, a private one is started here (iptables is not available in
# every sandbox: ports are then published by docker's userland proxy) and left running.
if [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null; then
  if ! docker info >/dev/null 2>&1; then
    sock=/run/openeas-docker/docker.sock
    if ! DOCKER_HOST=unix://$sock docker info >/dev/null 2>&1; then
      mkdir -p /run/openeas-docker
      nohup dockerd --iptables=false --host "unix://$sock" --data-root /var/lib/openeas-docker \
        --exec-root /run/openeas-docker/exec --pidfile /run/openeas-docker/docker.pid \
        >/tmp/openeas-dockerd.log 2>&1 &
      for _ in $(seq 60); do DOCKER_HOST=unix://$sock docker info >/dev/null 2>&1 && break; sleep 1; done
    fi
    export DOCKER_HOST=unix://$sock
  fi
  export OPENEAS_REQUIRE_CONTAINERS_ENGINES=podman,docker
fi
# pytest-xdist: most tests wait on processes starting (servers, replicas, containers, Chromium), so
# three workers on two cores beat two; a worker takes a whole module at a time (tests/conftest.py
# splits a few and hands out the longest first). Then the few modules that must have the CPU to
# themselves (real vLLM, the stress tests' saturation points: SERIAL in tests/conftest.py) run in one
# process. OPENEAS_TEST_WORKERS=0 runs everything in one process. Exit status 5 (every test of a
# phase deselected, e.g. by -k) is not a failure.
workers=${OPENEAS_TEST_WORKERS:-3}
if [ "$workers" = 0 ]; then
  echo "[test] pytest (one process)"; exec python -m pytest -q -ra "$@"
fi
status=0
phase() { "$@" || { rc=$?; if [ "$rc" != 5 ]; then status=$rc; fi; }; }
echo "[test] pytest ($workers workers)"
OPENEAS_TEST_PHASE=parallel phase python -m pytest -q -ra -n "$workers" --dist loadscope "$@"
echo "[test] pytest (serial: tests that need the CPU to themselves)"
OPENEAS_TEST_PHASE=serial phase python -m pytest -q -ra "$@"
exit "$status"
