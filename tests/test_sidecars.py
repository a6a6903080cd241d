"""Several containers as one replica (issue 12), process runtime: the other containers start in
the background in the replica's process group, each container port rewritten everywhere, so one
container still reaches another at the port the spec names; a stop ends them all."""

from __future__ import annotations

import pytest

from openeas.runtime.launch import build_launch
from openeas.spec import parse_spec
from tests.harness import Server, alive, group_members, service_spec, wait_for

SPEC = {
    "name": "x",
    "containers": [
        {"command": "proxy --listen 8680 --to 127.0.0.1:8001", "port": 8680},
        {"script": "app serve --port 8001", "port": 8001, "env": [{"name": "NOTE", "value": "it's"}]},
        {"command": "logger --flush"},  # a sidecar without a port
    ],
}


def test_sidecars_start_in_the_background_with_every_port_rewritten():
    launch = build_launch(parse_spec(SPEC), replica_id="r", port=21000, mounts={}, workdir="/w", log_path="/l",
                          base_env={}, sidecar_ports={8001: 22000})  # fmt: skip
    assert launch.argv[2].splitlines() == [
        "( export NOTE='it'\"'\"'s'; export PORT=22000; exec app serve --port 22000",
        ") &",
        "( exec logger --flush",
        ") &",
        "exec proxy --listen 21000 --to 127.0.0.1:22000",  # the main container, in the foreground
    ]
    single = build_launch(parse_spec({"name": "x", "containers": SPEC["containers"][:1]}), replica_id="r",
                          port=21000, mounts={}, workdir="/w", log_path="/l", base_env={})  # fmt: skip
    assert single.argv[2] == "exec proxy --listen 21000 --to 127.0.0.1:8001"


# The main container starts only once the other one answers at the port the spec names (8001).
WAIT_FOR_SIDECAR = (
    "python -c 'import time, urllib.request as u\n"
    "for _ in range(200):\n"
    "    try:\n"
    "        u.urlopen(\"http://127.0.0.1:8001/health\", timeout=1); break\n"
    "    except OSError: time.sleep(0.05)\n"
    "else: raise SystemExit(\"no sidecar\")'"
)


@pytest.mark.slow
def test_two_containers_run_as_one_replica(server: Server):
    spec = service_spec("paired")
    main = spec["containers"][0]
    main["command"] = f"{WAIT_FOR_SIDECAR} && exec {main['command']}"
    spec["containers"].append({"command": "python -m openeas.testserver --host 127.0.0.1 --port 8001", "port": 8001})
    c = server.client
    c.deploy(spec)
    rep = c.wait_ready("paired", 1, timeout_s=60)["replicas"][0]
    members = group_members(rep["pid"])
    assert len(members) >= 2  # the main server and the other container, one process group
    assert c.predict("paired", {"prompt": "x", "max_tokens": 1}, path="/v1/completions").status_code == 200
    c.scale("paired", 0)
    wait_for(lambda: not c.describe("paired")["replicas"], 30, what="the replica stopped")
    wait_for(lambda: not any(alive(p) for p in members), 10, what="every container's process gone")
