"""Port and mount rewriting, argv and env of a replica launch (pure functions), and the choice of\na replica's port among real sockets."""

from __future__ import annotations

import random
import socket
import subprocess

import pytest

from openeas.errors import MountError
from openeas.runtime.launch import (
    REPLICA_PORTS,
    build_argv,
    build_env,
    build_launch,
    is_simple_command,
    pick_port,
    rewrite_mounts,
    rewrite_port,
    rewrite_port_env,
)
from openeas.spec.models import ServiceSpec

# (command as written for container port 8000, expected for replica port 40123)
PORT_CASES = [
    ("vllm serve /mnt/data/Qwen --port 8000", "vllm serve /mnt/data/Qwen --port 40123", "port-space"),
    ("uvicorn app:app --port=8000", "uvicorn app:app --port=40123", "port-equals"),
    ("server -p 8000", "server -p 40123", "short-p"),
    ("gunicorn -b 0.0.0.0:8000 app:app", "gunicorn -b 0.0.0.0:40123 app:app", "host-colon"),
    ("gunicorn --bind 127.0.0.1:8000 app", "gunicorn --bind 127.0.0.1:40123 app", "bind-host-colon"),
    ("server --bind :8000", "server --bind :40123", "bare-colon"),
    ("server --listen 8000", "server --listen 40123", "listen-flag"),
    ("server --bind 8000", "server --bind 40123", "bind-flag"),
    ("streamlit run a.py --server.port 8000", "streamlit run a.py --server.port 40123", "dotted-flag"),
    ("srv --http-port '8000'", "srv --http-port '40123'", "quoted-value"),
    ('srv --port="8000"', 'srv --port="40123"', "quoted-equals"),
    ("srv --listen-addr=localhost:8000", "srv --listen-addr=localhost:40123", "hostname-colon"),
    ("srv --listen [::]:8000", "srv --listen [::]:40123", "ipv6-colon"),
    ("PORT=8000 python app.py", "PORT=40123 python app.py", "env-assignment"),
    ("GRADIO_SERVER_PORT=8000 python app.py", "GRADIO_SERVER_PORT=40123 python app.py", "suffix-port-env"),
    (
        "python -c 'uvicorn.run(app, port=8000)'",
        "python -c 'uvicorn.run(app, port=40123)'",
        "python-kwarg",
    ),
    ("curl http://localhost:8000/health", "curl http://localhost:40123/health", "url"),
    (
        "vllm serve m --port 8000 --max-model-len 8000",
        "vllm serve m --port 40123 --max-model-len 8000",
        "other-flag-same-number",
    ),
    ("srv --max-tokens 8000", "srv --max-tokens 8000", "max-tokens-untouched"),
    ("srv --port 80001", "srv --port 80001", "longer-number-untouched"),
    ("srv --port 18000", "srv --port 18000", "suffix-number-untouched"),
    ("srv --report-interval 8000", "srv --report-interval 8000", "port-inside-word-untouched"),
    ("python -c 'print(text[:8000])'", "python -c 'print(text[:8000])'", "slice-untouched"),
    ("python -c 'print(x[i:8000])'", "python -c 'print(x[i:8000])'", "slice-index-untouched"),
    ("echo '{\"max_tokens\":8000}'", "echo '{\"max_tokens\":8000}'", "json-untouched"),
    ("REPORT=8000 srv", "REPORT=8000 srv", "report-env-untouched"),
    ("srv --port ${PORT:-8000}", "srv --port ${PORT:-8000}", "default-expansion-untouched"),
    ("python -m http.server 8000", "python -m http.server 8000", "positional-untouched"),
    ("sleep 8000", "sleep 8000", "plain-number-untouched"),
    (
        "srv --port 8000 && curl 127.0.0.1:8000",
        "srv --port 40123 && curl 127.0.0.1:40123",
        "several-occurrences",
    ),
    (
        "java -Dserver.port=8000 -jar app.jar",
        "java -Dserver.port=40123 -jar app.jar",
        "java-system-property",
    ),
]


@pytest.mark.parametrize(("command", "expected"), [c[:2] for c in PORT_CASES], ids=[c[2] for c in PORT_CASES])
def test_rewrite_port(command: str, expected: str) -> None:
    assert rewrite_port(command, 8000, 40123) == expected


def test_rewrite_port_same_port_is_identity() -> None:
    assert rewrite_port("srv --port 8000", 8000, 8000) == "srv --port 8000"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("PORT", "8000", "40123"),
        ("SERVER_PORT", " 8000", "40123"),
        ("serverPort", "8000", "40123"),
        ("PORT", "9000", "9000"),
        ("MAX_TOKENS", "8000", "8000"),
        ("REPORT", "8000", "8000"),
    ],
    ids=["port", "suffix-port", "camel", "other-value", "other-name", "report"],
)
def test_rewrite_port_env(name: str, value: str, expected: str) -> None:
    assert rewrite_port_env(name, value, 8000, 40123) == expected


