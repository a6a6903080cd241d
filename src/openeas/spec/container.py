"""The spec's ``containers``: image, command, port, environment, probes and ``prepare``."""

from __future__ import annotations

import re
from typing import Any

from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from openeas.spec.base import Number, SpecModel, is_stored

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


class HttpGet(SpecModel):
    path: str = "/"
    port: int | None = Field(default=None, ge=1, le=65535, description="defaults to the container port")


class ExecAction(SpecModel):
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


class HealthCheck(SpecModel):
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


class EnvVar(SpecModel):
    name: str = Field(json_schema_extra={"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"})
    value: str = Field(default="", json_schema_extra={"pattern": "^[^\\u0000]*$"})

    @field_validator("name")
    @classmethod
    def _env_name(cls, v: str, info: ValidationInfo) -> str:
        if not ENV_NAME_RE.fullmatch(v) and not is_stored(info):
            raise ValueError(
                f"{v!r} is not a valid environment variable name: letters, digits and '_', "
                "not starting with a digit (no '=', NUL or spaces)"
            )
        return v

    @field_validator("value")
    @classmethod
    def _env_value(cls, v: str, info: ValidationInfo) -> str:
        if "\0" in v and not is_stored(info):
            raise ValueError("must not contain a NUL character (a process environment cannot hold one)")
        return v

    @model_validator(mode="after")
    def _env_size(self, info: ValidationInfo) -> EnvVar:
        if is_stored(info):
            return self
        size = len(self.name.encode()) + 1 + len(self.value.encode()) + 1  # NAME=value\0
        if size > MAX_ARG_STRLEN_BYTES:
            raise ValueError(
                f"the environment string {self.name}=... is {size} bytes; Linux allows at most "
                f"{MAX_ARG_STRLEN_BYTES} bytes (128 KiB) per NAME=value, so the replica could never start"
            )
        return self


class Prepare(SpecModel):
    """EAS's ``prepare``: what runs before the command (see openeas.storage.pyreqs)."""

    pythonRequirements: list[str] | None = Field(
        default=None, description="pip requirement strings installed before the command (once per node)"
    )
    pythonRequirementsPath: str | None = Field(
        default=None, description="a requirements file (a mount path such as /mnt/data/requirements.txt)"
    )


class Container(SpecModel):
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
        if v is not None and not is_stored(info) and not IMAGE_RE.fullmatch(v):
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
        if is_stored(info):
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
