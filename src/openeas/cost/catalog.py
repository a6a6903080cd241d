"""The instance catalog: what a replica of each instance type costs, and which type a spec runs on.

A catalog is one YAML file (the shipped ``catalog.yaml`` beside this module, or the user's own,
``openeas server --catalog FILE``): one currency, a per-request fee, a storage read price per GB
and a list of instance types (cpu cores, memory GiB, gpu kind and count, on-demand price per hour
per replica, spot discount). :func:`map_spec` turns a spec into a :class:`Pricing` that says how
it was mapped (or why it could not be), in words ``describe`` and ``cost estimate`` print.

The mapping, in order (the first that applies wins):

1. ``cloud.computing.instance_type``: that type, by name;
2. ``cloud.computing.instances[]``: the first listed type the catalog knows (EAS lists them in
   order of preference), at its spot price when the entry is spot (``spot: true`` or a
   ``spot_price_limit``);
3. ``metadata.cpu`` / ``memory`` (MB) / ``gpu`` (count): the cheapest type that fits all three.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from openeas.errors import SpecError
from openeas.spec.load import format_errors
from openeas.spec.models import ServiceSpec

SHIPPED_CATALOG = Path(__file__).with_name("catalog.yaml")
MB_PER_GB = 1024  # metadata.memory is MB; a catalog's memory_gb is GiB


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Gpu(_Model):
    kind: str = Field(min_length=1, description="the GPU model, e.g. A10")
    count: int = Field(ge=1, description="GPUs per instance")


class InstanceType(_Model):
    name: str = Field(min_length=1)
    cpu: float = Field(gt=0, description="cores")
    memory_gb: float = Field(gt=0, description="GiB")
    gpu: Gpu | None = None
    price_per_hour: float = Field(ge=0, description="on-demand price per replica-hour, in the currency")
    spot_discount: float = Field(
        default=0.0, ge=0, lt=1, description="fraction off the hourly price as spot (0.7: pay 30%)"
    )

    @property
    def gpus(self) -> int:
        return self.gpu.count if self.gpu else 0

    def hourly(self, spot: bool) -> float:
        return self.price_per_hour * (1 - self.spot_discount) if spot else self.price_per_hour

    def summary(self) -> str:
        gpu = f", {self.gpu.count} x {self.gpu.kind}" if self.gpu else ""
        return f"{self.name} ({_num(self.cpu)} cores, {_num(self.memory_gb)} GiB{gpu})"


class Catalog(_Model):
    currency: str = Field(min_length=1, description="the one currency of every price in the file")
    per_request_fee: float = Field(default=0.0, ge=0, description="per request through the gateway")
    storage_read_per_gb: float = Field(default=0.0, ge=0, description="per GB read from storage")
    instance_types: list[InstanceType] = Field(min_length=1)
    source: str = Field(default="", description="the file it was read from (set by load_catalog)")

    @model_validator(mode="after")
    def _unique(self) -> Catalog:
        counts = Counter(t.name for t in self.instance_types)
        dup = sorted(name for name, n in counts.items() if n > 1)
        if dup:
            raise ValueError(f"instance_types: {', '.join(dup)} listed more than once")
        return self

    def find(self, name: str) -> InstanceType | None:
        return next((t for t in self.instance_types if t.name == name), None)


def parse_catalog(data: Any, source: str = "") -> Catalog:
    """A catalog from its parsed YAML; SpecError listing every problem, each naming its field."""
    if not isinstance(data, dict):
        raise SpecError([f"catalog {source}: must be a YAML mapping (currency, instance_types, ...)"])
    try:
        return Catalog.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise SpecError([f"catalog {source}: {e}" for e in format_errors(exc)]) from None


def load_catalog(path: Path | str | None = None) -> Catalog:
    """The catalog at ``path`` (None: the shipped one)."""
    p = Path(path) if path is not None else SHIPPED_CATALOG
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError([f"catalog {p}: cannot read it ({exc.strerror or exc})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError([f"catalog {p}: not YAML ({exc})"]) from None
    return parse_catalog(data, str(p))


@dataclass(frozen=True)
class Pricing:
    """How a spec maps to a price: the type and its hourly price, or why there is none."""

    instance: InstanceType | None
    spot: bool
    how: str  # the mapping in words, or why it failed
    currency: str

    @property
    def per_hour(self) -> float | None:
        return None if self.instance is None else self.instance.hourly(self.spot)

    def as_dict(self) -> dict[str, Any]:
        return {
            "instance_type": self.instance.name if self.instance else None,
            "spot": self.spot,
            "price_per_hour": self.per_hour,
            "currency": self.currency,
            "how": self.how,
        }


def _num(v: float) -> str:
    return f"{v:g}"


def _is_spot(entry: dict[str, Any]) -> bool:
    return bool(entry.get("spot")) or entry.get("spot_price_limit") is not None


def _from_instances(instances: list[dict[str, Any]], catalog: Catalog) -> Pricing:
    names = [str(e.get("type") or e.get("instance_type") or "") for e in instances]
    for i, (entry, name) in enumerate(zip(instances, names, strict=True)):
        t = catalog.find(name)
        if t is None:
            continue
        spot = _is_spot(entry)
        skipped = names[:i]
        note = f" ({', '.join(skipped)} not in the catalog)" if skipped else ""
        kind = f"spot, {_num(t.spot_discount * 100)}% off" if spot else "on demand"
        how = f"cloud.computing.instances[{i}]: {t.summary()}, {kind}{note}"
        return Pricing(t, spot, how, catalog.currency)
    listed = ", ".join(n or "(no type)" for n in names) or "nothing"
    why = f"cloud.computing.instances lists {listed}: none is in the catalog {catalog.source}"
    return Pricing(None, False, why, catalog.currency)


def _fits(t: InstanceType, cpu: float, memory_mb: int, gpus: int) -> bool:
    return t.cpu >= cpu and t.memory_gb * MB_PER_GB >= memory_mb and t.gpus >= gpus


def _from_metadata(cpu_: Any, memory_: Any, gpu_: Any, catalog: Catalog) -> Pricing:
    cpu, memory, gpus = float(cpu_ or 0), int(memory_ or 0), int(gpu_ or 0)
    asked = ", ".join(
        part
        for part in (
            f"cpu {_num(cpu)}" if cpu_ else "",
            f"memory {memory} MB" if memory_ else "",
            f"gpu {gpus}" if gpu_ else "",
        )
        if part
    )
    fitting = [t for t in catalog.instance_types if _fits(t, cpu, memory, gpus)]
    if not fitting:
        why = f"metadata asks {asked}: no type in the catalog {catalog.source} has that much"
        return Pricing(None, False, why, catalog.currency)
    best = min(fitting, key=lambda t: (t.price_per_hour, t.name))
    how = f"metadata asks {asked}: the cheapest fitting type is {best.summary()}, on demand"
    return Pricing(best, False, how, catalog.currency)


def map_spec(spec: ServiceSpec, catalog: Catalog) -> Pricing:
    """The instance type and hourly price of one replica of ``spec`` (see the module doc)."""
    c, m = spec.cloud.computing, spec.metadata
    return map_resources(
        {
            "instance_type": c.instance_type,
            "instances": c.instances,
            "cpu": m.cpu,
            "memory": m.memory,
            "gpu": m.gpu,
        },
        catalog,
    )


def map_resources(res: Mapping[str, Any], catalog: Catalog) -> Pricing:
    """:func:`map_spec` of what prices a spec: ``instance_type``, ``instances`` (cloud.computing)
    and ``cpu``, ``memory``, ``gpu`` (metadata); the meter keeps these per replica."""
    instance_type, instances = res.get("instance_type"), res.get("instances")
    if instance_type:
        t = catalog.find(instance_type)
        if t is None:
            why = f"cloud.computing.instance_type {instance_type!r} is not in the catalog {catalog.source}"
            return Pricing(None, False, why, catalog.currency)
        return Pricing(t, False, f"cloud.computing.instance_type: {t.summary()}, on demand", catalog.currency)
    if instances:
        return _from_instances(list(instances), catalog)
    if res.get("cpu") or res.get("memory") or res.get("gpu"):
        return _from_metadata(res.get("cpu"), res.get("memory"), res.get("gpu"), catalog)
    why = (
        "no cloud.computing.instance_type, no cloud.computing.instances, "
        "no metadata.cpu/memory/gpu: nothing to price"
    )
    return Pricing(None, False, why, catalog.currency)