MOUNTS = {"/mnt/data": "/cache/objects/abc", "/mnt/data/sub": "/cache/objects/sub", "/models/": "/w/m"}

MOUNT_CASES = [
    ("vllm serve /mnt/data/Qwen", "vllm serve /cache/objects/abc/Qwen", "prefix"),
    ("ls /mnt/data", "ls /cache/objects/abc", "exact"),
    ("ls /mnt/data/", "ls /cache/objects/abc/", "trailing-slash"),
    ("ls /mnt/data/sub/x", "ls /cache/objects/sub/x", "longest-mount-wins"),
    ("ls /mnt/database", "ls /mnt/database", "longer-name-untouched"),
    ("ls /mnt/data.bak /mnt/data-2", "ls /mnt/data.bak /mnt/data-2", "suffix-chars-untouched"),
    ("ls /opt/mnt/data", "ls /opt/mnt/data", "inside-other-path-untouched"),
    ("ls ./mnt/data", "ls ./mnt/data", "relative-untouched"),
    ("srv --model=/mnt/data/m", "srv --model=/cache/objects/abc/m", "after-equals"),
    ('srv "/mnt/data/my model"', 'srv "/cache/objects/abc/my model"', "double-quoted"),
    ("srv '/mnt/data'", "srv '/cache/objects/abc'", "single-quoted"),
    ("PYTHONPATH=/a:/mnt/data/lib srv", "PYTHONPATH=/a:/cache/objects/abc/lib srv", "path-list"),
    ("srv file:///mnt/data/x", "srv file:///cache/objects/abc/x", "file-url"),
    ("srv /models /models/llm", "srv /w/m /w/m/llm", "mount-path-with-trailing-slash"),
    ("cp /mnt/data/a /mnt/data/b", "cp /cache/objects/abc/a /cache/objects/abc/b", "several"),
    ("srv ${ROOT}/mnt/data", "srv ${ROOT}/mnt/data", "after-expansion-untouched"),
]


@pytest.mark.parametrize(("text", "expected"), [c[:2] for c in MOUNT_CASES], ids=[c[2] for c in MOUNT_CASES])
def test_rewrite_mounts(text: str, expected: str) -> None:
    assert rewrite_mounts(text, MOUNTS) == expected


@pytest.mark.parametrize(
    "local",
    ["/home/me/My Data/objects/abc", "/data/objects/abc\n", "/data/a;rm -rf x", "/data/$(id)"],
    ids=["space", "trailing-newline", "semicolon", "substitution"],
)
def test_rewrite_mounts_rejects_shell_unsafe_local_dirs(local: str) -> None:
    with pytest.raises(MountError, match="not safe in a shell command"):
        rewrite_mounts("ls /mnt/data", {"/mnt/data": local})


def test_rewrite_mounts_rejects_shell_unsafe_local_dir_only_in_shell_text() -> None:
    mounts = {"/mnt/data": "/home/me/My Data/objects/abc"}
    with pytest.raises(MountError, match="not safe in a shell command"):
        rewrite_mounts("ls /mnt/data", mounts)
    assert rewrite_mounts("/mnt/data/x", mounts, shell=False) == "/home/me/My Data/objects/abc/x"
    assert rewrite_mounts("ls /elsewhere", mounts) == "ls /elsewhere"  # nothing pasted: no error


def test_rewrite_mounts_rejects_root_mount() -> None:
    with pytest.raises(MountError, match="other than '/'"):
        rewrite_mounts("ls /", {"/": "/x"})


@pytest.mark.parametrize(
    ("command", "simple"),
    [
        ("vllm serve m --port 8000", True),
        ("python -m http.server > out.log 2>&1", True),
        ("python app.py 'a && b; c | d'", True),
        ("cd /x && python app.py", False),
        ("a; b", False),
        ("a | tee log", False),
        ("a &", False),
        ("(a)", False),
        ("PORT=1 python app.py", False),
        ("export X=1", False),
        ("exec python app.py", False),
        ("a\nb", False),
        ("echo 'unbalanced", False),
        ("", False),
    ],
    ids=[
        "plain", "redirects", "operators-quoted", "and", "semicolon", "pipe", "background",
        "subshell", "assignment-first", "builtin", "already-exec", "newline", "bad-quotes", "empty",
    ],
)  # fmt: skip
def test_is_simple_command(command: str, simple: bool) -> None:
    assert is_simple_command(command) is simple


def test_build_argv_command_and_script() -> None:
    assert build_argv("srv --port 1", None)[1:] == ["-c", "exec srv --port 1"]
    assert build_argv("cd /x && srv", None)[1:] == ["-c", "cd /x && srv"]
    assert build_argv(None, "set -e\nsrv\n")[1:] == ["-c", "set -e\nsrv\n"]
    assert build_argv("srv", None)[0] in ("/bin/bash", "/bin/sh")
    with pytest.raises(ValueError):
        build_argv(None, None)


