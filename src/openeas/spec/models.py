"""The service spec: the PAI-EAS service JSON, accepted unchanged, plus OpenEAS extensions.

Field names follow EAS (snake_case in `metadata`/`containers`, camelCase inside `autoscaler`).
Unknown fields are kept (``extra="allow"``), nested ones and nulls included, and ``to_dict``
gives back only what the user wrote (no defaults added), so an EAS spec round-trips without
edits; every field OpenEAS acts on is typed and validated here, with its unit in the name or
the docstring.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from openeas.kernel.routing import BALANCER_NAMES
from openeas.spec.autoscaling import Autoscaler, Autoscaling, AutoscalingPolicy, CronScaler, normalise
from openeas.spec.eas import Layout, SpellingConflict, normalize, restore
from openeas.spec.numbers import CheckedNumbers
from openeas.spec.paths import mount_path_problem
from openeas.spec.processor import (
    PYTHON_PROCESSOR_FIELDS,
    is_python_processor,
    processor_problem,
    synthesize_python_processor,
)
from openeas.spec.queue import QueueConfig
from openeas.spec.secrets import masked


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


# Whole-string patterns are used with ``fullmatch``: ``$`` would also match before a final "\n".
NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")
# An image reference as engines take it: [host[:port]/]path[:tag][@sha256:hex].
IMAGE_RE = re.compile(
    r"(?:[a-zA-Z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)
# POSIX portable environment variable names.
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Linux refuses to exec with any single argument or environment string ("NAME=value" and its
# terminating NUL) longer than MAX_ARG_STRLEN, 128 KiB: such a replica could never start.
MAX_ARG_STRLEN_BYTES = 128 * 1024
# All of one container's environment together (the kernel's overall limit is larger but shared
# with the command line; 1 MiB leaves room and is far above any real configuration).
MAX_ENV_TOTAL_BYTES = 1024 * 1024

STORED = "stored"
"""Validation context key: the spec was accepted before and is read back from the store. The
checks added later for new specs (whole-name match, environment and command limits, control
characters) are skipped then, so a version stored by an older release still loads."""


def _stored(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get(STORED))


# A number of seconds, cores, ...: an int stays an int (30, not 30.0), so a spec round-trips as written.
Number = int | float


class _Model(CheckedNumbers):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class RpcConfig(_Model):
    keepalive: int | None = Field(
        default=None, ge=1, description="request timeout in milliseconds (EAS unit); 408 when exceeded"
    )
    max_queue_size: int | None = Field(
        default=None,
        ge=1,
        description=(
            "requests each gateway holds for the service while it has no routable replica "
            "(scaling from zero, a replica restarting); more get 429 with Retry-After; default 100"
        ),
    )
    hold_timeout_ms: int | None = Field(
        default=None,
        ge=1,
        le=3_600_000,
        description=(
            "OpenEAS: milliseconds a held request waits for a routable replica before a 503; "
            "default 120000 (covers the slowest cold start tested, vLLM on a CPU)"
        ),
    )
    rate_limit: int | None = Field(
        default=None, ge=0, description="requests per second per service; 0 (EAS's default) = no limit"
    )
    max_body_bytes: int | None = Field(
        default=None, ge=1, description="OpenEAS: largest request body in bytes (413 above); default 64 MiB"
    )
    resend_unanswered: bool = Field(
        default=True,
        description=(
            "OpenEAS: when a replica closes the connection after the request was sent and before "
            "any byte of answer, resend the request to another replica; set false for services "
            "whose POSTs are not safe to repeat"
        ),
    )


class RollingStrategy(_Model):
    max_surge: int = Field(default=1, ge=0, description="replicas above desired during an update")
    max_unavailable: int = Field(default=0, ge=0, description="replicas below desired during an update")


class EasSection(_Model):
    termination_grace_period: Number = Field(
        default=30.0, ge=0, description="seconds between SIGTERM and SIGKILL when a replica stops"
    )


RuntimeName = Literal["auto", "process", "container"]

MAX_REPLICAS = 1000
"""Most replicas a service may ask for (metadata.instance, a scale): a sanity cap above which a
request is a 400 naming it. How many of them run is the node's capacity (controller/capacity.py)."""


