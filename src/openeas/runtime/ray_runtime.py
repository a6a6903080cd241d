"""The Ray runtime: a Ray cluster places replicas on its nodes; this module owns every Ray call.

``openeas server --runtime ray --ray-address auto|HOST:PORT`` starts each replica as a named,
detached Ray actor (``openeas-replica-<id>`` in a namespace of the data dir) that asks for the
spec's ``metadata.cpu``, ``memory`` and ``gpu`` (and a custom resource named after
``cloud.computing.instance_type``), with Ray's SPREAD strategy and, where the service's other
replicas crowd some nodes, a soft affinity to the node with the fewest of them (`spread_target`):
Ray picks the node, never one where the resources do not fit. The actor runs the same launch
plan as the process runtime on its node (a :class:`~openeas.runtime.process.ProcessRuntime`
inside the actor: the replica process, its log, its port) and reports the pid, start ticks, node
and the address the replica is reached at (``ProcessRef.extra["host"]``, stored as
``replicas.host``). The replica dies with its actor (``PR_SET_PDEATHSIG``), so a lost Ray node
leaves no replica behind.

Ports are chosen on the node (:meth:`RayRuntime.place`, before the launch is built): the actor,
once Ray has placed it, picks the replica's ports in the server's replica port range, free on
*its* node (bind and release on every interface there) and none that another replica recorded;
the supervisor stores them and builds the launch with them. Bind-and-release, not a port 0 that
the replica binds itself: a replica's command is anyone's server and cannot report the port it
bound. The window between the release and the replica's own bind is closed enough: the range
lies below Linux's ephemeral ports, so no outgoing connection takes the port meanwhile; two
replicas placed at once on one address are told apart by the supervisor, which asks again when
another replica stored the same address and port first (:func:`~openeas.runtime.base.port_clash`);
what is left is a process outside OpenEAS binding that very port in that second, and the start
then fails and the next one picks another.

Everything else goes by the actor's name, not by a local pid: ``alive`` asks the actor (an
actor that died with its node means the replica is gone), ``signal`` is relayed by it, ``adopt``
finds it by name after a control-plane restart, and ``forget`` kills it (its resources go back
to Ray). A spec that fits on no node raises :class:`~openeas.runtime.base.Unschedulable`, whose
message names the short resource; the replica stays Pending with it.

Where a replica is reached (``openeas server --replica-address``): ``loopback`` (the default)
records 127.0.0.1, right where every node is this machine (the tests, the local cluster; Ray
reports the machine's interface address for its nodes even there); ``node`` records the address
Ray reports for the replica's node, so that gateways on other machines reach it. Either way the
replica's environment carries ``OPENEAS_REPLICA_HOST`` = that address: its command listens there
(``--host $OPENEAS_REPLICA_HOST``) or on all interfaces (docs/cluster.md).

Ray is an optional dependency (``pip install 'openeas[ray]'``); nothing else imports this module.
"""

from __future__ import annotations

import hashlib
import os
import signal as signals
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

# Read when Ray is imported: without it Ray's core worker installs a handler of its own for
# SIGTERM in the server's process (it logs a "failure" and upsets the server's graceful stop).
os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util import list_named_actors
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from openeas.runtime.base import (
    REPLICA_ADDRESS_MODES,
    Demand,
    LaunchSpec,
    NodePorts,
    ProcessRef,
    ReplicaProcess,
    Unschedulable,
    replica_address,
)
from openeas.runtime.launch import pick_ports, replica_port_range
from openeas.runtime.process import ProcessRuntime

ACTOR_PREFIX = "openeas-replica-"
ENV_REPLICA_HOST = "OPENEAS_REPLICA_HOST"  # the replica's own address, in its environment
CALL_TIMEOUT_S = 10.0  # one call to a replica's actor (poll, signal, info)
RAY_ALIVE_CHECK_S = 1.0  # seconds between two liveness asks of one replica's actor
# Memory asked for a hinted replica whose spec asks Ray for nothing, bytes: Ray ignores the node
# affinity of an actor that asks for no resource. Memory, not CPU: 0.01 CPU on each such replica
# left a node 0.98 CPU, and a lost `cpu: 1` replica then fitted nowhere (a cluster test's node
# loss). A MiB of a node's GiBs fragments nothing.
HINTED_MIN_MEMORY = 2**20
SUSPECT_NODE_S = 60.0  # a node where a replica's actor was found gone is not hinted, seconds
MAX_FORGOTTEN = 4096  # replica ids kept as "killed by us, not lost with a node"
START_TIMEOUT_S = 120.0  # from asking Ray for the actor to the replica process started on its node


