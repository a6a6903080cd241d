"""Service groups in the Python client (`openeas.sdk.Client` inherits these methods)."""

from __future__ import annotations

import builtins
from typing import Any, Protocol
from urllib.parse import quote

API = "/api/v1"


class _Requester(Protocol):
    def request(
        self, method: str, path: str, *, json_body: Any = None, params: dict[str, Any] | None = None
    ) -> Any: ...


def _grp(name: str) -> str:
    return f"{API}/groups/{quote(name, safe='')}"


class GroupsClient:
    """Group calls; mixed into `Client`, which supplies ``request``."""

    def group_apply(self: _Requester, spec: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create the group or replace it whole (``kind: ServiceGroup`` spec); (detail, created)."""
        body = self.request("PUT", _grp(str(spec.get("name", ""))), json_body=spec)
        return body, bool(body.get("created"))

    def group_create(self: _Requester, spec: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"{API}/groups", json_body=spec)
        return result

    def groups(self: _Requester) -> builtins.list[dict[str, Any]]:
        return list(self.request("GET", f"{API}/groups").get("groups", []))

    def group(self: _Requester, name: str, stats: bool = True) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", _grp(name), params={"stats": str(stats).lower()})
        return result

    def group_delete(self: _Requester, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("DELETE", _grp(name))
        return result

    def group_weights(
        self: _Requester,
        name: str,
        weights: dict[str, int] | None = None,
        mirror_weights: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """Set members' weights (0..1000) and/or mirror weights (percent); in effect at the gateway
        when this returns."""
        body = {"weights": weights or {}, "mirror_weights": mirror_weights or {}}
        result: dict[str, Any] = self.request("POST", f"{_grp(name)}/weights", json_body=body)
        return result

    def group_rollback(self: _Requester, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"{_grp(name)}/rollback")
        return result

    def group_join(self: _Requester, name: str, service: str, weight: int = 0) -> dict[str, Any]:
        body = {"service": service, "weight": weight}
        result: dict[str, Any] = self.request("POST", f"{_grp(name)}/members", json_body=body)
        return result

    def group_leave(self: _Requester, name: str, service: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("DELETE", f"{_grp(name)}/members/{quote(service, safe='')}")
        return result

    def group_call_info(self: _Requester, name: str) -> dict[str, str]:
        body = self.request("GET", f"{_grp(name)}/call-info")
        return {"endpoint": str(body["endpoint"]), "token": str(body["token"])}

    def group_compare(self: _Requester, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"{_grp(name)}/compare")
        return result

    def group_events(self: _Requester, name: str, limit: int = 100) -> builtins.list[dict[str, Any]]:
        return list(self.request("GET", f"{_grp(name)}/events", params={"limit": limit}).get("events", []))

    # -- staged rollouts ---------------------------------------------------------------------------

    def rollout_start(
        self: _Requester,
        name: str,
        to: str,
        *,
        steps: builtins.list[int] | None = None,
        hold_s: float | None = None,
        baseline: str | None = None,
        max_p99_ms: float | None = None,
        min_success: float | None = None,
        min_requests: int | None = None,
        eval_set: str | None = None,
        min_pass: float | None = None,
    ) -> dict[str, Any]:
        """Start a staged rollout of group ``name`` to member ``to``; with ``eval_set`` (JSONL
        text) the candidate must pass it (``min_pass``, default 0.95) before any weight moves."""
        body: dict[str, Any] = {"to": to}
        for key, value in (
            ("steps", steps),
            ("hold_s", hold_s),
            ("from", baseline),
            ("max_p99_ms", max_p99_ms),
            ("min_success", min_success),
            ("min_requests", min_requests),
            ("eval_set", eval_set),
            ("min_pass", min_pass),
        ):
            if value is not None:
                body[key] = value
        result: dict[str, Any] = self.request("POST", f"{_grp(name)}/rollout", json_body=body)
        return result

    def run_eval(
        self: _Requester, target: str, eval_set: str, *, min_pass: float | None = None
    ) -> dict[str, Any]:
        """Run an eval set (JSONL text) on a service or ``group.member``'s direct endpoint."""
        body: dict[str, Any] = {"target": target, "eval_set": eval_set}
        if min_pass is not None:
            body["min_pass"] = min_pass
        result: dict[str, Any] = self.request("POST", "/api/v1/eval", json_body=body)
        return result

    def rollout(self: _Requester, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"{_grp(name)}/rollout")
        return result

    def rollout_command(self: _Requester, name: str, what: str) -> dict[str, Any]:
        """``pause``, ``resume`` or ``abort`` (abort restores the routes of before the rollout)."""
        result: dict[str, Any] = self.request("POST", f"{_grp(name)}/rollout/{what}")
        return result
