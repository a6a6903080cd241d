"""A batch job's temporary service: submitted with a spec (and optionally an instance type, such
as a preemptible one), a job gets a service of its own, ``<spec name>_<job id tail>``, created in
the store like any deploy (the reconciler starts its replicas), and deleted when the job ends.
Resuming a job whose service was deleted creates it again from the same spec."""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

from openeas.errors import Conflict, NotFound
from openeas.kernel.states import ServiceState
from openeas.spec import ServiceSpec, parse_spec
from openeas.store import Store
from openeas.store.spec_secrets import unseal

log = logging.getLogger("openeas.batch")


def temporary_spec(doc: dict[str, Any], job_id: str, instance_type: str | None) -> ServiceSpec:
    """The job's service: ``doc`` validated, renamed for the job, on ``instance_type`` if given."""
    base = parse_spec(doc)  # errors name the spec's fields
    out = copy.deepcopy(base.to_dict())
    name = f"{base.name[:40]}_{job_id[-8:]}"
    if "name" in out:
        out["name"] = name
    if isinstance(out.get("metadata"), dict) and ("name" in out["metadata"] or "name" not in out):
        out["metadata"]["name"] = name
    if instance_type:
        cloud = out.setdefault("cloud", {}) or {}
        out["cloud"] = cloud
        computing = cloud.setdefault("computing", {}) or {}
        cloud["computing"] = computing
        computing["instance_type"] = instance_type
    return parse_spec(out)


def ensure_service(store: Store, spec_json: str) -> str:
    """Create the job's service when it is not there (first run, or a resume after its deletion)."""
    spec = parse_spec(unseal(json.loads(spec_json), store.cipher))  # sealed by the API (batch)
    try:
        row = store.get_service(spec.name)
    except NotFound:
        row = None
    if row is not None and row.state != ServiceState.DELETING:
        return spec.name
    try:
        store.create_service(spec)
    except Conflict:
        pass  # being deleted still: the runner tries again on its next look
    return spec.name


def remove_service(store: Store, name: str, why: str) -> None:
    try:
        row = store.get_service(name)
    except NotFound:
        return
    if row.state != ServiceState.DELETING:
        store.update_service(name, state=ServiceState.DELETING, event=("Deleting", f"batch job ended: {why}"))
