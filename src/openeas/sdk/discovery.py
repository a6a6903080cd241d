"""Find the OpenEAS server to talk to: ``server.json`` in a data directory, or environment variables.

Precedence (first match wins), shared by the CLI and ``Client.from_env``:

1. an explicit data directory (``--data-dir`` / ``data_dir=``): ``DIR/server.json``;
2. ``OPENEAS_SERVER`` (the control-plane API URL) + ``OPENEAS_ADMIN_TOKEN``
   (``OPENEAS_GATEWAY_URL`` optionally names the gateway);
3. ``OPENEAS_DATA_DIR``: ``$OPENEAS_DATA_DIR/server.json``;
4. ``./.data/server.json`` (the default data directory of ``openeas server``).

Discovery reads files and the environment only; it never touches the network.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SERVER_FILE = "server.json"
DEFAULT_DATA_DIR = ".data"

ENV_DATA_DIR = "OPENEAS_DATA_DIR"
ENV_SERVER = "OPENEAS_SERVER"
ENV_ADMIN_TOKEN = "OPENEAS_ADMIN_TOKEN"
ENV_GATEWAY_URL = "OPENEAS_GATEWAY_URL"

NOT_FOUND_HINT = (
    "no OpenEAS server found: start one with 'openeas server --data-dir DIR' or set OPENEAS_DATA_DIR"
)


class ServerNotFound(Exception):
    """No server could be located (or its ``server.json`` is unreadable)."""


@dataclass(frozen=True)
class ServerInfo:
    api_url: str
    admin_token: str
    gateway_url: str | None = None
    pid: int | None = None
    source: str = ""
    """Where the information came from (a ``server.json`` path or an environment variable), for errors."""


def read_server_file(path: Path) -> ServerInfo:
    """Parse one ``server.json``; raises ServerNotFound with a readable reason."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ServerNotFound(f"{NOT_FOUND_HINT} (no {path})") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ServerNotFound(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ServerNotFound(f"cannot read {path}: not a JSON object")
    api_url, token = data.get("api_url"), data.get("admin_token")
    if not isinstance(api_url, str) or not api_url or not isinstance(token, str) or not token:
        raise ServerNotFound(f"cannot read {path}: 'api_url' and 'admin_token' are required")
    gateway = data.get("gateway_url")
    pid = data.get("pid")
    return ServerInfo(
        api_url=api_url.rstrip("/"),
        admin_token=token,
        gateway_url=gateway.rstrip("/") if isinstance(gateway, str) and gateway else None,
        pid=pid if isinstance(pid, int) else None,
        source=str(path),
    )


def discover(
    data_dir: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> ServerInfo:
    """Locate the server (see the module docstring for the precedence)."""
    env = os.environ if env is None else env
    if data_dir is not None and str(data_dir) != "":
        return read_server_file(Path(data_dir).expanduser() / SERVER_FILE)
    server = env.get(ENV_SERVER, "").strip()
    if server:
        token = env.get(ENV_ADMIN_TOKEN, "").strip()
        if not token:
            raise ServerNotFound(f"{ENV_SERVER} is set but {ENV_ADMIN_TOKEN} is not")
        gateway = env.get(ENV_GATEWAY_URL, "").strip().rstrip("/") or None
        return ServerInfo(
            api_url=server.rstrip("/"), admin_token=token, gateway_url=gateway, source=ENV_SERVER
        )
    env_dir = env.get(ENV_DATA_DIR, "").strip()
    if env_dir:
        return read_server_file(Path(env_dir).expanduser() / SERVER_FILE)
    path = Path(DEFAULT_DATA_DIR) / SERVER_FILE
    if not path.exists():
        raise ServerNotFound(NOT_FOUND_HINT)
    return read_server_file(path)