def actor_name(replica_id: str) -> str:
    return ACTOR_PREFIX + replica_id


def namespace(scope: Path | str) -> str:
    """The Ray namespace of one control plane's replicas (a hash, never the path or URL).

    ``scope``: the store's URL where several servers share it (PostgreSQL: an active and its
    standbys must find the same actors by name), else the data dir."""
    return "openeas-" + hashlib.sha256(str(scope).encode()).hexdigest()[:16]


def ray_request(demand: Demand, instance_resources: Mapping[str, str] | None = None) -> dict[str, float]:
    """The Ray resources one replica asks for (pure): ``CPU``, ``memory`` (bytes), ``GPU``, and
    the custom resource of its instance type (``instance_resources`` maps a type to a resource
    name; unmapped, the type's own name), one unit of it. Unset fields ask for nothing."""
    out: dict[str, float] = {}
    if demand.cpu:
        out["CPU"] = float(demand.cpu)
    if demand.memory_mb:
        out["memory"] = float(demand.memory_mb * 2**20)
    if demand.gpu:
        out["GPU"] = float(demand.gpu)
    if demand.instance_type:
        out[(instance_resources or {}).get(demand.instance_type, demand.instance_type)] = 1.0
    return out


def _show(name: str, value: float) -> str:
    if name == "memory":
        return f"memory {value / 2**20:g} MB"
    return f"{name.lower() if name in ('CPU', 'GPU') else name} {value:g}"


def _holds(total: Mapping[str, float], request: Mapping[str, float]) -> bool:
    """Whether a node of resources ``total`` (Ray's ``Resources``) can ever hold ``request``."""
    return all(total.get(k, 0.0) >= v for k, v in request.items())


def infeasible_reason(request: Mapping[str, float], nodes: Iterable[Mapping[str, float]]) -> str | None:
    """Why no node of the cluster can ever hold ``request`` (pure); None when one can.

    ``nodes``: each live node's total resources (Ray's ``Resources``). The reason names each
    resource that no node has enough of, with the most any node has; or says that no one node
    has them all together.
    """
    totals = list(nodes)
    if not totals:
        return "the Ray cluster has no live node"
    if any(_holds(t, request) for t in totals):
        return None
    short = [
        f"{_show(k, v)} asked, the largest node has {_show(k, max(t.get(k, 0.0) for t in totals))}"
        for k, v in request.items()
        if all(t.get(k, 0.0) < v for t in totals)
    ]
    if short:
        return "no Ray node can hold this replica: " + "; ".join(short)
    wanted = ", ".join(_show(k, v) for k, v in request.items())
    return f"no Ray node has {wanted} together"


def spread_target(
    request: Mapping[str, float],
    nodes: Iterable[tuple[str, Mapping[str, float]]],
    siblings: Mapping[str, int],
    avoid: Collection[str] = (),
) -> str | None:
    """The node to prefer for a replica of a service whose other replicas run on ``siblings``
    (node id → how many there), pure: among the nodes whose totals can hold ``request`` and not in
    ``avoid`` (nodes where a replica was just lost: Ray may not know yet that they are gone), one
    with the fewest of them (ties: the most CPUs, then the node id); None when every such node
    holds as many and none is avoided (nothing to prefer: Ray's SPREAD chooses), or none is left.
    Ray's own SPREAD spreads all actors together, so a service's replicas could share one node and
    all die with it; this hint (a soft affinity, which Ray drops where the node has no room)
    spreads each service."""
    fits = [(nid, t) for nid, t in nodes if _holds(t, request)]
    fit = [(nid, t) for nid, t in fits if nid not in avoid]
    if not fit:
        return None
    counts = {nid: siblings.get(nid, 0) for nid, _ in fit}
    steer = len(fit) < len(fits)  # a node that could hold it is avoided: a hint even on a tie
    if not steer and min(counts.values()) == max(counts.values()):
        return None
    nid, _ = min(fit, key=lambda n: (counts[n[0]], -n[1].get("CPU", 0.0), n[0]))
    return nid


