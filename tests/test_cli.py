"""The `openeas` CLI through typer's CliRunner: local spec validation, discovery errors, and every
command against the fake control plane from test_sdk.py (a real HTTP server in a thread)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from openeas.cli.main import app

try:
    from test_sdk import ADMIN_TOKEN, FakeControlPlane, spec
except ImportError:  # tests/ collected as a package
    from tests.test_sdk import ADMIN_TOKEN, FakeControlPlane, spec

CLEAN_ENV: dict[str, str | None] = {
    "OPENEAS_DATA_DIR": None,
    "OPENEAS_SERVER": None,
    "OPENEAS_ADMIN_TOKEN": None,
    "OPENEAS_GATEWAY_URL": None,
}

VALID_YAML = """\
metadata:
  name: demo
  instance: 1
containers:
  - command: python -m http.server 8000
    port: 8000
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ./.data is the default data directory: never pick up one from the repository.
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[FakeControlPlane]:
    # Replicas are Ready on the first describe, so --wait needs no sleeping poll.
    with FakeControlPlane(steps_to_ready=1) as p:
        p.write_server_json(tmp_path / "data")
        yield p


def run(*args: str, env: dict[str, str | None] | None = None, data_dir: Path | None = None) -> Result:
    argv = (["--data-dir", str(data_dir)] if data_dir else []) + list(args)
    return CliRunner().invoke(app, argv, env={**CLEAN_ENV, **(env or {})})


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# -- without a server -----------------------------------------------------------------------------


def test_no_server_found(tmp_path: Path) -> None:
    r = run("ls")
    assert r.exit_code == 1
    assert r.stderr.strip() == (
        "error: no OpenEAS server found: start one with 'openeas server --data-dir DIR'"
        " or set OPENEAS_DATA_DIR"
    )


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        pytest.param(
            json.dumps({"metadata": {"name": "Bad-Name"}, "containers": [{"command": "x", "port": 70000}]}),
            [
                "  metadata.name: must start with a lowercase letter and contain only lowercase letters, "
                "digits and '_' (at most 63 characters)",
                "  containers[0].port: must be 1..65535",
            ],
            id="json-two-errors",
        ),
        pytest.param(
            "metadata:\n  name: demo\ncontainers: []\n",
            ["  containers: list should have at least 1 item after validation, not 0"],
            id="yaml-empty-containers",
        ),
        pytest.param("- just\n- a list\n", ["  spec: must be a JSON/YAML object"], id="not-an-object"),
    ],
)
def test_deploy_validates_locally_before_any_server(tmp_path: Path, text: str, lines: list[str]) -> None:
    # No server anywhere: an invalid spec must be reported before discovery.
    f = write(tmp_path / "svc.yaml", text)
    r = run("deploy", "-f", f)
    assert r.exit_code == 2, r.output
    assert r.stderr.splitlines() == [f"error: invalid spec {f}", *lines]
    assert r.stdout == ""


def test_deploy_missing_file(tmp_path: Path) -> None:
    r = run("deploy", "-f", str(tmp_path / "nope.json"))
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: cannot read {tmp_path / 'nope.json'}")


def test_python_dash_m_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "openeas.cli", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.startswith("openeas ")


# -- against the fake control plane ---------------------------------------------------------------


@pytest.mark.parametrize(
    "how",
    [
        pytest.param("global-option", id="--data-dir-before-command"),
        pytest.param("command-option", id="--data-dir-after-command"),
        pytest.param("OPENEAS_DATA_DIR", id="OPENEAS_DATA_DIR"),
        pytest.param("OPENEAS_SERVER", id="OPENEAS_SERVER"),
        pytest.param("cwd", id="default-./.data"),
    ],
)
def test_server_discovery_paths(plane: FakeControlPlane, tmp_path: Path, how: str) -> None:
    data = tmp_path / "data"
    if how == "global-option":
        r = run("ls", data_dir=data)
    elif how == "command-option":
        r = run("ls", "--data-dir", str(data))
    elif how == "OPENEAS_DATA_DIR":
        r = run("ls", env={"OPENEAS_DATA_DIR": str(data)})
    elif how == "OPENEAS_SERVER":
        r = run("ls", env={"OPENEAS_SERVER": plane.url, "OPENEAS_ADMIN_TOKEN": ADMIN_TOKEN})
    else:
        plane.write_server_json(tmp_path / ".data")
        r = run("ls")
    assert (r.exit_code, r.stdout) == (0, "no services\n"), r.output
    assert plane.requests[-1].headers["Authorization"] == f"Bearer {ADMIN_TOKEN}"


