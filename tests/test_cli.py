"""The `openeas` CLI through typer's CliRunner: local spec validation and discovery errors without a
server, and every command against the real control plane (a real `openeas server` with real
replicas, shared by this module's tests; each test uses services of its own names)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from openeas.cli.main import app
from openeas.sdk import ApiError
from tests.conftest_gateway import refusing_port
from tests.harness import Server, service_spec

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


def spec(name: str, instance: int = 0, **extra: Any) -> dict[str, Any]:
    """A spec of the built-in test server; 0 replicas unless asked (no process to wait for)."""
    return service_spec(name, replicas=instance, **extra)


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
        pytest.param(
            json.dumps({"metadata": {"name": "demo"}, "containers": [{"command": "x"}], "runtime": "ray"}),
            [
                "  runtime: 'ray': EAS's runtime block is an object ({\"enable_crash_block\": ...}); as a "
                "string it is the older spelling of metadata.replica_runtime: 'auto', 'process' or 'container'"
            ],
            id="unknown-runtime",
        ),
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


def test_unreachable_server(tmp_path: Path) -> None:
    data = tmp_path / "dead"
    data.mkdir()
    with refusing_port() as s:  # nothing answers on it while the test runs
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        (data / "server.json").write_text(
            json.dumps({"api_url": url, "admin_token": "x", "gateway_url": url})
        )
        r = run("ls", data_dir=data)
    assert r.exit_code == 1
    assert r.stderr.startswith(f"error: cannot reach OpenEAS server at {url} (from {data}/server.json)")


# -- against the real control plane ---------------------------------------------------------------


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
def test_server_discovery_paths(shared_server: Server, tmp_path: Path, how: str) -> None:
    data = shared_server.data_dir
    if how == "global-option":
        r = run("ls", "--json", data_dir=data)
    elif how == "command-option":
        r = run("ls", "--json", "--data-dir", str(data))
    elif how == "OPENEAS_DATA_DIR":
        r = run("ls", "--json", env={"OPENEAS_DATA_DIR": str(data)})
    elif how == "OPENEAS_SERVER":
        r = run("ls", "--json", env={"OPENEAS_SERVER": shared_server.api_url,
                                      "OPENEAS_ADMIN_TOKEN": shared_server.info["admin_token"]})  # fmt: skip
    else:
        (tmp_path / ".data").mkdir()
        shutil.copy(data / "server.json", tmp_path / ".data" / "server.json")
        r = run("ls", "--json")
    assert r.exit_code == 0, r.output
    # The answer of this server (found, and the admin token accepted).
    assert json.loads(r.stdout)["services"] == shared_server.client.list()


def test_deploy_creates_then_updates_and_the_spec_is_kept_as_written(
    shared_server: Server, tmp_path: Path
) -> None:
    data = shared_server.data_dir
    text = VALID_YAML.replace("name: demo", "name: cli_deploy").replace("instance: 1", "instance: 0")
    text += "labels:\n  team: nlp\n  owner: null\n"  # unknown fields, a null too
    f = write(tmp_path / "svc.yaml", text)
    r1 = run("deploy", "-f", f, "--no-wait", data_dir=data)
    assert (r1.exit_code, r1.stdout) == (0, "created service cli_deploy: version 1\n"), r1.output
    r2 = run("deploy", "-f", f, "--no-wait", data_dir=data)
    assert (r2.exit_code, r2.stdout) == (0, "updated service cli_deploy: version 2\n"), r2.output
    described = json.loads(run("describe", "cli_deploy", "--json", data_dir=data).stdout)
    assert described["spec"] == yaml.safe_load(text)  # what the file says, no defaults added


def test_deploy_waits_and_reports_cold_start(shared_server: Server, tmp_path: Path) -> None:
    f = write(tmp_path / "svc.json", json.dumps(spec("cli_wait", instance=1)))
    r = run("deploy", "-f", f, data_dir=shared_server.data_dir)
    assert r.exit_code == 0, r.output
    rep = shared_server.client.describe("cli_wait")["replicas"][0]
    cold = rep["cold_start"]
    assert r.stdout.splitlines() == [
        "created service cli_wait: version 1",
        f"cli_wait is ready: 1/1 replicas · cold start {cold['total_s']:.1f}s "
        f"(fetch {cold['fetch_s']:.1f} · start {cold['start_s']:.1f} · warm {cold['warm_s']:.1f})",
        f"endpoint: {shared_server.gateway_url}/api/predict/cli_wait",
    ]


def test_deploy_json_prints_only_the_final_detail(shared_server: Server, tmp_path: Path) -> None:
    f = write(tmp_path / "svc.json", json.dumps(spec("cli_json", instance=1)))
    r = run("deploy", "-f", f, "--json", data_dir=shared_server.data_dir)
    assert r.exit_code == 0, r.output
    (line,) = r.stdout.splitlines()
    detail = json.loads(line)
    assert (detail["name"], detail["ready_replicas"], detail["replicas"][0]["phase"]) == (
        "cli_json",
        1,
        "Ready",
    )


def test_deploy_from_stdin(shared_server: Server) -> None:
    r = CliRunner().invoke(
        app,
        ["--data-dir", str(shared_server.data_dir), "deploy", "-f", "-", "--no-wait"],
        input=VALID_YAML.replace("name: demo", "name: cli_stdin").replace("instance: 1", "instance: 0"),
        env=CLEAN_ENV,
    )
    assert (r.exit_code, r.stdout) == (0, "created service cli_stdin: version 1\n"), r.output
    assert (
        shared_server.client.describe("cli_stdin")["spec"]["containers"][0]["command"]
        == "python -m http.server 8000"
    )


@pytest.fixture
def errors_service(shared_server: Server) -> str:
    if not any(s["name"] == "cli_errors" for s in shared_server.client.list()):
        shared_server.client.deploy(spec("cli_errors"))
    return "cli_errors"


@pytest.mark.parametrize(
    ("args", "code", "stderr"),
    [
        pytest.param(["describe", "ghost"], 1, ["error: service 'ghost' not found"], id="describe-404"),
        pytest.param(["scale", "ghost", "2"], 1, ["error: service 'ghost' not found"], id="scale-404"),
        pytest.param(["delete", "ghost"], 1, ["error: service 'ghost' not found"], id="delete-404"),
        pytest.param(["events", "ghost"], 1, ["error: service 'ghost' not found"], id="events-404"),
        pytest.param(["rollback", "cli_errors", "9"], 1, ["error: service 'cli_errors' has no version 9"],
                     id="rollback-unknown-version"),
        pytest.param(["logs", "cli_errors", "--replica", "nope"], 1,
                     ["error: service 'cli_errors' has no replica 'nope'"], id="logs-unknown-replica"),
        # Rejected by the server's validation: invalid input, exit 2.
        pytest.param(["scale", "cli_errors", "1001"], 2,
                     ["error: replicas: input should be less than or equal to 1000",
                      "  replicas: input should be less than or equal to 1000"], id="scale-too-large-400"),
        # Rejected by the CLI itself.
        pytest.param(["scale", "cli_errors", "-1"], 2, None, id="scale-negative"),
        pytest.param(["rollback", "cli_errors", "0"], 2, None, id="rollback-zero"),
    ],
)  # fmt: skip
def test_errors_and_exit_codes(
    shared_server: Server, errors_service: str, args: list[str], code: int, stderr: list[str] | None
) -> None:
    r = run(*args, data_dir=shared_server.data_dir)
    assert r.exit_code == code, r.output
    if stderr is not None:
        assert r.stderr.splitlines() == stderr
    assert r.stdout == ""


@pytest.mark.parametrize(
    ("token", "message"),
    [
        pytest.param("wrong", "error: wrong admin token", id="wrong"),
        pytest.param("", "error: OPENEAS_SERVER is set but OPENEAS_ADMIN_TOKEN is not", id="missing"),
    ],
)
def test_bad_admin_token(shared_server: Server, token: str, message: str) -> None:
    r = run("ls", env={"OPENEAS_SERVER": shared_server.api_url, "OPENEAS_ADMIN_TOKEN": token})
    assert (r.exit_code, r.stderr.strip()) == (1, message)


def test_gateways_lists_the_servers_own_gateway_live(shared_server: Server) -> None:
    data, url = shared_server.data_dir, shared_server.gateway_url.rstrip("/")
    r = run("gateways", "--json", data_dir=data)
    assert r.exit_code == 0, r.output
    view = json.loads(r.stdout)
    (own,) = [g for g in view["gateways"] if g["url"] == url]
    assert (
        own["live"] and own["pid"] > 0 and 0 <= own["heartbeat_age_s"] <= 3 and own["applied_version"] >= 0
    ), own
    table = run("gateways", data_dir=data)
    assert table.exit_code == 0 and url in table.stdout and " yes" in table.stdout, table.output


def test_call_info(shared_server: Server, tmp_path: Path) -> None:
    data = shared_server.data_dir
    f = write(tmp_path / "s.json", json.dumps({**spec("cli_call"), "token": "cli-call-token-0123"}))
    assert run("deploy", "-f", f, "--no-wait", data_dir=data).exit_code == 0
    endpoint = f"{shared_server.gateway_url}/api/predict/cli_call"
    r = run("call-info", "cli_call", "--json", data_dir=data)
    assert (r.exit_code, r.stdout) == (
        0,
        json.dumps({"endpoint": endpoint, "token": "cli-call-token-0123"}) + "\n",
    )
    r = run("call-info", "cli_call", data_dir=data)
    assert r.exit_code == 0
    assert f"endpoint: {endpoint}\n" in r.stdout
    assert "token:    cli-call-token-0123\n" in r.stdout
    assert f'client = OpenAI(base_url="{endpoint}/v1", api_key="cli-call-token-0123")' in r.stdout
    assert f"curl -H 'Authorization: cli-call-token-0123' {endpoint}" in r.stdout


def test_ls_describe_logs_and_events_of_running_replicas(shared_server: Server, tmp_path: Path) -> None:
    data = shared_server.data_dir
    written = spec("cli_show", instance=2)
    f = write(tmp_path / "s.json", json.dumps(written))
    assert run("deploy", "-f", f, data_dir=data).exit_code == 0
    detail = shared_server.client.describe("cli_show")

    ls = run("ls", data_dir=data)
    assert ls.exit_code == 0
    assert ls.stdout.splitlines()[0].split() == ["NAME", "STATUS", "VERSION", "READY", "AGE", "ENDPOINT"]
    (row,) = [line.split() for line in ls.stdout.splitlines() if line.startswith("cli_show ")]
    assert row[:4] == ["cli_show", "Running", "1", "2/2"]
    assert row[-1] == f"{shared_server.gateway_url}/api/predict/cli_show"

    d = run("describe", "cli_show", data_dir=data)
    assert d.exit_code == 0, d.output
    assert "2 ready / 2 desired / 2 total" in d.stdout
    rows = [line.split() for line in d.stdout.splitlines() if line.startswith("cli_show-")]
    expected = []
    for rep in detail["replicas"]:
        cs = rep["cold_start"]
        expected.append([rep["id"], "1", "Ready", str(rep["port"]), str(rep["pid"]), "0", "-",
                         *(f"{cs[k]:.1f}" for k in ("fetch_s", "start_s", "warm_s", "total_s"))])  # fmt: skip
    assert rows == expected
    assert json.loads(run("describe", "cli_show", "--json", data_dir=data).stdout)["spec"] == written

    logs = run("logs", "cli_show", "--tail", "10", data_dir=data)
    assert logs.exit_code == 0
    for rep in detail["replicas"]:
        assert f"==> {rep['id']} <==" in logs.stdout
        assert f"openeas testserver listening on http://127.0.0.1:{rep['port']}" in logs.stdout
    one = detail["replicas"][1]
    only = run("logs", "cli_show", "--replica", one["id"], data_dir=data)
    assert "==>" not in only.stdout and f"127.0.0.1:{one['port']}" in only.stdout
    assert f"127.0.0.1:{detail['replicas'][0]['port']}" not in only.stdout

    ev = run("events", "cli_show", "--limit", "5", data_dir=data)
    assert ev.exit_code == 0
    assert ev.stdout.splitlines()[0].split() == ["TIME", "TYPE", "REASON", "REPLICA", "MESSAGE"]
    assert len(ev.stdout.splitlines()) == 6
    assert re.search(r"Ready\s+cli_show-\S+\s+replica ready after", ev.stdout)
    events = json.loads(run("events", "cli_show", "--json", data_dir=data).stdout)["events"]
    assert [e["reason"] for e in events] == [
        e["reason"] for e in shared_server.client.events("cli_show", limit=50)
    ]


def test_scale_stop_start_rollback_versions_delete(shared_server: Server, tmp_path: Path) -> None:
    data, c = shared_server.data_dir, shared_server.client
    f = write(tmp_path / "s.json", json.dumps(spec("cli_ops")))
    run("deploy", "-f", f, "--no-wait", data_dir=data)
    run("deploy", "-f", write(tmp_path / "s2.json", json.dumps(spec("cli_ops", args="--model-name v2"))), "--no-wait",
        data_dir=data)  # fmt: skip
    scaled = run("scale", "cli_ops", "1", "--wait", data_dir=data)
    assert scaled.exit_code == 0, scaled.output
    assert scaled.stdout.splitlines()[0] == "scaling cli_ops to 1 replicas"
    assert scaled.stdout.splitlines()[1].startswith("cli_ops is ready: 1/1 replicas · cold start ")
    assert c.describe("cli_ops")["ready_replicas"] == 1
    assert run("stop", "cli_ops", data_dir=data).stdout == "stopping cli_ops\n"
    assert c.describe("cli_ops")["status"] == "Stopped"
    assert run("start", "cli_ops", data_dir=data).stdout == "starting cli_ops\n"
    assert c.describe("cli_ops")["desired_replicas"] == 1
    rb = run("rollback", "cli_ops", "1", data_dir=data)
    assert rb.stdout == "rolled back cli_ops to the spec of version 1: now version 3\n"
    assert c.describe("cli_ops")["spec"] == spec("cli_ops")
    v = run("versions", "cli_ops", data_dir=data)
    assert [line.split()[0] for line in v.stdout.splitlines()] == ["VERSION", "1", "2", "3"]
    assert v.stdout.splitlines()[-1].rstrip().endswith("*")
    diff = run("versions", "cli_ops", "--diff", "1", "2", data_dir=data)
    changed = [x for x in diff.stdout.splitlines() if x[:1] in "+-" and x[:3] not in ("+++", "---")]
    assert diff.stdout.startswith("--- v1\n+++ v2\n") and len(changed) == 2, diff.output
    assert "--model-name v2" in changed[1] and "--model-name v2" not in changed[0]
    same = run("versions", "cli_ops", "--diff", "1", "3", data_dir=data)
    assert same.stdout == "v1 and v3 have the same spec\n"
    d = run("delete", "cli_ops", "--wait", data_dir=data)
    assert (d.exit_code, d.stdout) == (0, "deleted cli_ops\n"), d.output
    with pytest.raises(ApiError) as gone:
        c.describe("cli_ops")
    assert gone.value.status == 404


def test_autoscale_shows_metric_vs_target_and_the_reason_even_without_a_change(shared_server: Server) -> None:
    dd = shared_server.data_dir
    policy = {"metric": "concurrent_requests", "target": 4, "min_replicas": 1, "max_replicas": 3}
    shared_server.client.deploy(spec("cli_scaled", instance=1, autoscaling=policy))
    shared_server.client.wait_ready("cli_scaled", 1, timeout_s=60)
    # no load: the decision changes nothing, and says why
    out = run("autoscale", "cli_scaled", data_dir=dd)
    assert out.exit_code == 0, out.output
    assert "Metric concurrent_requests" in out.output and "target 4 per replica" in out.output
    assert "1 desired / 1 ready" in out.output and "stay at 1" in out.output
    j = json.loads(run("autoscale", "cli_scaled", "--json", data_dir=dd).output)
    assert j["decision"]["desired_replicas"] == 1 and j["metrics"][0]["metric"] == "concurrent_requests"
    described = run("describe", "cli_scaled", data_dir=dd).output
    assert "Last decision" in described and "Bounds" in described
    missing = run("autoscale", "cli_plain_missing", data_dir=dd)
    assert missing.exit_code == 1 and "not found" in missing.output
    shared_server.client.deploy(spec("cli_plain"))
    plain = run("autoscale", "cli_plain", data_dir=dd)
    assert plain.exit_code == 1 and "has no autoscaling policy" in plain.output
    shared_server.client.delete("cli_scaled")
    shared_server.client.delete("cli_plain")