class ReplicaHost:
    """The Ray actor of one replica: starts it on its node and answers for it."""

    def __init__(self) -> None:
        self.runtime = ProcessRuntime(die_with_parent=True)
        self.ref: ProcessRef | None = None
        self.replica_id = ""

    def ports(
        self, count: int, avoid: set[int], address_mode: str, span: tuple[int, int]
    ) -> tuple[str, list[int]]:
        """The replica's address on this node and ``count`` ports of ``span`` (the server's
        replica port range) free *on this node*, none in ``avoid``: bound and released here, on
        every interface, so that a port something on this node holds on any address is never
        chosen."""
        host = replica_address(address_mode, ray.util.get_node_ip_address())
        return host, pick_ports(count, avoid, "::" if ":" in host else "0.0.0.0", span)

    def launch(self, launch: LaunchSpec, address_mode: str = "loopback") -> tuple[int, int, str, str]:
        """Start the replica; its pid, start ticks, this node's Ray id and the replica's address
        (:func:`~openeas.runtime.base.replica_address` of ``address_mode`` on this node)."""
        self.replica_id = launch.replica_id
        host = replica_address(address_mode, ray.util.get_node_ip_address())
        launch = replace(launch, env={**launch.env, ENV_REPLICA_HOST: host})
        self.ref = self.runtime.start(launch)
        return self.ref.pid, self.ref.start_ticks, ray.get_runtime_context().get_node_id(), host

    def info(self) -> tuple[str, int, int]:
        ref = self.ref
        return self.replica_id, ref.pid if ref else 0, ref.start_ticks if ref else 0

    def poll(self) -> tuple[bool, bool, int | None]:
        """(leader alive, any process of its group alive, exit code)."""
        if self.ref is None:
            return False, False, None
        rt, ref = self.runtime, self.ref
        return rt.alive(ref), rt.group_alive(ref), rt.exit_code(ref)

    def signal(self, sig: int) -> None:
        if self.ref is not None:
            self.runtime.signal(self.ref, sig)


_ReplicaActor: Any = ray.remote(max_restarts=0)(ReplicaHost)  # Ray's handles are untyped here


