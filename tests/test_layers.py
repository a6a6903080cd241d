"""The import contract (docs/architecture.md, "Layers"): the import graph of ``src/openeas``,
built with ``ast`` (lazy imports inside functions and ``if TYPE_CHECKING:`` imports included),
has no edge from a lower layer to a higher one, no module-level cycle, and nothing outside
``store/`` touches ``store.engine``. A failure names the file and line of each bad import."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# Lowest first; a module may import its own package and any package of a lower layer, nothing
# else. Top-level modules count as packages of their own name ("openeas" is the package's root).
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(layer.split())
    for layer in (
        "kernel",
        "openeas errors tokens procfs unixdgram linear_regex userfile lifecycle",
        "sdk evalset",
        "spec",
        "store",
        "runtime",
        "storage queue telemetry",
        "gateway",
        "controller autoscaler batch stress cost",
        "api gateway_keeper gateway_fleet control_lease",
        "console",
        "server localcluster balancer",
        "cli processor testserver",
    )
)
# Edges the layer order allows but the architecture does not: the gateway imports neither the
# store nor the controller (it reads the store's database through its one read-only routing
# source, gateway/routing/source.py, with sqlite3).
FORBIDDEN: frozenset[tuple[str, str]] = frozenset({("gateway", "store"), ("gateway", "controller")})
# Module edges that break the contract and are known (none left: compose removed the CLI's).
KNOWN: frozenset[tuple[str, str]] = frozenset()

# Packages whose modules still import each other in a cycle (TYPE_CHECKING imports of the
# connection): known, not yet removed; a cycle across packages, or
# inside any other package, fails. gateway: restructured by issue 21 §3.
CYCLIC_PACKAGES: frozenset[str] = frozenset({"gateway"})


@dataclass(frozen=True)
class Edge:
    src: str  # importing module, dotted
    dst: str  # imported module, dotted (the deepest module of ours the import names)
    where: str  # file:line


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _resolve(name: str, known: set[str]) -> str:
    """The deepest module of ours that ``name`` (a module or a name in one) is."""
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def import_graph(root: Path, top: str = "openeas") -> list[Edge]:
    """Every import between two modules under ``root/top``, wherever it sits in the file."""
    files = {module_name(p, root): p for p in sorted((root / top).rglob("*.py"))}
    known = set(files)
    edges = []
    for mod, path in files.items():
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base_mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    base_mod = node.module or ""
                names = [f"{base_mod}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                if name != top and not name.startswith(top + "."):
                    continue
                dst = _resolve(name, known)
                if dst != mod:
                    edges.append(Edge(mod, dst, f"{path.relative_to(root)}:{node.lineno}"))
    return edges


def layer_violations(edges: Iterable[Edge], layers: tuple[frozenset[str], ...]) -> list[str]:
    rank = {pkg: i for i, layer in enumerate(layers) for pkg in layer}
    out = []
    for e in edges:
        a, b = package_of(e.src), package_of(e.dst)
        if a == b or (e.src, e.dst) in KNOWN:
            continue
        if a not in rank or b not in rank:
            out.append(f"{e.where}: {e.src} → {e.dst}: package {a if a not in rank else b} has no layer")
        elif (a, b) in FORBIDDEN:
            out.append(f"{e.where}: {e.src} → {e.dst}: {a} must not import {b}")
        elif rank[b] >= rank[a]:
            out.append(f"{e.where}: {e.src} → {e.dst}: {a} (layer {rank[a]}) imports {b} (layer {rank[b]})")
    return out


def cycles(edges: Iterable[Edge]) -> list[list[str]]:
    """The module-level cycles (strongly connected components of more than one module)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if (e.src, e.dst) not in KNOWN:
            graph.setdefault(e.src, set()).add(e.dst)
            graph.setdefault(e.dst, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph is a few hundred modules deep at most
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def engine_touches(root: Path, top: str = "openeas") -> list[str]:
    """``<something>.store.engine`` or ``store.engine`` outside ``store/``."""
    out = []
    for path in sorted((root / top).rglob("*.py")):
        if path.parent.name == "store":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "engine":
                v = node.value
                name = v.id if isinstance(v, ast.Name) else v.attr if isinstance(v, ast.Attribute) else ""
                if name == "store":
                    out.append(f"{path.relative_to(root)}:{node.lineno}: store.engine outside store/")
    return out


def _cycle_report(edges: list[Edge], comps: list[list[str]]) -> list[str]:
    lines = []
    for comp in comps:
        members = set(comp)
        lines.append("cycle: " + ", ".join(comp))
        lines += [f"  {e.where}: {e.src} → {e.dst}" for e in edges if e.src in members and e.dst in members]
    return lines


def test_the_import_graph_follows_the_layers() -> None:
    edges = import_graph(SRC)
    assert len(edges) > 300  # the walk found the code (the package has ~900 imports of its own)
    problems = layer_violations(edges, LAYERS) + engine_touches(SRC)
    assert not problems, "\n".join(problems)


def forbidden_cycles(edges: list[Edge]) -> list[list[str]]:
    """Cycles that span packages, or sit inside a package not in CYCLIC_PACKAGES (a package's
    subpackages count as the package: ``openeas.gateway.http.proxy`` is in ``gateway``)."""
    return [
        c
        for c in cycles(edges)
        if len({package_of(m) for m in c}) > 1 or package_of(c[0]) not in CYCLIC_PACKAGES
    ]


def test_the_import_graph_has_no_cycle() -> None:
    edges = import_graph(SRC)
    comps = forbidden_cycles(edges)
    assert not comps, "\n".join(_cycle_report(edges, comps))


@pytest.mark.parametrize(
    ("module", "package"),
    [
        pytest.param("openeas.gateway.http.proxy", "gateway", id="gateway-subpackage"),
        pytest.param("openeas.gateway.server", "gateway", id="gateway-module"),
        pytest.param("openeas.gateway", "gateway", id="gateway-root"),
        pytest.param("openeas.server", "server", id="top-level-module"),
        pytest.param("openeas", "openeas", id="package-root"),
    ],
)
def test_a_module_belongs_to_its_top_package(module: str, package: str) -> None:
    assert package_of(module) == package


def _write(root: Path, files: Mapping[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param(
            {"openeas/store/db.py": "def f():\n    from openeas.gateway.routing import table\n"},
            "openeas/store/db.py:2: openeas.store.db → openeas.gateway.routing.table: store (layer 4) imports gateway (layer 7)",
            id="lazy-import-upward",
        ),
        pytest.param(
            {
                "openeas/kernel/states.py": (
                    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from openeas.spec import x\n"
                )
            },
            "openeas/kernel/states.py:3: openeas.kernel.states → openeas.spec: kernel (layer 0) imports spec (layer 3)",
            id="type-checking-import-upward",
        ),
        pytest.param(
            {"openeas/gateway/routing/source.py": "from openeas.store.db import Store\n"},
            "openeas/gateway/routing/source.py:1: openeas.gateway.routing.source → openeas.store.db: gateway must not import store",
            id="gateway-imports-store",
        ),
        pytest.param(
            {"openeas/runtime/fake.py": "from ..controller import probe\n"},
            "openeas/runtime/fake.py:1: openeas.runtime.fake → openeas.controller: runtime (layer 5) imports controller (layer 8)",
            id="relative-import-upward",
        ),
        pytest.param(
            {"openeas/queue/scale.py": "def f(store):\n    return store.engine\n"},
            "openeas/queue/scale.py:2: store.engine outside store/",
            id="store-engine-outside-store",
        ),
        pytest.param(
            {"openeas/newthing.py": "import openeas.kernel.clock\n"},
            "openeas/newthing.py:1: openeas.newthing → openeas.kernel.clock: package newthing has no layer",
            id="package-without-layer",
        ),
    ],
)
def test_a_planted_violation_fails(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    base = {"openeas/__init__.py": "", "openeas/controller/__init__.py": "", "openeas/gateway/routing/table.py": ""}
    base |= {"openeas/spec/__init__.py": "", "openeas/store/db.py": "", "openeas/kernel/clock.py": ""}
    _write(tmp_path, base | files)
    problems = layer_violations(import_graph(tmp_path), LAYERS) + engine_touches(tmp_path)
    assert problems == [expected]


def test_a_planted_cycle_fails(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "openeas/__init__.py": "",
            "openeas/cli/main.py": "import openeas.cli.render\n",
            "openeas/cli/render.py": "def f():\n    from openeas.cli import main\n",
        },
    )
    edges = import_graph(tmp_path)
    assert cycles(edges) == [["openeas.cli.main", "openeas.cli.render"]]
    assert "  openeas/cli/render.py:2: openeas.cli.render → openeas.cli.main" in _cycle_report(
        edges, cycles(edges)
    )


@pytest.mark.parametrize(
    ("a", "b", "allowed"),
    [
        pytest.param("gateway/http/proxy", "gateway/groups/split", True, id="across-gateway-subpackages"),
        pytest.param("gateway/http/proxy", "gateway/server", True, id="gateway-subpackage-and-root"),
        pytest.param("cli/sub/a", "cli/b", False, id="inside-another-package"),
        pytest.param("gateway/http/proxy", "store/db", False, id="across-packages"),
    ],
)
def test_only_the_gateway_may_hold_a_cycle(tmp_path: Path, a: str, b: str, allowed: bool) -> None:
    dotted = {m: "openeas." + m.replace("/", ".") for m in (a, b)}
    _write(
        tmp_path,
        {
            "openeas/__init__.py": "",
            f"openeas/{a}.py": f"import {dotted[b]}\n",
            f"openeas/{b}.py": f"def f():\n    import {dotted[a]}\n",
        },
    )
    edges = import_graph(tmp_path)
    assert cycles(edges) == [sorted(dotted.values())]
    assert forbidden_cycles(edges) == ([] if allowed else [sorted(dotted.values())])
