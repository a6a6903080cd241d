"""``openeas server``: start the server (API, gateway, reconciler) in this process."""

import os
from pathlib import Path
from typing import Annotated

import typer

from openeas.cli.common import DataDir, fail, read_spec, state
from openeas.errors import SpecError
from openeas.sdk.discovery import DEFAULT_DATA_DIR, ENV_DATA_DIR
from openeas.storage.cache_index import ENV_LIMIT as ENV_CACHE_LIMIT
from openeas.storage.cache_index import parse_limit

HostOpt = Annotated[str, typer.Option(help="Address the API and gateway listen on.")]
PortOpt = Annotated[int, typer.Option(help="Control-plane API port.")]
GatewayPortOpt = Annotated[int, typer.Option(help="Gateway (data plane) port.")]
DeployOpt = Annotated[
    list[Path] | None,
    typer.Option("--deploy", help="Spec file deployed at start if the service is absent (repeatable)."),
]
OssRootOpt = Annotated[
    Path | None,
    typer.Option(help="Local folder that oss://bucket/key maps to (default DIR/oss)."),
]
KeepReplicasOpt = Annotated[
    bool,
    typer.Option(
        "--keep-replicas",
        help="On exit leave replica processes running, to be adopted by the next start (upgrades).",
    ),
]
PublicMetricsOpt = Annotated[
    bool,
    typer.Option(
        "--public-metrics",
        help="Serve the API's /metrics without the admin token (it names every service).",
    ),
]
RegistryAuthOpt = Annotated[
    Path | None,
    typer.Option(
        help="Registry credentials (a containers auth.json / docker config.json) for image pulls "
        "of specs without dockerAuth.",
        exists=True,
        dir_okay=False,
    ),
]
NodeCpuOpt = Annotated[
    float | None,
    typer.Option(min=0.01, help="Cores replicas may request in all (default: this node's cores)."),
]
NodeMemoryOpt = Annotated[
    int | None,
    typer.Option(min=1, help="MB replicas may request in all (default: this node's memory)."),
]
QueueUrlOpt = Annotated[
    str | None,
    typer.Option(
        help="Async services' queue: redis://HOST:PORT/DB for several gateways (default: SQLite in "
        "DIR/queue.db). Also OPENEAS_QUEUE_URL.",
    ),
]
GatewayLimitOpt = Annotated[
    list[str] | None,
    typer.Option("--gateway-limit", help="NAME=VALUE: a gateway client limit (repeatable; docs/cli.md)."),
]
GatewayWorkersOpt = Annotated[
    int,
    typer.Option(
        "--gateway-workers",
        help="Gateway processes sharing the gateway port (SO_REUSEPORT), each on a core of its own "
        "when the node has them; 1 to 4 per core (README: Gateway workers).",
    ),
]
ReplicaUserOpt = Annotated[
    str,
    typer.Option(
        help="When root: the account whose group process replicas get, each service running as a "
        "uid of its own (created if missing); 'none': replicas run as the server's user.",
    ),
]
AllowHostPathOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--allow-host-path",
        help="A host folder specs may read (file:// and local paths, nfs.path, git repositories, "
        "warmup files), and batch jobs and stress tests may name (input, output, errors, data.path); "
        "repeatable. None by default, besides the local bucket (--oss-root).",
    ),
]
NfsExportOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--nfs-export",
        help="SERVER:/EXPORT=DIR: the NFS export a spec's nfs {server, path} names is mounted on this "
        "node at DIR (repeatable).",
    ),
]
CatalogOpt = Annotated[
    Path | None,
    typer.Option(
        help="Instance catalog (YAML: types, prices, currency) costs are priced by (docs/cost.md; "
        "default: the shipped one). Also OPENEAS_CATALOG.",
        exists=True,
        dir_okay=False,
    ),
]

CacheLimitOpt = Annotated[
    str | None,
    typer.Option(
        help="The node cache's bound (20GiB, 500MB, bytes, or none): least recently used entries "
        "no replica uses are evicted above it (docs/cold-start.md). Default 20GiB.",
    ),
]
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="The store: postgresql://USER@HOST:PORT/DB (default: SQLite in DIR/openeas.db). "
        "DIR still holds secret.key. Also OPENEAS_STORE.",
        envvar="OPENEAS_STORE",
    ),
]
RuntimeOpt = Annotated[
    str,
    typer.Option(
        help="Where replicas run: 'embedded' (processes or containers on this machine) or 'ray' "
        "(actors placed by the Ray cluster at --ray-address; needs openeas[ray]; docs/cluster.md).",
    ),
]
RayAddressOpt = Annotated[
    str,
    typer.Option(help="The Ray cluster of --runtime ray: 'auto' (this machine's) or HOST:PORT."),
]
ReplicaAddressOpt = Annotated[
    str,
    typer.Option(
        help="Where a --runtime ray replica is reached: 'loopback' (127.0.0.1: gateways on its own "
        "machine only) or 'node' (the address Ray reports for its node: gateways on any machine; "
        "docs/cluster.md). The replica gets it in OPENEAS_REPLICA_HOST.",
    ),
]

