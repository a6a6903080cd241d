"""Python client for the OpenEAS control-plane API (and a `predict` convenience for the gateway)."""

from __future__ import annotations

import builtins
import json
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import requests

from openeas.procfs import pid_alive
from openeas.sdk.discovery import ServerInfo, discover
from openeas.sdk.groups import GroupsClient

API = "/api/v1"


class ApiError(Exception):
    """An error answered by the server (``status`` > 0) or a failure to reach it (``status`` == 0).

    ``errors`` holds one ``field.path: reason`` line per problem for an invalid spec.
    """

    def __init__(self, status: int, code: str, message: str, errors: list[str] | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.errors = list(errors or [])
        super().__init__(str(self))

    def __str__(self) -> str:
        head = f"{self.message} (HTTP {self.status}, {self.code})" if self.status else self.message
        return "\n".join([head, *(f"  {e}" for e in self.errors)])

    @classmethod
    def from_response(cls, resp: requests.Response) -> ApiError:
        code, message, errors = f"http_{resp.status_code}", "", []
        try:
            body = resp.json()
        except ValueError:
            body = None
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            code = str(err.get("code") or code)
            message = str(err.get("message") or "")
            raw = err.get("errors")
            if isinstance(raw, list):
                errors = [str(e) for e in raw]
        elif isinstance(body, dict) and "detail" in body:
            # FastAPI's default error shape, in case a route answers before our handlers do.
            detail = body["detail"]
            message = detail if isinstance(detail, str) else json.dumps(detail)
        if not message:
            text = resp.text.strip()
            message = text[:500] if text else (resp.reason or f"HTTP {resp.status_code}")
        return cls(resp.status_code, code, message, errors)


class ConnectionFailed(ApiError):
    """The server did not answer (not running, wrong URL, network)."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "unreachable", message)


class WaitTimeout(TimeoutError):
    """A wait (ready, deleted) ran out of time; ``last`` is the last service detail seen."""

    def __init__(self, message: str, last: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.last = last


ProgressFn = Callable[[dict[str, Any]], None]


def ready_count(detail: dict[str, Any]) -> int:
    """Ready replicas of the current version that are not being stopped (old-version replicas don't
    count after an update)."""
    replicas = detail.get("replicas")
    if not isinstance(replicas, list):
        return int(detail.get("ready_replicas") or 0)
    current = detail.get("version")
    return sum(
        1
        for r in replicas
        if r.get("phase") == "Ready"
        and not r.get("stopping")
        and (current is None or r.get("version") in (None, current))
    )


def last_message(detail: dict[str, Any]) -> str | None:
    """The most telling replica message (a failure reason), if any."""
    msgs = [str(r["message"]) for r in detail.get("replicas") or [] if r.get("message")]
    return msgs[-1] if msgs else None


class Client(GroupsClient):
    """Control-plane client. Admin calls use ``Authorization: Bearer <admin_token>``.

    >>> c = Client.from_env()                       # doctest: +SKIP
    >>> c.deploy(spec); c.wait_ready("demo")        # doctest: +SKIP
    >>> c.predict("demo", {"prompt": "hi"}).json()  # doctest: +SKIP
    """

    def __init__(
        self,
        api_url: str,
        admin_token: str,
        timeout_s: float = 30,
        gateway_url: str | None = None,
        source: str = "",
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.admin_token = admin_token
        self.timeout_s = timeout_s
        self.gateway_url = gateway_url.rstrip("/") if gateway_url else None
        self._source = source
        self._pid: int | None = None
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {admin_token}"
        self._session.headers["User-Agent"] = "openeas-sdk"
        self._call_info: dict[str, dict[str, str]] = {}

    @classmethod
    def from_info(cls, info: ServerInfo, timeout_s: float = 30) -> Client:
        client = cls(
            info.api_url, info.admin_token, timeout_s, gateway_url=info.gateway_url, source=info.source
        )
        client._pid = info.pid
        return client

    @classmethod
    def from_env(cls, data_dir: str | os.PathLike[str] | None = None, timeout_s: float = 30) -> Client:
        """Find the server like the CLI: data_dir, OPENEAS_SERVER, OPENEAS_DATA_DIR, ./.data."""
        return cls.from_info(discover(data_dir), timeout_s)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------------------

    def _unreachable(self, url: str, exc: Exception) -> ConnectionFailed:
        where = f" (from {self._source})" if self._source else ""
        hint = "is the server running?"
        if pid_alive(self._pid) is False:
            hint = f"the server recorded there (pid {self._pid}) is not running; start it again"
        return ConnectionFailed(f"cannot reach OpenEAS server at {url}{where}: {hint} [{type(exc).__name__}]")

    def _send(
        self, method: str, path: str, *, json_body: Any = None, params: dict[str, Any] | None = None
    ) -> requests.Response:
        url = self.api_url + path
        try:
            resp = self._session.request(method, url, json=json_body, params=params, timeout=self.timeout_s)
        except requests.ConnectionError as exc:
            raise self._unreachable(self.api_url, exc) from None
        except requests.Timeout:
            raise ConnectionFailed(f"{method} {url} timed out after {self.timeout_s:g}s") from None
        if resp.status_code >= 400:
            raise ApiError.from_response(resp)
        return resp

    def request_text(self, method: str, path: str, *, params: dict[str, Any] | None = None) -> str:
        """One API call whose answer is text (a CSV); raises ApiError for any non-2xx answer."""
        return self._send(method, path, params=params).text

    def request(
        self, method: str, path: str, *, json_body: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        """One API call; returns the decoded JSON body, raises ApiError for any non-2xx answer."""
        url = self.api_url + path
        resp = self._send(method, path, json_body=json_body, params=params)
        if not resp.content:
            return {}
        try:
            return resp.json()
        except ValueError:
            raise ApiError(resp.status_code, "bad_response", f"{method} {url}: answer is not JSON") from None

    @staticmethod
    def _svc(name: str) -> str:
        return f"{API}/services/{quote(name, safe='')}"

    # -- services ------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/healthz")
        return result

    def deploy(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Create a service (409 ``ApiError`` if the name exists; see ``apply``)."""
        result: dict[str, Any] = self.request("POST", f"{API}/services", json_body=spec)
        return result

    def update(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """New immutable version of ``name`` from ``spec``, rolled out by the reconciler."""
        self._call_info.pop(name, None)  # the spec may carry a new token
        result: dict[str, Any] = self.request("PUT", self._svc(name), json_body=spec)
        return result

    def apply(self, spec: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create the service, or update it when it exists; returns ``(detail, created)``."""
        try:
            return self.deploy(spec), True
        except ApiError as exc:
            if exc.status != 409:
                raise
        # EAS specs name the service in metadata.name or at the top level.
        name = str((spec.get("metadata") or {}).get("name") or spec.get("name") or "")
        return self.update(name, spec), False

    def dry_run(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Validate ``spec`` and say what deploying it would do (create/update, runtime and why)."""
        result: dict[str, Any] = self.request("POST", f"{API}/dry-run", json_body=spec)
        return result

    def list(self) -> list[dict[str, Any]]:
        body = self.request("GET", f"{API}/services")
        return list(body.get("services", []))

    def describe(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", self._svc(name))
        return result

    def gateways(self) -> dict[str, Any]:
        """Every gateway registered in the store (``GET /api/v1/gateways``)."""
        result: dict[str, Any] = self.request("GET", f"{API}/gateways")
        return result

    def scale(self, name: str, replicas: int) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "POST", f"{self._svc(name)}/scale", json_body={"replicas": replicas}
        )
        return result

    def autoscaling(self, name: str) -> dict[str, Any]:
        """The autoscaler's view: policy, metric vs target, desired vs Ready, last decision."""
        result: dict[str, Any] = self.request("GET", f"{self._svc(name)}/autoscaling")
        return result

    def stop(self, name: str, force: bool = False) -> dict[str, Any]:
        """Stop; ``force`` overrides the 48-hour rule (a service in, or recently in, a group's traffic)."""
        params = {"force": "true"} if force else None
        result: dict[str, Any] = self.request("POST", f"{self._svc(name)}/stop", params=params)
        return result

    def start(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"{self._svc(name)}/start")
        return result

    def delete(self, name: str, force: bool = False) -> dict[str, Any]:
        """Delete; ``force`` overrides the 48-hour rule (a service in, or recently in, a group's traffic)."""
        self._call_info.pop(name, None)
        params = {"force": "true"} if force else None
        result: dict[str, Any] = self.request("DELETE", self._svc(name), params=params)
        return result

    def versions(self, name: str) -> builtins.list[dict[str, Any]]:
        body = self.request("GET", f"{self._svc(name)}/versions")
        return list(body.get("versions", []))

    def version_diff(self, name: str, a: int, b: int) -> dict[str, Any]:
        """What changed from version ``a``'s spec to ``b``'s: ``{"changed", "diff": [lines]}``."""
        result: dict[str, Any] = self.request("GET", f"{self._svc(name)}/versions/diff?from={a}&to={b}")
        return result

    def rollback(self, name: str, version: int) -> dict[str, Any]:
        self._call_info.pop(name, None)
        result: dict[str, Any] = self.request(
            "POST", f"{self._svc(name)}/rollback", json_body={"version": version}
        )
        return result

    def events(self, name: str, limit: int = 100) -> builtins.list[dict[str, Any]]:
        body = self.request("GET", f"{self._svc(name)}/events", params={"limit": limit})
        return list(body.get("events", []))

    def logs(self, name: str, replica: str | None = None, tail: int = 200) -> builtins.list[dict[str, Any]]:
        params: dict[str, Any] = {"tail": tail}
        if replica:
            params["replica"] = replica
        body = self.request("GET", f"{self._svc(name)}/logs", params=params)
        return list(body.get("logs", []))

    def call_info(self, name: str) -> dict[str, str]:
        body = self.request("GET", f"{self._svc(name)}/call-info")
        info = {"endpoint": str(body["endpoint"]), "token": str(body["token"])}
        self._call_info[name] = info
        return info

    # -- waiting -------------------------------------------------------------------------------

    def wait_ready(
        self,
        name: str,
        replicas: int | None = None,
        timeout_s: float = 120,
        poll_s: float = 0.5,
        on_progress: ProgressFn | None = None,
        failed_grace_s: float = 30,
    ) -> dict[str, Any]:
        """Poll ``describe`` until ``replicas`` (default: the desired count) of the current version are Ready.

        Raises ``WaitTimeout`` after ``timeout_s`` seconds, and ``ApiError`` (status 0, code ``failed``)
        once the service has been ``Failed`` for ``failed_grace_s`` seconds in a row (a replica that
        crashes once and recovers on restart does not end the wait).
        """
        start = time.monotonic()
        deadline = start + timeout_s
        failed_since: float | None = None
        while True:
            detail = self.describe(name)
            now = time.monotonic()
            if on_progress is not None:
                on_progress(detail)
            wanted = replicas if replicas is not None else int(detail.get("desired_replicas") or 0)
            ready = ready_count(detail)
            if ready >= wanted and detail.get("status") not in ("Updating", "Pending"):
                return detail
            if detail.get("status") == "Failed":
                failed_since = now if failed_since is None else failed_since
                if now - failed_since >= failed_grace_s:
                    why = last_message(detail)
                    raise ApiError(0, "failed", f"service {name} failed" + (f": {why}" if why else ""))
            else:
                failed_since = None
            if now >= deadline:
                why = last_message(detail)
                raise WaitTimeout(
                    f"service {name}: {ready}/{wanted} replicas ready after {timeout_s:g}s"
                    + (f" (last message: {why})" if why else ""),
                    detail,
                )
            time.sleep(poll_s)

    def wait_deleted(
        self, name: str, timeout_s: float = 120, poll_s: float = 0.5, on_progress: ProgressFn | None = None
    ) -> None:
        """Poll until the service answers 404 (the reconciler has stopped its replicas)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                detail = self.describe(name)
            except ApiError as exc:
                if exc.status == 404:
                    return
                raise
            if on_progress is not None:
                on_progress(detail)
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"service {name} still exists after {timeout_s:g}s", detail)
            time.sleep(poll_s)

    # -- data plane ----------------------------------------------------------------------------

    def predict(
        self,
        name: str,
        body: Any = None,
        path: str = "",
        headers: dict[str, str] | None = None,
        method: str = "POST",
        timeout_s: float | None = None,
    ) -> requests.Response:
        """Call the service through the gateway with its token (from ``call_info``, cached).

        ``body``: bytes/str are sent as-is, anything else as JSON. ``path`` is appended to the
        endpoint (``"/v1/chat/completions"``). Returns the response; raises ``ApiError`` for >= 400.
        """
        for attempt in (0, 1):
            info = self._call_info.get(name) or self.call_info(name)
            url = info["endpoint"].rstrip("/")
            if path:
                url += path if path.startswith("/") else "/" + path
            hdrs = {"Authorization": f"Bearer {info['token']}", **(headers or {})}
            kwargs: dict[str, Any] = {"headers": hdrs, "timeout": timeout_s or self.timeout_s}
            if isinstance(body, bytes | str):
                kwargs["data"] = body
            elif body is not None:
                kwargs["json"] = body
            try:
                # Not the admin session: the gateway must see the service token, never the admin one.
                resp = requests.request(method, url, **kwargs)
            except requests.ConnectionError as exc:
                raise self._unreachable(url, exc) from None
            if resp.status_code == 401 and attempt == 0:
                self._call_info.pop(name, None)  # token rotated by an update: fetch it again once
                continue
            if resp.status_code >= 400:
                raise ApiError.from_response(resp)
            return resp
        raise AssertionError("unreachable")
