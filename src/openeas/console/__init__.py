"""The web console under ``/console``: server-rendered pages over the control plane's own API and
data, live over Server-Sent Events (docs/console.md)."""

from openeas.console.live import Live
from openeas.console.routes import add_console

__all__ = ["Live", "add_console"]