def test_build_env_order_and_path() -> None:
    env = build_env(
        {"PATH": "/usr/bin:/venv/bin:/bin", "PORT": "1", "HOME": "/root"},
        {"FOO": "bar", "PORT": "2"},
        port=40123,
        bin_dir="/venv/bin",
    )
    assert env["PATH"] == "/venv/bin:/usr/bin:/bin"  # venv first, not duplicated
    assert env["PORT"] == env["OPENEAS_REPLICA_PORT"] == "40123"  # the replica's port wins
    assert env["FOO"] == "bar" and env["HOME"] == "/root"


def _spec(container: dict[str, object], storage: list[dict[str, object]] | None = None) -> ServiceSpec:
    return ServiceSpec.model_validate(
        {"metadata": {"name": "svc"}, "containers": [container], "storage": storage or []}
    )


def test_build_launch_rewrites_command_env_and_mounts() -> None:
    spec = _spec(
        {
            "command": "vllm serve /mnt/data/Qwen --port 8000 --max-tokens 8000",
            "port": 8000,
            "env": [
                {"name": "HF_HOME", "value": "/mnt/data/hf"},
                {"name": "SERVER_PORT", "value": "8000"},
                {"name": "OTHER", "value": "8000"},
            ],
        },
        [{"mount_path": "/mnt/data", "oss": {"path": "oss://b/qwen"}}],
    )
    launch = build_launch(
        spec,
        replica_id="r1",
        port=40123,
        mounts={"/mnt/data": "/cache/objects/k"},
        workdir="/w/r1",
        log_path="/w/r1/log",
        base_env={"PATH": "/usr/bin"},
        bin_dir="/venv/bin",
    )
    assert launch.argv[1:] == ["-c", "exec vllm serve /cache/objects/k/Qwen --port 40123 --max-tokens 8000"]
    assert launch.env["HF_HOME"] == "/cache/objects/k/hf"
    assert launch.env["SERVER_PORT"] == "40123"
    assert launch.env["OTHER"] == "8000"
    assert launch.env["PATH"] == "/venv/bin:/usr/bin"
    assert (launch.port, launch.cwd, launch.log_path, launch.replica_id) == (
        40123,
        "/w/r1",
        "/w/r1/log",
        "r1",
    )


def test_build_launch_script_runs_with_rewrites(tmp_path: object) -> None:
    spec = _spec({"script": "set -e\necho $PORT\necho serving /mnt/d on 0.0.0.0:9000\n", "port": 9000})
    launch = build_launch(
        spec,
        replica_id="r",
        port=41000,
        mounts={"/mnt/d": "/local/d"},
        workdir=str(tmp_path),
        log_path="unused",
        base_env={"PATH": "/usr/bin:/bin"},
    )
    out = subprocess.run(launch.argv, env=launch.env, cwd=launch.cwd, capture_output=True, text=True)
    assert out.stdout.splitlines() == ["41000", "serving /local/d on 0.0.0.0:41000"]


def _three_free_ports() -> int:
    """A base port b of the replica range with b, b+1 and b+2 all free right now."""
    rng = random.Random()
    for _ in range(200):
        b = rng.randrange(REPLICA_PORTS[0], REPLICA_PORTS[1] - 3)
        try:
            for p in (b, b + 1, b + 2):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return b
    raise AssertionError("no three consecutive free ports in the replica range")


@pytest.mark.parametrize(
    ("held", "used", "expected"),
    [
        # Offsets from a base b; the range is b..b+2. Only one port is left each time, so every
        # draw of the random pick must skip the others; `held` ports are bound by another
        # socket (another program), `used` ones are recorded for other replicas.
        pytest.param({0, 2}, set(), 1, id="ports-bound-elsewhere-are-skipped"),
        pytest.param(set(), {0, 2}, 1, id="ports-of-other-replicas-are-skipped"),
        pytest.param({0}, {2}, 1, id="both-kinds-skipped"),
        pytest.param({0, 2}, {1}, None, id="none-left-is-a-clear-error"),
    ],
)
def test_pick_port(monkeypatch: pytest.MonkeyPatch, held: set[int], used: set[int], expected: int | None) -> None:
    b = _three_free_ports()
    monkeypatch.setenv("OPENEAS_REPLICA_PORTS", f"{b}-{b + 3}")
    holders = []
    try:
        for offset in held:
            s = socket.socket()
            holders.append(s)
            s.bind(("127.0.0.1", b + offset))
            s.listen(1)
        taken = {b + u for u in used}
        if expected is None:
            with pytest.raises(OSError) as err:
                pick_port(taken)
            assert str(err.value) == f"no free replica port in {b}-{b + 3} on 127.0.0.1 ({len(used)} in use by replicas)"
        else:
            assert [pick_port(taken, rng=random.Random(seed)) for seed in range(5)] == [b + expected] * 5
    finally:
        for s in holders:
            s.close()