class Metadata(_Model):
    name: str = Field(json_schema_extra={"pattern": "^[a-z][a-z0-9_]{0,62}$"})  # JSON Schema: `$` = end
    instance: int = Field(default=1, ge=0, le=MAX_REPLICAS, description="initial replica count")
    cpu: Number | None = Field(default=None, gt=0, description="cores per replica")
    memory: int | None = Field(default=None, gt=0, description="MB per replica")
    gpu: int | None = Field(default=None, ge=0, description="GPUs per replica")
    type: str | None = Field(
        default=None,
        description="'Async': requests go through a durable queue, results by request id (docs/async.md)",
    )
    rpc: RpcConfig = Field(default_factory=RpcConfig)
    rolling_strategy: RollingStrategy = Field(default_factory=RollingStrategy)
    eas: EasSection = Field(default_factory=EasSection)
    replica_runtime: RuntimeName = Field(
        default="auto",
        description=(
            "OpenEAS: what runs the replicas: 'process' (the command on this host), 'container' "
            "(the image, through podman or docker) or 'auto' (a container when `image` is set and "
            "an engine is present, else a process)"
        ),
    )

    group: str | None = Field(
        default=None,
        description=(
            "EAS: the service group the service joins at deploy (created with it as its only "
            "member when absent; else it joins with weight 0)"
        ),
        json_schema_extra={"pattern": "^[a-z][a-z0-9_]{0,62}$"},
    )

    balancer: str | None = Field(
        default=None,
        description=(
            "OpenEAS: how the gateway picks a replica for each request, by name (docs/balancers.md); "
            "default least-request"
        ),
    )

    @field_validator("balancer")
    @classmethod
    def _balancer(cls, v: str | None) -> str | None:
        if v is not None and v not in BALANCER_NAMES:
            raise ValueError(f"unknown balancer {v!r}; known: {', '.join(sorted(BALANCER_NAMES))}")
        return v

    @field_validator("group")
    @classmethod
    def _group(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and not NAME_RE.fullmatch(v) and not _stored(info):
            raise ValueError(
                "a group name starts with a lowercase letter and has only lowercase letters, digits and '_'"
            )
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str, info: ValidationInfo) -> str:
        if not NAME_RE.fullmatch(v) and not _stored(info):
            raise ValueError(
                "must start with a lowercase letter and contain only lowercase letters, digits "
                "and '_' (at most 63 characters)"
            )
        return v


class HttpGet(_Model):
    path: str = "/"
    port: int | None = Field(default=None, ge=1, le=65535, description="defaults to the container port")


class ExecAction(_Model):
    """A command run inside the replica (in its container, or in its folder for a process);
    exit status 0 passes. A list is run as is, a string by /bin/sh -c."""

    command: list[str] | str = Field(description="the command: a list of arguments, or a shell string")

    @field_validator("command")
    @classmethod
    def _not_empty(cls, v: list[str] | str) -> list[str] | str:
        if not v or (isinstance(v, list) and not v[0]):
            raise ValueError("must name a command")
        return v

    def argv(self) -> list[str]:
        return list(self.command) if isinstance(self.command, list) else ["/bin/sh", "-c", self.command]


class HealthCheck(_Model):
    """A probe: ``http_get``, ``exec``, else a TCP connect to the replica's port."""

    http_get: HttpGet | None = None
    tcp_socket: dict[str, Any] | None = None
    exec_: ExecAction | None = Field(default=None, alias="exec")
    initial_delay_seconds: Number = Field(default=0.0, ge=0)
    period_seconds: Number = Field(default=1.0, gt=0)
    timeout_seconds: Number = Field(default=2.0, gt=0)
    failure_threshold: int = Field(
        default=3, ge=1, description="consecutive failures that mark a Ready replica unready"
    )
    startup_timeout_seconds: Number = Field(
        default=600.0, gt=0, description="OpenEAS: a replica not Ready after this many seconds is restarted"
    )