ArchiveAfterDaysOpt = Annotated[
    float,
    typer.Option(
        min=0,
        help="Archive and delete a service not Running for this many days, with Warning events "
        "30, 7 and 1 days before (0 = never; docs/archive.md).",
    ),
]
ArchiveAfterSOpt = Annotated[
    float | None, typer.Option(min=0.1, hidden=True, help="Tests only: the archive rule in seconds.")
]


def _runtime_env(runtime: str, ray_address: str, replica_address: str) -> None:
    """Check --runtime and --replica-address (invalid: exit 2 before anything starts) and hand them
    to build_runtimes (runtime/select.py), which reads them from the environment."""
    from openeas.runtime.base import REPLICA_ADDRESS_MODES
    from openeas.runtime.select import ENV_RAY_ADDRESS, ENV_REPLICA_ADDRESS

    if runtime not in ("embedded", "ray"):
        raise typer.BadParameter(f"expected 'embedded' or 'ray', got {runtime!r}", param_hint="--runtime")
    if replica_address not in REPLICA_ADDRESS_MODES:
        modes = ", ".join(REPLICA_ADDRESS_MODES)
        got = f"expected one of {modes}, got {replica_address!r}"
        raise typer.BadParameter(got, param_hint="--replica-address")
    if replica_address != "loopback" and runtime != "ray":
        need = "'node' needs --runtime ray (the embedded runtimes stay on 127.0.0.1)"
        raise typer.BadParameter(need, param_hint="--replica-address")
    if runtime == "ray":
        os.environ[ENV_RAY_ADDRESS] = ray_address
        os.environ[ENV_REPLICA_ADDRESS] = replica_address


def server(
    data_dir: DataDir = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8080,
    gateway_port: GatewayPortOpt = 8081,
    deploy: DeployOpt = None,
    oss_root: OssRootOpt = None,
    keep_replicas: KeepReplicasOpt = False,
    public_metrics: PublicMetricsOpt = False,
    registry_auth: RegistryAuthOpt = None,
    node_cpu: NodeCpuOpt = None,
    node_memory: NodeMemoryOpt = None,
    queue_url: QueueUrlOpt = None,
    gateway_limit: GatewayLimitOpt = None,
    gateway_workers: GatewayWorkersOpt = 1,
    replica_user: ReplicaUserOpt = "openeas-replica",
    allow_host_path: AllowHostPathOpt = None,
    nfs_export: NfsExportOpt = None,
    catalog: CatalogOpt = None,
    cache_limit: CacheLimitOpt = None,
    store: StoreOpt = None,
    runtime: RuntimeOpt = "embedded",
    ray_address: RayAddressOpt = "auto",
    replica_address: ReplicaAddressOpt = "loopback",
    archive_after_days: ArchiveAfterDaysOpt = 180,
    archive_after_s: ArchiveAfterSOpt = None,
) -> None:
    """Start the server (API, gateway, reconciler); writes DIR/server.json once it answers."""
    from openeas.server import run_server

    if catalog:  # the instance catalog the API prices by (api/cost.py reads it from there)
        os.environ["OPENEAS_CATALOG"] = str(catalog.resolve())
    if cache_limit is not None:  # the reconciler's node cache reads it (storage/cache_index.py)
        try:
            parse_limit(cache_limit)
        except SpecError as exc:  # a bad size is invalid input (exit 2) before anything starts
            fail("cannot start the server", exc.errors, code=2)
        os.environ[ENV_CACHE_LIMIT] = cache_limit
    if queue_url:
        os.environ["OPENEAS_QUEUE_URL"] = queue_url  # the gateway and the backlog reader take it from there
    _runtime_env(runtime, ray_address, replica_address)
    # The 180-day rule (controller/archiver.py reads it from there).
    os.environ["OPENEAS_ARCHIVE_AFTER_DAYS"] = f"{archive_after_days:g}"
    if archive_after_s is not None:
        os.environ["OPENEAS_ARCHIVE_AFTER_S"] = f"{archive_after_s:g}"
    for f in deploy or []:
        # a bad --deploy spec is invalid input (exit 2) before anything starts
        read_spec(str(f), groups_ok=False)
    if store and not store.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        raise typer.BadParameter(
            f"expected postgresql://USER@HOST:PORT/DB, got {store!r}", param_hint="--store"
        )
    resolved = data_dir or state.data_dir or Path(os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR)
    run_server(
        data_dir=resolved,
        host=host,
        port=port,
        gateway_port=gateway_port,
        deploy=list(deploy or []),
        oss_root=oss_root,
        registry_auth=registry_auth.resolve() if registry_auth else None,
        keep_replicas=keep_replicas,
        public_metrics=public_metrics,
        gateway_limits=list(gateway_limit or []),
        gateway_workers=gateway_workers,
        node_cpu=node_cpu,
        node_memory_mb=node_memory,
        replica_user=replica_user,
        allow_host_paths=[p.resolve() for p in allow_host_path or []],
        nfs_exports=list(nfs_export or []),
        store_url=store or None,
    )