def test_deploy_creates_then_updates(plane: FakeControlPlane, tmp_path: Path) -> None:
    data = tmp_path / "data"
    f = write(tmp_path / "svc.yaml", VALID_YAML)
    r1 = run("deploy", "-f", f, "--no-wait", data_dir=data)
    assert (r1.exit_code, r1.stdout) == (0, "created service demo: version 1\n"), r1.output
    # The spec goes to the server as written (parsed from YAML), not as a normalized model dump.
    assert plane.api_requests()[0].body == spec()
    r2 = run("deploy", "-f", f, "--no-wait", data_dir=data)
    assert (r2.exit_code, r2.stdout) == (0, "updated service demo: version 2\n"), r2.output
    assert [(q.method, q.path) for q in plane.api_requests()[1:]] == [
        ("POST", "/api/v1/services"),
        ("PUT", "/api/v1/services/demo"),
    ]


def test_deploy_waits_and_reports_cold_start(plane: FakeControlPlane, tmp_path: Path) -> None:
    f = write(tmp_path / "svc.json", json.dumps(spec()))
    r = run("deploy", "-f", f, data_dir=tmp_path / "data")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [
        "created service demo: version 1",
        "demo is ready: 1/1 replicas · cold start 3.0s (fetch 0.5 · start 2.2 · warm 0.2)",
        f"endpoint: {plane.url}/api/predict/demo",
    ]


def test_deploy_json_prints_only_the_final_detail(plane: FakeControlPlane, tmp_path: Path) -> None:
    f = write(tmp_path / "svc.json", json.dumps(spec()))
    r = run("deploy", "-f", f, "--json", data_dir=tmp_path / "data")
    assert r.exit_code == 0, r.output
    detail = json.loads(r.stdout)
    assert (detail["name"], detail["ready_replicas"], detail["replicas"][0]["phase"]) == ("demo", 1, "Ready")


def test_deploy_from_stdin(plane: FakeControlPlane, tmp_path: Path) -> None:
    r = CliRunner().invoke(
        app,
        ["--data-dir", str(tmp_path / "data"), "deploy", "-f", "-", "--no-wait"],
        input=VALID_YAML,
        env=CLEAN_ENV,
    )
    assert (r.exit_code, r.stdout) == (0, "created service demo: version 1\n"), r.output


def test_server_side_validation_errors_exit_2(plane: FakeControlPlane, tmp_path: Path) -> None:
    f = write(tmp_path / "svc.json", json.dumps(spec("reject_me")))
    r = run("deploy", "-f", f, data_dir=tmp_path / "data")
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [
        "error: invalid spec",
        "  containers[0].port: must be 1..65535",
        "  metadata.instance: too large",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["describe", "ghost"], "error: service 'ghost' not found", id="describe-404"),
        pytest.param(["scale", "ghost", "2"], "error: service 'ghost' not found", id="scale-404"),
        pytest.param(["rollback", "demo", "9"], "error: version 9 not found", id="rollback-unknown-version"),
    ],
)
def test_api_errors_exit_1(plane: FakeControlPlane, tmp_path: Path, args: list[str], message: str) -> None:
    plane.steps_to_ready = 3
    run(
        "deploy",
        "-f",
        write(tmp_path / "s.json", json.dumps(spec())),
        "--no-wait",
        data_dir=tmp_path / "data",
    )
    r = run(*args, data_dir=tmp_path / "data")
    assert (r.exit_code, r.stderr.strip()) == (1, message)


def test_bad_admin_token(plane: FakeControlPlane) -> None:
    r = run("ls", env={"OPENEAS_SERVER": plane.url, "OPENEAS_ADMIN_TOKEN": "wrong"})
    assert (r.exit_code, r.stderr.strip()) == (1, "error: invalid admin token")


def test_unreachable_server(tmp_path: Path) -> None:
    data = tmp_path / "dead"
    data.mkdir()
    (data / "server.json").write_text(
        json.dumps({"api_url": "http://127.0.0.1:9", "admin_token": "x", "gateway_url": "http://127.0.0.1:9"})
    )
    r = run("ls", data_dir=data)
    assert r.exit_code == 1
    assert r.stderr.startswith(
        f"error: cannot reach OpenEAS server at http://127.0.0.1:9 (from {data}/server.json)"
    )


def test_call_info_json_is_exact(plane: FakeControlPlane, tmp_path: Path) -> None:
    data = tmp_path / "data"
    run("deploy", "-f", write(tmp_path / "s.json", json.dumps(spec())), "--no-wait", data_dir=data)
    r = run("call-info", "demo", "--json", data_dir=data)
    assert r.exit_code == 0
    assert (
        r.stdout == json.dumps({"endpoint": f"{plane.url}/api/predict/demo", "token": "svc-token-1"}) + "\n"
    )


def test_call_info_prints_openai_snippet(plane: FakeControlPlane, tmp_path: Path) -> None:
    data = tmp_path / "data"
    run("deploy", "-f", write(tmp_path / "s.json", json.dumps(spec())), "--no-wait", data_dir=data)
    r = run("call-info", "demo", data_dir=data)
    assert r.exit_code == 0
    endpoint = f"{plane.url}/api/predict/demo"
    assert f"endpoint: {endpoint}\n" in r.stdout
    assert "token:    svc-token-1\n" in r.stdout
    assert f'client = OpenAI(base_url="{endpoint}/v1", api_key="svc-token-1")' in r.stdout