class EnvVar(_Model):
    name: str = Field(json_schema_extra={"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"})
    value: str = Field(default="", json_schema_extra={"pattern": "^[^\\u0000]*$"})

    @field_validator("name")
    @classmethod
    def _env_name(cls, v: str, info: ValidationInfo) -> str:
        if not ENV_NAME_RE.fullmatch(v) and not _stored(info):
            raise ValueError(
                f"{v!r} is not a valid environment variable name: letters, digits and '_', "
                "not starting with a digit (no '=', NUL or spaces)"
            )
        return v

    @field_validator("value")
    @classmethod
    def _env_value(cls, v: str, info: ValidationInfo) -> str:
        if "\0" in v and not _stored(info):
            raise ValueError("must not contain a NUL character (a process environment cannot hold one)")
        return v

    @model_validator(mode="after")
    def _env_size(self, info: ValidationInfo) -> EnvVar:
        if _stored(info):
            return self
        size = len(self.name.encode()) + 1 + len(self.value.encode()) + 1  # NAME=value\0
        if size > MAX_ARG_STRLEN_BYTES:
            raise ValueError(
                f"the environment string {self.name}=... is {size} bytes; Linux allows at most "
                f"{MAX_ARG_STRLEN_BYTES} bytes (128 KiB) per NAME=value, so the replica could never start"
            )
        return self


class Prepare(_Model):
    """EAS's ``prepare``: what runs before the command (see openeas.storage.pyreqs)."""

    pythonRequirements: list[str] | None = Field(
        default=None, description="pip requirement strings installed before the command (once per node)"
    )
    pythonRequirementsPath: str | None = Field(
        default=None, description="a requirements file (a mount path such as /mnt/data/requirements.txt)"
    )


class Container(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": [k], "properties": {k: {"type": "string", "minLength": 1}}}
                for k in ("command", "script")
            ]
        }
    )

    image: str | None = Field(
        default=None,
        description="the image the container runtime runs (the process runtime runs `command` on the host)",
    )
    command: str | None = None
    script: str | None = Field(default=None, description="a bash script run instead of `command`")
    port: int = Field(default=8000, ge=1, le=65535, description="the port the server listens on in the spec")
    env: list[EnvVar] = Field(default_factory=list)
    health_check: HealthCheck | None = Field(
        default=None, description="gates Ready at start; while Ready, failing it restarts the replica"
    )
    # EAS's container-level checks (Kubernetes semantics): startup gates Ready at start (for at
    # most initial_delay + failure_threshold x period seconds unless startup_timeout_seconds is
    # set), liveness failing restarts the replica, readiness failing takes it out of routing
    # without a restart (back in when it passes again).
    prepare: Prepare | None = None
    startup_check: HealthCheck | None = None
    liveness_check: HealthCheck | None = None
    readiness_check: HealthCheck | None = None
    _env_as_mapping: bool = PrivateAttr(default=False)  # `env` was written as a mapping

    @model_validator(mode="wrap")
    @classmethod
    def _remember_env_form(cls, data: Any, handler: Any) -> Any:
        container = handler(data)
        if isinstance(data, dict) and isinstance(data.get("env"), dict):
            container._env_as_mapping = True
        return container

    @model_serializer(mode="wrap")
    def _env_as_written(self, handler: SerializerFunctionWrapHandler) -> Any:
        out = handler(self)
        if self._env_as_mapping and isinstance(out, dict) and isinstance(out.get("env"), list):
            out["env"] = {e["name"]: e["value"] for e in out["env"]}
        return out

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and not _stored(info) and not IMAGE_RE.fullmatch(v):
            raise ValueError(
                f"{v!r} is not an image reference: expected [registry/]name[:tag][@digest], "
                "e.g. localhost/my-server:1.0 (lowercase name, no spaces)"
            )
        return v

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, v: Any) -> Any:
        if isinstance(v, int) and not 1 <= v <= 65535:
            raise ValueError("must be 1..65535")
        return v

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, v: Any) -> Any:
        # EAS writes env as [{"name", "value"}]; a plain mapping is accepted too.
        if isinstance(v, dict):
            return [{"name": str(k), "value": "" if val is None else str(val)} for k, val in v.items()]
        return v

    @model_validator(mode="after")
    def _runnable(self, info: ValidationInfo) -> Container:
        if not (self.command or self.script):
            raise ValueError("one of 'command' or 'script' is required")
        if _stored(info):
            return self
        for what, text in (("command", self.command), ("script", self.script)):
            if text is None:
                continue
            if "\0" in text:
                raise ValueError(f"{what}: must not contain a NUL character")
            if len(text.encode()) + 1 > MAX_ARG_STRLEN_BYTES:
                raise ValueError(
                    f"{what}: is {len(text.encode())} bytes; Linux allows at most "
                    f"{MAX_ARG_STRLEN_BYTES} bytes (128 KiB) per argument, so it could never start"
                )
        total = sum(len(e.name.encode()) + len(e.value.encode()) + 2 for e in self.env)
        if total > MAX_ENV_TOTAL_BYTES:
            raise ValueError(
                f"env: {total} bytes in all; at most {MAX_ENV_TOTAL_BYTES} bytes (1 MiB) together"
            )
        return self

    def env_dict(self) -> dict[str, str]:
        return {e.name: e.value for e in self.env}


