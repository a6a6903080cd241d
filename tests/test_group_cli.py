"""The group commands of the CLI through typer's CliRunner: arguments and group specs checked
before any server is asked (exit 2), and the parsers behind them."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from openeas.cli.group import parse_duration, parse_pairs, rollout_text
from openeas.cli.main import app

# A server that is never reached: every case below must fail before it would be asked.
NOWHERE = {"OPENEAS_DATA_DIR": None, "OPENEAS_SERVER": "http://127.0.0.1:9", "OPENEAS_ADMIN_TOKEN": "x"}


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=NOWHERE)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("1h", 3600.0), ("1.5h", 5400.0), ("2d", 172800.0), ("0", 0.0)],
    ids=["bare", "s", "m", "h", "fraction", "d", "zero"],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1x", "h", "-5m", "inf", "nan"], ids=["empty", "unit", "no-number", "negative", "inf", "nan"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_parse_pairs() -> None:
    assert parse_pairs(["a=900", "b=100"], "weights") == {"a": 900, "b": 100}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["group", "set-weight", "g", "a=ninety"], "weights: expected SERVICE=INTEGER, got 'a=ninety'"),
        (["group", "set-weight", "g", "a"], "weights: expected SERVICE=INTEGER, got 'a'"),
        (["group", "set-weight", "g", "--mirror", "=5"], "--mirror: expected SERVICE=INTEGER, got '=5'"),
        (["rollout", "g", "--to", "b", "--steps", "5,x"], "--steps: expected percentages such as 5,25,50,100, got '5,x'"),
        (["rollout", "g", "--to", "b", "--hold", "1 hour"], "--hold: expected a duration such as 90s, 10m, 1h, got '1 hour'"),
        (["rollout", "g", "--pause", "--abort"], "give one of --to, --pause, --resume, --abort"),
    ],
    ids=["weight-not-int", "no-equals", "no-name", "steps", "hold", "two-commands"],
)
def test_bad_arguments_exit_2_before_any_server_is_asked(args: list[str], message: str) -> None:
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert message in r.output


def test_a_bad_group_spec_exits_2_naming_the_field(tmp_path: Path) -> None:
    f = tmp_path / "group.yaml"
    f.write_text("kind: ServiceGroup\nname: g\nroutes:\n  - service: a\n    weight: 2000\n  - service: b\n    mirror_weight: 150\n")
    r = run("deploy", "-f", str(f))
    assert r.exit_code == 2
    assert "routes[0].weight: must be 0..1000, got 2000" in r.output
    assert "routes[1].mirror_weight: must be a percentage 0..100, got 150" in r.output


def test_a_group_spec_dry_run_changes_nothing(tmp_path: Path) -> None:
    f = tmp_path / "group.json"
    f.write_text('{"kind": "ServiceGroup", "name": "g", "routes": [{"service": "a", "weight": 1000}]}')
    r = run("deploy", "-f", str(f), "--dry-run")
    assert r.exit_code == 0, r.output
    assert "group g: valid" in r.output


ROLLOUT = {"group": "g", "plan": {"candidate": "new", "baseline": "old"}, "step": "2/3", "percent": 50}


@pytest.mark.parametrize(
    ("state", "text"),
    [
        pytest.param({"status": "Running"}, "rollout of g to new (from old): Running, step 2/3 at 50%", id="running"),
        pytest.param(
            {"status": "RolledBack", "reason": "success 50.00% < 99%", "routes_restored": False},
            "rollout of g to new (from old): RolledBack, step 2/3 at 50% (restoring the routes of before it)\n"
            "  success 50.00% < 99%",
            id="rolled-back-restoring",
        ),
        pytest.param(
            {"status": "RolledBack", "reason": "success 50.00% < 99%", "routes_restored": True},
            "rollout of g to new (from old): RolledBack, step 2/3 at 50%\n  success 50.00% < 99%",
            id="rolled-back-restored",
        ),
    ],
)
def test_rollout_text(state: dict[str, object], text: str) -> None:
    assert rollout_text({**ROLLOUT, "state": state}) == text