def test_ls_and_describe(plane: FakeControlPlane, tmp_path: Path) -> None:
    data = tmp_path / "data"
    run("deploy", "-f", write(tmp_path / "s.json", json.dumps(spec(instance=2))), data_dir=data)
    ls = run("ls", data_dir=data)
    assert ls.exit_code == 0
    header, row = ls.stdout.splitlines()[:2]
    assert header.split()[:4] == ["NAME", "STATUS", "VERSION", "READY"]
    assert row.split()[:4] == ["demo", "Running", "1", "2/2"]
    assert json.loads(run("ls", "--json", data_dir=data).stdout)["services"][0]["name"] == "demo"

    d = run("describe", "demo", data_dir=data)
    assert d.exit_code == 0, d.output
    assert "2 ready / 2 desired / 2 total" in d.stdout
    rows = [line.split() for line in d.stdout.splitlines() if line.startswith("demo-v1-")]
    # id, version, phase, port, pid, restarts, fetch, start, warm, total
    assert rows == [
        ["demo-v1-0", "1", "Ready", "30000", "4000", "0", "0.5", "2.2", "0.2", "3.0"],
        ["demo-v1-1", "1", "Ready", "30001", "4001", "0", "0.5", "2.2", "0.2", "3.0"],
    ]
    assert json.loads(run("describe", "demo", "--json", data_dir=data).stdout)["spec"] == spec(instance=2)


def test_scale_stop_start_rollback_versions(plane: FakeControlPlane, tmp_path: Path) -> None:
    data = tmp_path / "data"
    f = write(tmp_path / "s.json", json.dumps(spec()))
    run("deploy", "-f", f, "--no-wait", data_dir=data)
    run("deploy", "-f", f, "--no-wait", data_dir=data)
    assert (
        run("scale", "demo", "3", "--wait", data_dir=data).stdout.splitlines()[0]
        == "scaling demo to 3 replicas"
    )
    assert run("stop", "demo", data_dir=data).stdout == "stopping demo\n"
    assert run("start", "demo", data_dir=data).stdout == "starting demo\n"
    rb = run("rollback", "demo", "1", data_dir=data)
    assert rb.stdout == "rolled back demo to the spec of version 1: now version 3\n"
    v = run("versions", "demo", data_dir=data)
    assert [line.split()[0] for line in v.stdout.splitlines()] == ["VERSION", "1", "2", "3"]
    assert v.stdout.splitlines()[-1].rstrip().endswith("*")
    bodies = [(q.path.rsplit("/", 1)[-1], q.body) for q in plane.api_requests() if q.method == "POST"][2:]
    assert bodies == [
        ("scale", {"replicas": 3}),
        ("stop", None),
        ("start", None),
        ("rollback", {"version": 1}),
    ]
    assert run("scale", "demo", "-1", data_dir=data).exit_code == 2  # rejected by the CLI itself


def test_delete_wait(plane: FakeControlPlane, tmp_path: Path) -> None:
    data = tmp_path / "data"
    run("deploy", "-f", write(tmp_path / "s.json", json.dumps(spec())), "--no-wait", data_dir=data)
    r = run("delete", "demo", "--wait", data_dir=data)
    assert (r.exit_code, r.stdout) == (0, "deleted demo\n"), r.output
    assert "demo" not in plane.services
    assert run("delete", "ghost", data_dir=data).exit_code == 1


def test_logs_and_events(plane: FakeControlPlane, tmp_path: Path) -> None:
    data = tmp_path / "data"
    run("deploy", "-f", write(tmp_path / "s.json", json.dumps(spec(instance=2))), "--no-wait", data_dir=data)
    r = run("logs", "demo", "--tail", "10", data_dir=data)
    assert r.stdout == (
        "==> demo-v1-0 <==\nhello from demo-v1-0\nline 2\n\n==> demo-v1-1 <==\nhello from demo-v1-1\nline 2\n"
    )
    one = run("logs", "demo", "--replica", "demo-v1-1", data_dir=data)
    assert one.stdout == "hello from demo-v1-1\nline 2\n"
    assert plane.requests[-1].query == {"replica": ["demo-v1-1"], "tail": ["200"]}

    ev = run("events", "demo", "--limit", "5", data_dir=data)
    assert ev.exit_code == 0
    assert ev.stdout.splitlines()[0].split() == ["TIME", "TYPE", "REASON", "REPLICA", "MESSAGE"]
    assert "ProbeFailed" in ev.stdout and "Scheduled" in ev.stdout
    assert plane.requests[-1].query == {"limit": ["5"]}
    assert len(json.loads(run("events", "demo", "--json", data_dir=data).stdout)["events"]) == 2
