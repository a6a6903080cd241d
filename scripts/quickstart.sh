#!/usr/bin/env bash
# README command 1: set up, then run the server with the quickstart LLM deployed and answering.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
DATA=${OPENEAS_DATA_DIR:-$PWD/.data}
python scripts/model.py "$DATA/oss" >/dev/null
echo "[quickstart] starting the server; in another shell: . .venv/bin/activate; export OPENEAS_DATA_DIR=$DATA;"
echo "[quickstart]   openeas ls; openeas call-info quickstart; python examples/quickstart/call.py"
exec openeas server --data-dir "$DATA" --deploy examples/quickstart/service.json "$@"
