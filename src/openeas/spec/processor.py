"""EAS processor specs: which ones run, and the container a Python processor becomes.

EAS deploys a *processor* (``processor_type`` ``python``, ``cpp`` or ``java`` with a
``processor_path`` package and a ``processor_entry`` file, or a built-in ``processor`` code) where
other specs name ``containers``. OpenEAS runs the custom **Python** processor: when a spec has
``processor_type: python`` and no ``containers``, :func:`synthesize_python_processor` writes into
the canonical document

- a ``storage`` entry for ``processor_path`` at :data:`PROCESSOR_MOUNT` and one for ``model_path``
  at :data:`MODEL_MOUNT` (both go through the node cache like any ``oss`` mount: ``oss://``,
  ``http://``, ``file://`` or a local path; a directory or one file, e.g. an archive);
- one container running ``python -m openeas.processor`` on those mounts (port 8000; the process
  runtime gives each replica its own port), ``model_config`` in ``OPENEAS_MODEL_CONFIG``.

The spec model remembers what was added and leaves it out of ``to_dict`` (``describe`` shows the
spec as written). Compiled processors and built-in processor codes cannot run here and get one
message each (:func:`processor_problem`). Pure functions; no I/O.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from typing import Any

PROCESSOR_MOUNT = "/eas/workspace/processor"
"""Where the processor package is mounted (EAS unpacks processors under /eas/workspace too)."""
MODEL_MOUNT = "/eas/workspace/model"
"""Where ``model_path`` is mounted: the directory EAS's Python samples read the model from."""
CONTAINER_PORT = 8000
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
MODEL_CONFIG_ENV = "OPENEAS_MODEL_CONFIG"
MODEL_ENTRY_ENV = "OPENEAS_MODEL_ENTRY"
# The spec fields a Python processor uses (so `unused_fields` does not list them).
PYTHON_PROCESSOR_FIELDS = (
    "processor_type", "processor_path", "processor_entry", "model_path", "model_config", "model_entry",
)  # fmt: skip

_EXAMPLE = (
    '{"containers": [{"image": "<a server image>", "command": "<its serve command> --port 8000", '
    '"port": 8000}], "storage": [{"mount_path": "/mnt/data", "oss": {"path": "<model_path>"}}]}'
)
_LANGUAGES = {"cpp": "C++", "java": "Java"}


def processor_problem(doc: dict[str, Any]) -> str | None:
    """Why a spec without ``containers`` cannot run here, or None (it can, or it is no processor spec)."""
    kind = doc.get("processor_type")
    if kind in _LANGUAGES:
        return (
            f"processor_type {kind!r} is not available: OpenEAS runs custom processors written in "
            f"Python (processor_type 'python'), not {_LANGUAGES[kind]} ones; deploy a container that "
            f"serves the model instead, for example {_EXAMPLE}"
        )
    if kind not in (None, "", "python"):
        return f"processor_type: {kind!r} is not a processor type: EAS's are 'python', 'cpp' and 'java'"
    return None


def is_python_processor(doc: dict[str, Any]) -> bool:
    """A spec that deploys a custom Python processor (and names no containers)."""
    return doc.get("processor_type") == "python" and not doc.get("containers")


def _basename(url: str) -> str:
    return posixpath.basename(url.split("?", 1)[0].rstrip("/"))


def _is_archive(url: str) -> bool:
    return _basename(url).lower().endswith(ARCHIVE_SUFFIXES)


def synthesize_python_processor(doc: dict[str, Any]) -> int | None:
    """Add the processor's container and mounts to ``doc`` (canonical, changed in place).

    Returns how many ``storage`` entries the user wrote (None: no ``storage`` key), so the spec
    can give back exactly what was written. ValueError names the missing field.
    """
    path, entry = doc.get("processor_path"), doc.get("processor_entry")
    for field, value in (("processor_path", path), ("processor_entry", entry)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                f"{field}: required for processor_type 'python' (the processor package, a directory "
                "or a .zip/.tar.gz archive, and the module file in it that defines the processor class)"
            )
    assert isinstance(path, str) and isinstance(entry, str)
    written = doc.get("storage")
    storage = list(written) if isinstance(written, list) else []
    storage.append({"mount_path": PROCESSOR_MOUNT, "oss": {"path": path}})
    package = f"{PROCESSOR_MOUNT}/{_basename(path)}" if _is_archive(path) else PROCESSOR_MOUNT
    argv = ["python", "-m", "openeas.processor", "--path", package, "--entry", entry]
    model_path = doc.get("model_path")
    if isinstance(model_path, str) and model_path.strip():
        storage.append({"mount_path": MODEL_MOUNT, "oss": {"path": model_path}})
        argv += ["--model-path", MODEL_MOUNT]
    argv += ["--port", str(CONTAINER_PORT)]
    env = []
    config = doc.get("model_config")
    if config is not None and config != "":
        value = config if isinstance(config, str) else json.dumps(config, separators=(",", ":"))
        env.append({"name": MODEL_CONFIG_ENV, "value": value})
    model_entry = doc.get("model_entry")
    if isinstance(model_entry, str) and model_entry:
        env.append({"name": MODEL_ENTRY_ENV, "value": model_entry})
    doc["containers"] = [{"command": shlex.join(argv), "port": CONTAINER_PORT, "env": env}]
    doc["storage"] = storage
    return len(written) if isinstance(written, list) else None