class OssSource(_Model):
    path: str = Field(description="any fsspec URL: oss://, s3://, file:// or a local path")
    readOnly: bool = True


class GitSource(_Model):
    """A Git repository cloned once per node into the cache, mounted read-only."""

    repo: str = Field(min_length=1, description="clone URL (https://, ssh, file:// or a local path)")
    branch: str | None = Field(default=None, description="branch or tag (default: the remote's HEAD)")
    commit: str | None = Field(default=None, description="a commit to check out (pins the content)")

    @field_validator("branch", "commit")
    @classmethod
    def _not_an_option(cls, v: str | None, info: ValidationInfo) -> str | None:
        # The value reaches git's command line: it must not read as an option or hold a space.
        bad = v is not None and (not v or v.startswith("-") or any(c.isspace() for c in v))
        if bad and not _stored(info):
            raise ValueError(f"{v!r} is not a branch, tag or commit: no leading '-', no spaces")
        return v


class CacheSource(_Model):
    """EAS's model-loading cache: ``path`` (another storage entry's mount_path) seen read-only at
    this mount_path. Here every mount is already node-local, so it is the same folder, read-only."""

    path: str = Field(description="the mount_path of the storage entry to cache")
    capacity: Number | str | None = Field(
        default=None, description="memory for the cache (EAS); not needed here"
    )


