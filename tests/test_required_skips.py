"""In scripts/test.sh's run a test that skips for want of a required component fails (issue 20 §2:
"a skip of a required component must be a failure"): tests/conftest.py's hook, run on a real
pytest session of a one-test file (the bench smoke test's own skip messages), serial and on
pytest-xdist's workers as scripts/test.sh runs it (the hook runs in the workers, the closing
section in the controller).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REQUIRED

ROOT = Path(__file__).resolve().parents[1]

CASES = [
    pytest.param(
        "OPENEAS_REQUIRE_WRK", "wrk not installed (scripts/setup.sh installs them)", "failed", id="wrk"
    ),
    pytest.param(
        "OPENEAS_REQUIRE_NGINX", "nginx not installed (scripts/setup.sh installs them)", "failed", id="nginx"
    ),
    pytest.param(
        "OPENEAS_REQUIRE_NGINX",
        "wrk nginx not installed (scripts/setup.sh installs them)",
        "failed",
        id="both",
    ),
    pytest.param("OPENEAS_REQUIRE_REDIS", "redis-server not installed", "failed", id="redis"),
    pytest.param("OPENEAS_REQUIRE_CONTAINERS", "podman (rootful) needs root", "failed", id="podman"),
    # tests/test_e2e_vllm.py's own message when .venv-vllm is missing
    pytest.param(
        "OPENEAS_REQUIRE_VLLM",
        "vLLM (CPU) is not installed: no .venv-vllm/bin/python (scripts/setup.sh installs it)",
        "failed",
        id="vllm",
    ),
    pytest.param(
        None, "wrk not installed (scripts/setup.sh installs them)", "skipped", id="not-required-skips"
    ),
    pytest.param("OPENEAS_REQUIRE_WRK", "no GPU here", "skipped", id="other-reasons-still-skip"),
]


def run_one_skip(tmp_path: Path, var: str | None, reason: str, *pytest_args: str) -> str:
    """The output of a pytest session of one test that skips with ``reason``, ``var`` set to 1."""
    test = tmp_path / "test_one.py"
    test.write_text(f"import pytest\n\ndef test_it():\n    pytest.skip({reason!r})\n")
    env = {k: v for k, v in os.environ.items() if k not in REQUIRED}
    if var is not None:
        env[var] = "1"
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "-p", "tests.conftest", *pytest_args, str(test)],
        cwd=ROOT,
        env={**env, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return out.stdout


@pytest.mark.parametrize(("var", "reason", "outcome"), CASES)
def test_a_skip_of_a_required_component_fails(
    tmp_path: Path, var: str | None, reason: str, outcome: str
) -> None:
    stdout = run_one_skip(tmp_path, var, reason)
    assert f"1 {outcome}" in stdout, stdout[-2000:]
    assert f"skipped: {1 if outcome == 'skipped' else 0}" in stdout  # the closing section


@pytest.mark.parametrize(
    ("var", "outcome"),
    [pytest.param("OPENEAS_REQUIRE_REDIS", "failed", id="required"), pytest.param(None, "skipped", id="not")],
)
def test_on_xdist_workers_too(tmp_path: Path, var: str | None, outcome: str) -> None:
    reason = "redis-server not installed"
    stdout = run_one_skip(tmp_path, var, reason, "-n", "2", "--dist", "loadscope")
    assert "bringing up nodes" in stdout and f"1 {outcome}" in stdout, stdout[-2000:]
    assert f"skipped: {1 if outcome == 'skipped' else 0}" in stdout, stdout[-2000:]
    if outcome == "skipped":
        assert f"    1  Skipped: {reason}" in stdout, stdout[-2000:]


def test_scripts_test_sh_requires_every_component_setup_installs() -> None:
    text = (ROOT / "scripts" / "test.sh").read_text()
    for var in REQUIRED:
        assert f"{var}=1" in text, var
