"""Bake (issue 23; docs/cold-start.md, "Baked images"): the field guide's first mitigation, weights
baked into the image, automated.

``Baker.bake`` copies the current version's object-storage mounts into the node cache (a hit
when they were pre-fetched), builds an image with the container engine (``podman build`` or
``docker build``; local, no registry) that layers each mount's content at its ``mount_path`` onto
the spec's image (or ``base_image``), and, unless asked not to, rolls out a new version whose
spec uses that image and no longer mounts what was baked (event ``Baked``). A replica of it pulls
nothing (the image is on the node) and fetches nothing: its cold start is the image's start.

The build context holds hard links to the cache's files (a copy where the cache is on another
filesystem), so baking a model costs the engine's own copy into its storage, not two.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openeas.controller.prefetch import Prefetcher
from openeas.errors import Conflict, SpecError
from openeas.runtime.engine import Engine
from openeas.spec import ServiceSpec
from openeas.store import Store

BAKED_REPOSITORY = "localhost/openeas-baked"  # baked images are named <this>/<service>:v<version>-<digest>
BUILD_TIMEOUT_S = 1800.0  # a build may copy gigabytes, seconds


@dataclass(frozen=True)
class Layer:
    """One object-storage mount baked into the image."""

    index: int  # its position in the spec's ``storage``
    source: Path  # the node cache's entry holding its content
    mount_path: str  # where replicas saw it mounted; where the image holds it now
    bytes: int  # its size


def containerfile(base: str, layers: Sequence[Layer]) -> str:
    """``FROM base`` and one ``COPY`` per layer (build-context folder ``l<n>``, JSON form)."""
    lines = [f"FROM {base}"]
    for n, layer in enumerate(layers):
        lines.append(f"COPY {json.dumps([f'l{n}/', layer.mount_path.rstrip('/') + '/'])}")
    return "\n".join(lines) + "\n"


def image_name(service: str, version: int, base: str, layers: Sequence[Layer]) -> str:
    """The baked image's name: the service, the version baked and a digest of what went in."""
    digest = hashlib.sha256(containerfile(base, layers).encode())
    for layer in layers:
        digest.update(str(layer.source).encode())
    return f"{BAKED_REPOSITORY}/{service.lower()}:v{version}-{digest.hexdigest()[:12]}"


def baked_spec(spec: ServiceSpec, image: str, layers: Sequence[Layer]) -> ServiceSpec:
    """``spec`` with its main container on ``image`` and the baked mounts left out."""
    baked = {layer.index for layer in layers}
    main = spec.containers[0].model_copy(update={"image": image})
    storage = [m for i, m in enumerate(spec.storage) if i not in baked]
    return spec.model_copy(update={"containers": [main, *spec.containers[1:]], "storage": storage})


def _link_tree(src: Path, dst: Path) -> None:
    """``dst`` mirrors ``src``: hard links to its files, a copy where linking is refused."""
    for root, dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for d in dirs:
            (dst / rel / d).mkdir(exist_ok=True)
        for f in files:
            try:
                os.link(Path(root) / f, dst / rel / f)
            except OSError:
                shutil.copy2(Path(root) / f, dst / rel / f)


def build_image(engine: Engine, base: str, layers: Sequence[Layer], tag: str) -> float:
    """Build ``tag`` (see :func:`containerfile`); the seconds it took. RuntimeError with the
    engine's own words when the build fails."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="openeas-bake-", dir=_context_dir(layers)) as tmp:
        ctx = Path(tmp)
        for n, layer in enumerate(layers):
            _link_tree(layer.source, ctx / f"l{n}")
        (ctx / "Containerfile").write_text(containerfile(base, layers))
        res = subprocess.run(
            [engine.binary, "build", "-t", tag, "-f", str(ctx / "Containerfile"), str(ctx)],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            env={**os.environ, **engine.env},
            stdin=subprocess.DEVNULL,
        )
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{engine.name} build of {tag} failed: " + " | ".join(tail))
    return time.monotonic() - t0


def _context_dir(layers: Sequence[Layer]) -> Path | None:
    """Where the build context goes: beside the cache (hard links work there), else /tmp."""
    return layers[0].source.parent if layers else None


class Baker:
    """``openeas bake``: see the module docstring."""

    def __init__(
        self, store: Store, prefetcher: Prefetcher, engine: Engine | None, engine_problem: str | None
    ) -> None:
        self.store = store
        self.prefetcher = prefetcher
        self.engine = engine
        self.engine_problem = engine_problem or "no container engine"

    def bake(self, name: str, *, base_image: str | None = None, rollout: bool = True) -> dict[str, Any]:
        """Build the baked image of ``name``'s current version, and roll it out unless
        ``rollout`` is False. What was baked, the image, its build seconds and the new version."""
        if self.engine is None:
            raise Conflict(f"bake needs a container engine on this server: {self.engine_problem}")
        svc = self.store.get_service(name)
        spec = self.store.version_spec(name, svc.current_version)
        base = base_image or spec.main.image
        if not base:
            why = "bake layers the weights onto an image, and this spec has none"
            raise SpecError([f"containers[0].image: {why} (give one: openeas bake --base-image IMAGE)"])
        fetched = self.prefetcher.materialize(name, spec)
        if not fetched:
            raise SpecError(["storage: nothing to bake (no oss mount in the current version)"])
        layers = [Layer(i, got.path, spec.storage[i].mount_path, _size(got.path)) for i, got in fetched]
        tag = image_name(name, svc.current_version, base, layers)
        seconds = build_image(self.engine, base, layers, tag)
        baked = [
            {"storage": f"storage[{x.index}]", "mount_path": x.mount_path, "bytes": x.bytes} for x in layers
        ]
        total = sum(x.bytes for x in layers)
        message = f"version {svc.current_version} baked into {tag} ({total} bytes, {seconds:.1f} s)"
        version = None
        if rollout:
            row = self.store.add_version(baked_spec(spec, tag, layers), reason="Baked", scale=False)
            version = row.current_version
            message += f"; version {version} uses it"
        self.store.record_event(name, "Baked", message)
        return {
            "name": name,
            "image": tag,
            "base_image": base,
            "from_version": svc.current_version,
            "version": version,
            "baked": baked,
            "bytes": total,
            "build_s": round(seconds, 3),
        }


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