# A size as EAS writes it: a number of GB (20), or a quantity with a unit ("512Mi", "2Gi", "1G").
_QUANTITY_RE = re.compile(r"(?P<n>\d+(?:\.\d+)?)\s*(?P<u>[KMGT]i?|[kmgt]i?)?[bB]?")
_UNIT_BYTES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def quantity_bytes(value: Number | str, *, default_unit: int) -> int:
    """``value`` in bytes: a bare number counts in ``default_unit`` bytes; "512Mi" = 512 * 2^20,
    "1G" = 10^9. ValueError with the accepted forms otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a size, not a boolean")
    if isinstance(value, int | float):
        if value <= 0:
            raise ValueError("must be > 0")
        return int(value * default_unit)
    m = _QUANTITY_RE.fullmatch(value.strip())
    if not m or float(m.group("n")) <= 0:
        raise ValueError(f"{value!r} is not a size: write a number of GB (20) or a quantity (512Mi, 2Gi)")
    unit = (m.group("u") or "").lower()
    if not unit:
        return int(float(m.group("n")) * default_unit)
    base = 1024 ** (" kmgt".index(unit[0])) if unit.endswith("i") else _UNIT_BYTES[unit[0]]
    return int(float(m.group("n")) * base)


class EmptyDir(_Model):
    """A scratch directory per replica; ``medium: memory`` makes it a tmpfs (container runtime)."""

    medium: str | None = Field(default=None, description="'memory' for a tmpfs; empty/absent for disk")
    size_limit: Number | str | None = Field(
        default=None, description="largest size: a number of GB (EAS) or a quantity such as 512Mi"
    )

    @field_validator("medium")
    @classmethod
    def _medium(cls, v: str | None) -> str | None:
        if v is not None and v.lower() not in ("", "memory"):
            raise ValueError(f"{v!r} is not a medium: use 'memory' (a tmpfs) or leave it out (disk)")
        return v

    @field_validator("size_limit")
    @classmethod
    def _size(cls, v: Number | str | None) -> Number | str | None:
        if v is not None:
            quantity_bytes(v, default_unit=2**30)
        return v

    @property
    def in_memory(self) -> bool:
        return (self.medium or "").lower() == "memory"

    def size_bytes(self) -> int | None:
        return None if self.size_limit is None else quantity_bytes(self.size_limit, default_unit=2**30)


# Storage kinds OpenEAS cannot serve, each with what to write instead (EAS: "Mount storage").
UNSERVABLE_STORAGE = {
    "image": (
        "an `image` mount copies files out of another image, which OpenEAS does not do: put the "
        "files in object storage and mount them with `oss`, or build them into the container's own image"
    ),
    "dataset": (
        "a PAI `dataset` is an asset of the cloud workspace: mount the OSS path it registers with "
        "`oss` instead"
    ),
    "code": (
        "a PAI `code` set is an asset of the cloud workspace: put a checkout of its repository in "
        "object storage and mount it with `oss`"
    ),
}
STORAGE_KINDS = ("oss", "nfs", "empty_dir", "git", "cache")


class StorageMount(_Model):
    mount_path: str = Field(json_schema_extra={"pattern": "^/[^\\u0000-\\u001f\\u007f]*$"})
    oss: OssSource | None = None
    nfs: dict[str, Any] | None = None
    empty_dir: EmptyDir | None = None
    git: GitSource | None = None
    cache: CacheSource | None = None

    @field_validator("mount_path")
    @classmethod
    def _abs(cls, v: str, info: ValidationInfo) -> str:
        if not v.startswith("/"):
            raise ValueError("must be an absolute path")
        if not v.strip("/"):
            raise ValueError("must not be '/' (mount below it, e.g. /mnt/data)")
        if ".." in v.split("/"):
            raise ValueError("must not contain '..'")
        if _stored(info):
            return v
        if any(ord(c) < 0x20 or c == "\x7f" for c in v):
            raise ValueError("must not contain control characters (newline, NUL, ...)")
        if problem := mount_path_problem(v):
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _one_source(self) -> StorageMount:
        extra = self.__pydantic_extra__ or {}
        for kind, why in UNSERVABLE_STORAGE.items():
            if extra.get(kind) is not None:
                raise ValueError(f"{kind}: {why}")
        sources = [k for k in STORAGE_KINDS if getattr(self, k) is not None]
        if len(sources) != 1:
            raise ValueError(
                "exactly one of 'oss', 'nfs', 'empty_dir', 'git' or 'cache' is required"
                + (f" (found {', '.join(sources)})" if sources else "")
            )
        return self


class Computing(_Model):
    instance_type: str | None = None
    instances: list[dict[str, Any]] | None = None


class Cloud(_Model):
    computing: Computing = Field(default_factory=Computing)


class ServiceSpec(_Model):
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
        if v is not None and not _stored(info) and docker_credentials(v) is None:
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
        if v and not _stored(info) and any(ord(c) < 0x20 or c == "\x7f" for c in v):
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
