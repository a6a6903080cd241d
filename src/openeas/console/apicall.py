"""The console acts through the control plane's own API, in process: a request handed straight to
the API's ASGI app with the admin token, so a form does exactly what the same API call does (the
same validation, group checks and error messages with field paths) and no logic is copied here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any  # the JSON answer (None when the body was not JSON)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def errors(self) -> list[str]:
        """The API's error lines (``field.path: reason``), or its message as one line."""
        err = self.body.get("error") if isinstance(self.body, dict) else None
        if not isinstance(err, dict):
            return [] if self.ok else [f"HTTP {self.status}"]
        lines = err.get("errors") or [err.get("message", f"HTTP {self.status}")]
        return [str(line) for line in lines]


async def call(
    app: ASGIApp, token: str, method: str, path: str, body: Any = None, raw: bytes | None = None
) -> Answer:
    """``method path`` on the API with ``body`` as JSON (or ``raw`` bytes); its answer."""
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    path, _, query = path.partition("?")
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
        ],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
    }
    sent = False
    status = 500
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": data, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    try:
        parsed = json.loads(b"".join(chunks) or b"null")
    except ValueError:
        parsed = None
    return Answer(status, parsed)
