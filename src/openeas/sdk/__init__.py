"""Python SDK: the control-plane client and server discovery shared with the CLI."""

from openeas.sdk.client import ApiError, Client, ConnectionFailed, WaitTimeout, ready_count
from openeas.sdk.discovery import ServerInfo, ServerNotFound, discover

__all__ = [
    "ApiError",
    "Client",
    "ConnectionFailed",
    "ServerInfo",
    "ServerNotFound",
    "WaitTimeout",
    "discover",
    "ready_count",
]
