"""The service spec: the PAI-EAS service JSON, accepted unchanged, plus OpenEAS extensions.

Field names follow EAS (snake_case in `metadata`/`containers`, camelCase inside `autoscaler`).
Unknown fields are kept (``extra="allow"``), nested ones and nulls included, and ``to_dict``
gives back only what the user wrote (no defaults added), so an EAS spec round-trips without
edits; every field OpenEAS acts on is typed and validated here, with its unit in the name or
the docstring.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from openeas.spec.autoscaling import Autoscaler, Autoscaling, AutoscalingPolicy, CronScaler, normalise
from openeas.spec.base import NAME_RE, STORED, Number, SpecModel, is_stored
from openeas.spec.container import (
    ENV_NAME_RE,
    IMAGE_RE,
    MAX_ARG_STRLEN_BYTES,
    MAX_ENV_TOTAL_BYTES,
    Container,
    EnvVar,
    ExecAction,
    HealthCheck,
    HttpGet,
    Prepare,
)
from openeas.spec.eas import Layout, SpellingConflict, normalize, restore
from openeas.spec.metadata import MAX_REPLICAS, EasSection, Metadata, RollingStrategy, RpcConfig, RuntimeName
from openeas.spec.processor import (
    PYTHON_PROCESSOR_FIELDS,
    is_python_processor,
    processor_problem,
    synthesize_python_processor,
)
from openeas.spec.queue import QueueConfig
from openeas.spec.secrets import masked
from openeas.spec.storage import (
    STORAGE_KINDS,
    UNSERVABLE_STORAGE,
    CacheSource,
    EmptyDir,
    GitSource,
    OssSource,
    StorageMount,
    quantity_bytes,
)

__all__ = [  # the names callers import from here; each model lives in its block's module
    "ENV_NAME_RE",
    "IMAGE_RE",
    "MAX_ARG_STRLEN_BYTES",
    "MAX_ENV_TOTAL_BYTES",
    "MAX_REPLICAS",
    "NAME_RE",
    "STORAGE_KINDS",
    "STORED",
    "UNSERVABLE_STORAGE",
    "CacheSource",
    "Cloud",
    "Computing",
    "Container",
    "EasSection",
    "EmptyDir",
    "EnvVar",
    "ExecAction",
    "GitSource",
    "HealthCheck",
    "HttpGet",
    "Metadata",
    "Number",
    "OssSource",
    "Prepare",
    "RollingStrategy",
    "RpcConfig",
    "RuntimeName",
    "ServiceSpec",
    "StorageMount",
    "docker_credentials",
    "processor_unavailable",
    "quantity_bytes",
]


def processor_unavailable(processor: str) -> str:
    """The one message for an EAS built-in processor (pmml, tensorflow_cpu_*, easyrec, triton…)."""
    return (
        f"processor {processor!r} is not available: OpenEAS runs model servers, not EAS's built-in "
        "processors; deploy a container that serves the model instead, for example "
        '{"containers": [{"image": "<a server image>", "command": "<its serve command> --port 8000", '
        '"port": 8000}], "storage": [{"mount_path": "/mnt/data", "oss": {"path": "<model_path>"}}]}'
    )


def docker_credentials(auth: str) -> tuple[str, str] | None:
    """(user, password) from EAS's ``dockerAuth`` (base64 of "user:password"); None if malformed."""
    try:
        text = base64.b64decode(auth.strip(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    user, sep, password = text.partition(":")
    return (user, password) if sep and user else None


class Computing(SpecModel):
    instance_type: str | None = None
    instances: list[dict[str, Any]] | None = None


class Cloud(SpecModel):
    computing: Computing = Field(default_factory=Computing)


class ServiceSpec(SpecModel):
    _layout: Layout = PrivateAttr(default_factory=list)  # how the user spelled it (openeas.spec.eas)
    # False: containers as written. Else a Python processor's synthesized container and mounts
    # (openeas.spec.processor): how many storage entries the user wrote (None: no storage key).
    _processor_storage: int | Literal[False] | None = PrivateAttr(default=False)

    metadata: Metadata
    containers: list[Container] = Field(min_length=1)
    storage: list[StorageMount] = Field(default_factory=list)
    cloud: Cloud = Field(default_factory=Cloud)
    warm_up_data_path: str | None = Field(
        default=None, description="JSON/JSONL file of warmup requests, sent before a replica is Ready"
    )
    token: str | None = Field(default=None, min_length=8)

    dockerAuth: str | None = Field(
        default=None,
        description=(
            "EAS: base64 of 'user:password' for pulling `image` from a private registry; used for "
            "that pull only, never logged or returned by the API"
        ),
    )

    autoscaler: Autoscaler | None = None
    # OpenEAS: the field guide's autoscaling block, and EAS's cron-scaler body (spec/autoscaling.py)
    autoscaling: Autoscaling | None = None
    cronScaler: CronScaler | None = None
    queue: QueueConfig | None = Field(default=None, description="EAS: the queue of an async service")
    # EAS's own `runtime` block ({"enable_crash_block": ...}) is kept as written. A plain string
    # is the selector of earlier OpenEAS releases, now `metadata.replica_runtime`.
    runtime: dict[str, Any] | RuntimeName | None = Field(
        default=None,
        description="EAS's runtime block (kept); a string is the older spelling of metadata.replica_runtime",
    )

    @field_validator("runtime", mode="before")
    @classmethod
    def _runtime_form(cls, v: Any) -> Any:
        if v is None or isinstance(v, dict) or v in ("auto", "process", "container"):
            return v
        raise ValueError(
            f'{v!r}: EAS\'s runtime block is an object ({{"enable_crash_block": ...}}); as a string it is '
            "the older spelling of metadata.replica_runtime: 'auto', 'process' or 'container'"
        )

    @field_validator("dockerAuth")
    @classmethod
    def _docker_auth(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and not is_stored(info) and docker_credentials(v) is None:
            raise ValueError("must be the base64 encoding of 'user:password' (the value is not shown)")
        return v

    @model_validator(mode="wrap")
    @classmethod
    def _eas_spellings(cls, data: Any, handler: Any) -> Any:
        """EAS's spellings (top-level name, dotted keys, null lists) → one shape; remembered."""
        if not isinstance(data, dict):
            return handler(data)
        if data.get("processor") and not data.get("containers"):
            raise ValueError(processor_unavailable(str(data["processor"])))
        if not data.get("containers") and (problem := processor_problem(data)):
            raise ValueError(problem)
        try:
            doc, layout = normalize(data)
        except SpellingConflict as exc:
            raise ValueError(str(exc)) from None
        synthesized: int | Literal[False] | None = False
        if is_python_processor(doc):  # openeas.spec.processor: its container, its mounts
            synthesized = synthesize_python_processor(doc)
        spec = handler(doc)
        spec._layout = layout
        spec._processor_storage = synthesized
        return spec

    @model_serializer(mode="wrap")
    def _as_written(self, handler: SerializerFunctionWrapHandler) -> Any:
        out = handler(self)
        if self._processor_storage is not False and isinstance(out, dict):
            # A Python processor's container and mounts were added for it: not written by the user.
            out.pop("containers", None)
            if self._processor_storage is None:
                out.pop("storage", None)
            elif isinstance(out.get("storage"), list):
                out["storage"] = out["storage"][: self._processor_storage]
        if self._layout and isinstance(out, dict):
            out = restore(out, self._layout)
        return out

    @property
    def python_processor(self) -> bool:
        """The spec deploys a custom Python processor (its container was synthesized)."""
        return self._processor_storage is not False

    @model_validator(mode="after")
    def _runtime_spellings(self) -> ServiceSpec:
        legacy = self.runtime if isinstance(self.runtime, str) else None
        chosen = self.metadata.replica_runtime
        if legacy is not None and chosen != "auto" and legacy != chosen:
            raise ValueError(
                f"runtime ({legacy!r}) and metadata.replica_runtime ({chosen!r}) disagree: "
                "write only metadata.replica_runtime"
            )
        return self

    @property
    def replica_runtime(self) -> RuntimeName:
        """The runtime the spec asks for: metadata.replica_runtime, else the older top-level string."""
        chosen = self.metadata.replica_runtime
        if chosen == "auto" and isinstance(self.runtime, str):
            return self.runtime
        return chosen

    def unused_fields(self) -> list[str]:
        """Paths of the fields this spec sets that OpenEAS accepts and keeps but does not act on
        (cloud-only settings such as ``cloud.networking``, ``metadata.qos``, ``features``), in the
        user's spelling where it differs only by a dotted key."""
        out: list[str] = []
        _extras(self, "", out)
        if self.python_processor:
            out = [p for p in out if p not in PYTHON_PROCESSOR_FIELDS]
        return sorted(out)

    def public_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with secrets (env values, dockerAuth) masked as ``***``: what the API shows."""
        return masked(self.to_dict())

    @field_validator("warm_up_data_path")
    @classmethod
    def _warmup_path(cls, v: str | None, info: ValidationInfo) -> str | None:
        # "" is how EAS's own examples write "no warmup file" (the JSON deployment appendix).
        if v and not is_stored(info) and any(ord(c) < 0x20 or c == "\x7f" for c in v):
            raise ValueError("must be a path without control characters (newline, NUL, ...)")
        return v

    @model_validator(mode="after")
    def _one_autoscaling_block(self) -> ServiceSpec:
        if self.autoscaler is not None and self.autoscaling is not None:
            raise ValueError("autoscaling: give either 'autoscaler' (EAS) or 'autoscaling', not both")
        return self

    def autoscaling_policy(self) -> AutoscalingPolicy | None:
        """The autoscaling policy of this spec, whichever block wrote it (None: no autoscaling)."""
        return normalise(self.autoscaler, self.autoscaling, self.cronScaler, self.metadata.instance)

    @model_validator(mode="after")
    def _mounts(self) -> ServiceSpec:
        # The same mount_path twice is allowed (the last entry wins: shadowed_mounts); one mount
        # inside another is not.
        paths = [m.mount_path.rstrip("/") or "/" for m in self.storage]
        for i, p in enumerate(paths):
            for j, q in enumerate(paths):
                if i != j and p != q and p.startswith(q.rstrip("/") + "/"):
                    raise ValueError(f"storage[{i}].mount_path is inside storage[{j}].mount_path")
        return self

    def shadowed_mounts(self) -> dict[int, int]:
        """Storage entries that share a mount_path with a later one: index → the index mounted
        there instead. As in a container, where a later mount at a path covers an earlier one,
        the last entry written for a path is the one mounted (EAS's SD WebUI example writes an
        oss and an nfs entry at one path); the others are not fetched or mounted."""
        last: dict[str, int] = {}
        for i, m in enumerate(self.storage):
            last[m.mount_path.rstrip("/") or "/"] = i
        return {
            i: last[m.mount_path.rstrip("/") or "/"]
            for i, m in enumerate(self.storage)
            if last[m.mount_path.rstrip("/") or "/"] != i
        }

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def is_async(self) -> bool:
        """An async service (EAS ``metadata.type: Async``): a queue in front of its replicas."""
        return (self.metadata.type or "").lower() == "async"

    @property
    def main(self) -> Container:
        """The container that serves traffic (EAS: the first one)."""
        return self.containers[0]

    def to_dict(self) -> dict[str, Any]:
        """The spec as the user wrote it: every field they set (unknown ones, nested ones and
        nulls included), no defaults added; known fields carry their validated values."""
        return self.model_dump(mode="json", exclude_unset=True, by_alias=True)


def _extras(value: Any, path: str, out: list[str]) -> None:
    """Collect the paths of fields no model declares (pydantic's extras), recursively."""
    if isinstance(value, BaseModel):
        for key in value.__pydantic_extra__ or {}:
            out.append(f"{path}.{key}" if path else key)
        for name in type(value).model_fields:
            if name in value.model_fields_set:
                _extras(getattr(value, name), f"{path}.{name}" if path else name, out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _extras(item, f"{path}[{i}]", out)
