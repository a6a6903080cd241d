"""The API's error format and its handlers: every error is ``{"error": {"code", "message",
"errors"?}}`` with a precise message; invalid input is 400 (never FastAPI's 422); the admin token
check every ``/api/v1`` route depends on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.routing import Route

from openeas.errors import OpenEASError
from openeas.spec.load import MAX_SPEC_DEPTH
from openeas.store import same


class ErrorDetail(BaseModel):
    code: str = Field(description="e.g. invalid_spec, invalid_request, unauthorized, not_found, conflict")
    message: str
    errors: list[str] | None = Field(default=None, description="one `field.path: reason` line per problem")


class ErrorBody(BaseModel):
    error: ErrorDetail


FORCE_HELP = "go ahead although the service carries, or recently carried, a group's traffic"

STATUS_TEXT = {
    400: "invalid input: `{error: {code, message, errors}}`, one `field.path: reason` line per problem",
    401: "missing or wrong admin token",
    404: "no such service (or version, or replica)",
    409: "the service exists already, is being deleted, or carries (or recently carried) a group's "
    "traffic (the 48-hour rule: add force=true)",
}

_HTTP_CODES = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route that may answer ``codes``."""
    return {c: {"model": ErrorBody, "description": STATUS_TEXT[c]} for c in codes}


def error_response(status: int, code: str, message: str, errors: list[str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if errors:
        body["errors"] = errors
    return JSONResponse({"error": body}, status_code=status)


class Unauthorized(OpenEASError):
    status = 401
    code = "unauthorized"


def admin_check(admin_token: str) -> Callable[[Request], None]:
    """The dependency that refuses a request without ``Authorization: Bearer <admin_token>``."""

    def admin(request: Request) -> None:
        # `Bearer` with nothing after it is a missing token: HTTP clients trim the trailing
        # space of `Bearer ` (newer requests/urllib3 do), so the scheme may arrive alone.
        header = request.headers.get("authorization", "").strip()
        scheme, _, rest = header.partition(" ")
        token = rest.strip() if scheme.lower() == "bearer" else header
        if not token:
            raise Unauthorized("missing admin token: send 'Authorization: Bearer <admin_token>'")
        if not same(token, admin_token):
            raise Unauthorized("wrong admin token")

    return admin


async def _our_errors(_req: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OpenEASError)
    return error_response(exc.status, exc.code, exc.message, getattr(exc, "errors", None))


async def _validation(_req: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    lines = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if p != "body"]
        where = ".".join(str(p) for p in loc) or "body"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")  # our validators' own words
        lines.append(f"{where}: {msg.lower()}")
    return error_response(400, "invalid_request", "; ".join(lines), lines)


async def _http_errors(req: Request, exc: Exception) -> JSONResponse:
    # FastAPI's own errors (a body it could not parse, an unknown route) in our error format.
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = str(exc.detail)
    if exc.status_code == 400:
        message = (
            f"body: could not be parsed as JSON (not JSON, or nested deeper than {MAX_SPEC_DEPTH} levels)"
        )
    response = error_response(exc.status_code, code, message, [message] if exc.status_code == 400 else None)
    response.headers.update(exc.headers or {})
    if exc.status_code == 405:  # every method of the path, not only the one route that matched
        methods = {
            m
            for r in req.app.routes
            if isinstance(r, Route) and r.methods and r.path_regex.match(req.url.path)
            for m in r.methods
            if m != "HEAD"
        }
        response.headers["Allow"] = ", ".join(sorted(methods))
    return response


async def _too_deep(_req: Request, _exc: Exception) -> JSONResponse:
    # A body nested too deep for the JSON parser (FastAPI parses non-spec bodies itself).
    msg = f"body: nested deeper than {MAX_SPEC_DEPTH} levels"
    return error_response(400, "invalid_request", msg, [msg])


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(OpenEASError, _our_errors)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http_errors)
    app.add_exception_handler(RecursionError, _too_deep)
