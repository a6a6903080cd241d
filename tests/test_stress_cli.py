"""`openeas stress` without a server: the plan is checked first (exit 2, nothing sent), and
`openeas stress TARGET` / `openeas stress ls` / `openeas stress show` resolve as they read."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from openeas.cli.main import app

CLEAN_ENV: dict[str, str | None] = {
    "OPENEAS_DATA_DIR": None,
    "OPENEAS_SERVER": None,
    "OPENEAS_ADMIN_TOKEN": None,
    "OPENEAS_GATEWAY_URL": None,
}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./.data to pick up


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=CLEAN_ENV)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["stress", "svc", "--min-qps", "10", "--max-qps", "1"], "optional.minQPS: 10 is above optional.maxQPS (1)"),
        (["stress", "run", "svc", "--data", "missing.jsonl"], "data.path: no such file"),
        (["stress", "--json", "svc", "--mode", "fast"], "optional.mode: input should be 'auto', 'scan' or 'manual'"),
        (["stress", "svc", "--task", "missing.json"], "cannot read the task missing.json"),
    ],
    ids=["impossible-ramp", "missing-data", "option-before-target", "missing-task"],
)  # fmt: skip
def test_plan_errors_before_looking_for_a_server(args: list[str], message: str) -> None:
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "nothing was sent" in r.output or message.startswith("cannot read")


@pytest.mark.parametrize(
    "args", [["stress", "svc"], ["stress", "ls"], ["stress", "show", "x"]], ids=["run", "ls", "show"]
)
def test_subcommands_and_targets_need_the_server(args: list[str]) -> None:
    r = run(*args)
    assert r.exit_code == 1 and "no OpenEAS server found" in r.output


def test_task_naming_another_service(tmp_path: Path) -> None:
    task = tmp_path / "task.json"
    task.write_text('{"service": {"serviceName": "other"}, "optional": {"mode": "auto"}}')
    r = run("stress", "svc", "--task", str(task))
    assert r.exit_code == 2 and "service.serviceName: the task names 'other'" in r.output
