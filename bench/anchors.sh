#!/usr/bin/env bash
# Builds every benchmark anchor (the systems OpenEAS is compared with, in the same run) in one
# command: `bench/anchors.sh`. Idempotent: a second run takes seconds.
#   .bench/celery  Celery with its Redis transport   (bench/async_queue.py)
#   .bench/locust  locust                            (bench/stress.py)
#   .bench/ray     Ray Serve                         (bench/autoscaler.py via bench/autoscaler_ray.py)
#   Debian: nginx-light, wrk, redis-server           (gateway, activator, groups, stress, async_queue)
# None of them is a dependency of OpenEAS: each virtualenv is its own, under the ignored .bench/.
# The versions are the ones bench/RESULTS.md was measured with; change them here and re-measure.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
log() { printf '\033[1m[anchors]\033[0m %s\n' "$*"; }

venv() {  # venv NAME CHECK-MODULE REQUIREMENT...
  local name=$1 module=$2; shift 2
  if [ -x ".bench/$name/bin/python" ] && ".bench/$name/bin/python" -c "import $module" 2>/dev/null; then
    log "$name: ready (.bench/$name)"; return
  fi
  log "$name: installing $* in .bench/$name"
  "$PY" -m venv ".bench/$name"
  ".bench/$name/bin/python" -m pip install -q --upgrade pip
  ".bench/$name/bin/python" -m pip install -q "$@"
}

missing=()
command -v wrk >/dev/null || missing+=(wrk)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || missing+=(nginx-light)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v taskset >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "[anchors] missing ${missing[*]}: run as root, or apt-get install ${missing[*]}" >&2; exit 1
  fi
fi

mkdir -p .bench
venv celery celery "celery[redis]==5.7.0"
venv locust locust "locust==2.47.0"
venv ray "ray.serve" "ray[serve]==2.60.0" requests
log "every anchor is ready; each bench now runs its anchors in the same run (see bench/RESULTS.md)"
