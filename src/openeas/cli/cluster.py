"""``openeas cluster up|down`` (a whole local cluster: openeas.localcluster) and ``openeas nodes``
(the nodes replicas run on, from every service's replicas: replicas per node, by service)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer

from openeas.cli import render
from openeas.localcluster import CLUSTER_FILE, UP_TIMEOUT_S, down, up

cluster_app = typer.Typer(help="A local cluster on this machine: Ray, PostgreSQL, Redis, server, gateways.")

LOCAL_NODE = "local"  # the node of a replica on the server's machine (no Ray node id)


@cluster_app.command("up")
def cluster_up(
    dir: Annotated[Path, typer.Option("--dir", help="Folder of the cluster's data, logs and cluster.json.")],
    nodes: Annotated[int, typer.Option(min=1, max=5, help="Ray nodes (head included).")] = 3,
    timeout: Annotated[
        float, typer.Option(min=1, help="Seconds for every part to answer; past it all is stopped.")
    ] = UP_TIMEOUT_S,
) -> None:
    """Start a local cluster; prints cluster.json once everything answers."""
    try:
        info = up(dir, nodes, timeout)
    except (RuntimeError, ValueError) as exc:
        render.err.print(f"error: {exc}", highlight=False)
        raise typer.Exit(1) from None
    render.print_json(info)


@cluster_app.command("down")
def cluster_down(
    dir: Annotated[Path, typer.Option("--dir", help="The folder given to 'openeas cluster up'.")],
) -> None:
    """Stop the local cluster of --dir and everything it started."""
    if not down(dir):
        render.err.print(f"error: --dir: no local cluster is running in {dir}", highlight=False)
        raise typer.Exit(1)
    render.out.print(f"local cluster in {dir} stopped", highlight=False)


def cluster_env(dir: Path) -> dict[str, str]:
    """OPENEAS_SERVER, OPENEAS_ADMIN_TOKEN and OPENEAS_GATEWAY_URL of the cluster of ``dir``."""
    import json

    path = dir / CLUSTER_FILE
    if not path.exists():
        raise typer.BadParameter(
            f"no {CLUSTER_FILE} in {dir}: is a cluster up there?", param_hint="--cluster"
        )
    info = json.loads(path.read_text())
    return {
        "OPENEAS_SERVER": info["api_url"],
        "OPENEAS_ADMIN_TOKEN": info["admin_token"],
        "OPENEAS_GATEWAY_URL": info["balancer_url"],
    }


def nodes_view(details: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each node with its replicas per service (pure), from the services' describe answers."""
    per: dict[str, Counter[str]] = {}
    for d in details:
        for r in d.get("replicas", []):
            per.setdefault(r.get("node") or LOCAL_NODE, Counter())[d["name"]] += 1
    return [
        {"node": node, "replicas": sum(c.values()), "services": dict(sorted(c.items()))}
        for node, c in sorted(per.items())
    ]
