#!/usr/bin/env bash
# Copy axe-core's axe.min.js (the accessibility checker tests/test_console.py injects into every
# console page) from the npm package into tests/assets/. Test-only: nothing of it ships in the
# Python package, and no page loads it from anywhere at run time.
set -euo pipefail
AXE_VERSION=4.14.1
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "axe-core@${AXE_VERSION}" >/dev/null)
tar -xzf "$work/axe-core-${AXE_VERSION}.tgz" -C "$work" package/axe.min.js package/LICENSE
mkdir -p "$root/tests/assets"
cp "$work/package/axe.min.js" "$root/tests/assets/axe.min.js"
cp "$work/package/LICENSE" "$root/tests/assets/axe-core.LICENSE"
echo "axe-core ${AXE_VERSION} -> tests/assets/axe.min.js"