class RayRuntime:
    """Replicas as Ray actors placed by a Ray cluster; see the module docstring."""

    name = "ray"
    # How often a supervisor asks whether a replica lives (a round trip to its actor, in a thread):
    # at the supervisors' 0.1 s it was 10 calls a second per replica, 300 at 30 replicas.
    alive_check_s = RAY_ALIVE_CHECK_S

    def __init__(
        self,
        address: str,
        data_dir: Path,
        *,
        instance_resources: Mapping[str, str] | None = None,
        strategy: str = "SPREAD",
        scope: str | None = None,
        replica_address: str = REPLICA_ADDRESS_MODES[0],
    ) -> None:
        if replica_address not in REPLICA_ADDRESS_MODES:
            modes = ", ".join(REPLICA_ADDRESS_MODES)
            raise ValueError(f"--replica-address: expected one of {modes}, got {replica_address!r}")
        self.address = address
        self.replica_address = replica_address
        self.namespace = namespace(scope if scope is not None else data_dir)
        self.instance_resources = dict(instance_resources or {})
        self.strategy = strategy
        self._codes: dict[str, int | None] = {}  # replica id → last exit code seen
        self._placed: dict[str, Any] = {}  # replica id → its actor, placed and not started yet
        # node id → when (time.monotonic()) a replica's actor there was found gone: a node lost
        # under load stays "alive" to Ray for seconds, and a replica hinted there would wait
        self._lost: dict[str, float] = {}
        self._forgotten: set[str] = set()  # replicas whose actor we killed: not lost with a node
        if not ray.is_initialized():
            try:
                ray.init(address=address, namespace=self.namespace, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                msg = f"--ray-address {address}: cannot reach the Ray cluster: {exc}"
                raise ConnectionError(msg) from exc

    # ---- placement ------------------------------------------------------------------------------
    def nodes(self) -> list[dict[str, Any]]:
        """Ray's live nodes: id, address and total resources."""
        return [
            {"node": n["NodeID"], "address": n["NodeManagerAddress"], "resources": dict(n["Resources"])}
            for n in ray.nodes()
            if n.get("Alive")
        ]

    def place(
        self,
        replica_id: str,
        demand: Demand,
        count: int,
        avoid: set[int],
        siblings: Mapping[str, int] | None = None,
    ) -> NodePorts:
        """Ask Ray for the replica's actor (Ray picks the node, preferring one with the fewest of
        ``siblings``: `spread_target`) and the actor for ``count`` ports free on that node; the
        replica's next :meth:`start` runs in that actor."""
        actor = self._new_actor(replica_id, demand, siblings or {})
        try:
            host, ports = ray.get(
                actor.ports.remote(count, avoid, self.replica_address, replica_port_range()),
                timeout=START_TIMEOUT_S,
            )
        except GetTimeoutError:
            ray.kill(actor)
            raise OSError(f"Ray did not place the replica within {START_TIMEOUT_S:g} s") from None
        except RayActorError as exc:
            raise OSError(f"the replica's Ray actor died while being placed: {exc}") from None
        except Exception as exc:  # no free port on the node, or no address for it
            ray.kill(actor)
            cause = getattr(exc, "cause", None) or exc
            raise OSError(f"cannot choose the replica's ports on its Ray node: {cause}") from None
        self._placed[replica_id] = actor
        return NodePorts(host, list(ports))

    def _new_actor(self, replica_id: str, demand: Demand, siblings: Mapping[str, int] | None = None) -> Any:
        request = ray_request(demand, self.instance_resources)
        nodes = self.nodes()
        reason = infeasible_reason(request, (n["resources"] for n in nodes))
        if reason is not None:
            raise Unschedulable(reason)
        strategy: Any = self.strategy
        memory = request.get("memory")
        now = time.monotonic()
        suspect = {node for node, at in self._lost.items() if now - at < SUSPECT_NODE_S}
        if self.strategy == "SPREAD" and (siblings or suspect):
            pairs = ((n["node"], n["resources"]) for n in nodes)
            target = spread_target(request, pairs, siblings or {}, suspect)
            if target is not None:  # soft: where that node has no room now, Ray places it elsewhere
                strategy = NodeAffinitySchedulingStrategy(target, soft=True, _spill_on_unavailable=True)
                # Ray ignores the affinity of an actor that asks for no resource (measured: it
                # went where SPREAD would have): a MiB of memory makes it one Ray places.
                if not any(request.values()):
                    memory = HINTED_MIN_MEMORY
        name = actor_name(replica_id)
        self._placed.pop(replica_id, None)
        self._forgotten.discard(replica_id)  # started again: its actor may be lost with a node
        self._kill_named(name)  # a leftover of an earlier start of this replica
        custom = {k: v for k, v in request.items() if k not in ("CPU", "GPU", "memory")}
        return _ReplicaActor.options(
            name=name,
            namespace=self.namespace,
            lifetime="detached",  # outlives the control plane, like a process replica
            num_cpus=request.get("CPU", 0.0),
            num_gpus=request.get("GPU", 0.0),
            memory=memory,
            resources=custom or None,
            scheduling_strategy=strategy,
        ).remote()

    def start(self, launch: LaunchSpec) -> ProcessRef:
        """Start the replica in the actor :meth:`place` made for it (its ports were chosen on
        that node); without one, in a new actor (the launch's ports were then chosen elsewhere)."""
        actor = self._placed.pop(launch.replica_id, None) or self._new_actor(launch.replica_id, launch.demand)
        try:
            started = actor.launch.remote(launch, self.replica_address)
            pid, ticks, node, host = ray.get(started, timeout=START_TIMEOUT_S)
        except GetTimeoutError:
            ray.kill(actor)
            raise OSError(f"Ray did not place and start the replica within {START_TIMEOUT_S:g} s") from None
        except RayActorError as exc:
            raise OSError(f"the replica's Ray actor died while starting: {exc}") from None
        except Exception as exc:  # the launch itself raised on the node (OSError, ValueError)
            ray.kill(actor)
            cause = getattr(exc, "cause", None) or exc
            raise OSError(f"cannot start the replica on its Ray node: {cause}") from None
        self._codes.pop(launch.replica_id, None)
        extra = {"replica": launch.replica_id, "node": node, "host": host}
        return ProcessRef(pid=pid, start_ticks=ticks, extra=extra)

    # ---- by actor name --------------------------------------------------------------------------
    def _actor(self, ref: ProcessRef) -> Any | None:
        rid = ref.extra.get("replica")
        if not rid:
            return None
        try:
            return ray.get_actor(actor_name(rid), namespace=self.namespace)
        except ValueError:
            return None

    def _poll(self, ref: ProcessRef) -> tuple[bool, bool]:
        actor = self._actor(ref)
        if actor is None:
            self._lost_on(ref)
            return False, False
        try:
            alive, group, code = ray.get(actor.poll.remote(), timeout=CALL_TIMEOUT_S)
        except RayActorError:
            self._lost_on(ref)
            return False, False  # the actor died (its node was lost): so did the replica
        except GetTimeoutError:
            return True, True  # no answer yet is not an exit
        if code is not None:
            self._codes[ref.extra["replica"]] = code
        return alive, group

    def _lost_on(self, ref: ProcessRef) -> None:
        """The replica's actor is gone: its node is not hinted for a while (`SUSPECT_NODE_S`)."""
        node = ref.extra.get("node")
        if node and ref.extra.get("replica") not in self._forgotten:
            self._lost[str(node)] = time.monotonic()

    def adopt(self, ref: ProcessRef) -> bool:
        actor = self._actor(ref)
        if actor is None:
            return False
        try:
            _rid, pid, ticks = ray.get(actor.info.remote(), timeout=CALL_TIMEOUT_S)
        except (RayActorError, GetTimeoutError):
            return False
        return (pid, ticks) == (ref.pid, ref.start_ticks) and self.alive(ref)

    def alive(self, ref: ProcessRef) -> bool:
        return self._poll(ref)[0]

    def group_alive(self, ref: ProcessRef) -> bool:
        return self._poll(ref)[1]

    def exit_code(self, ref: ProcessRef) -> int | None:
        return self._codes.get(ref.extra.get("replica", ""))

    def signal(self, ref: ProcessRef, sig: int) -> None:
        actor = self._actor(ref)
        if actor is None:
            return
        try:
            ray.get(actor.signal.remote(sig), timeout=CALL_TIMEOUT_S)
        except (RayActorError, GetTimeoutError):
            pass
        if sig == signals.SIGKILL:  # nothing is left to stop gracefully: the actor goes too
            ray.kill(actor)

    def forget(self, ref: ProcessRef) -> None:
        """The replica is gone for good: its actor goes, and with it its claim on the node."""
        rid = ref.extra.get("replica", "")
        self._codes.pop(rid, None)
        self._placed.pop(rid, None)
        if rid:
            if len(self._forgotten) >= MAX_FORGOTTEN:  # ids of replicas long gone: bounded memory
                self._forgotten.clear()
            self._forgotten.add(rid)
            self._kill_named(actor_name(rid))

    def _kill_named(self, name: str) -> None:
        try:
            ray.kill(ray.get_actor(name, namespace=self.namespace))
        except ValueError:
            pass

    def replica_processes(self, data_dir: Path) -> list[ReplicaProcess]:
        """Every replica actor of this runtime's namespace that answers (the orphan scan)."""
        out: list[ReplicaProcess] = []
        for entry in list_named_actors(all_namespaces=True):
            if entry["namespace"] != self.namespace or not entry["name"].startswith(ACTOR_PREFIX):
                continue
            try:
                actor = ray.get_actor(entry["name"], namespace=entry["namespace"])
                info: Any = ray.get(actor.info.remote(), timeout=CALL_TIMEOUT_S)
            except (ValueError, RayActorError, GetTimeoutError):
                continue
            rid, pid = info[0] or entry["name"].removeprefix(ACTOR_PREFIX), info[1]
            out.append(ReplicaProcess(pid=pid, replica_id=rid, pgid=pid, handle=entry["name"]))
        return out

    def kill(self, proc: ReplicaProcess) -> bool:
        try:
            ray.kill(ray.get_actor(proc.handle, namespace=self.namespace))
        except ValueError:
            return False
        return True

    def node_of(self, ref: ProcessRef) -> str | None:
        return ref.extra.get("node")

    def close(self) -> None:
        """Disconnect from the cluster; the replicas (detached actors) keep running."""
        if ray.is_initialized():
            ray.shutdown()


__all__ = [
    "ACTOR_PREFIX",
    "ENV_REPLICA_HOST",
    "RayRuntime",
    "ReplicaHost",
    "actor_name",
    "infeasible_reason",
    "namespace",
    "ray_request",
]
