"""The API's OpenAPI document, made true: the ServiceSpec JSON Schema as the body of create and
update (``SPEC_BODY``), 400 for invalid input (never FastAPI's 422), 401 and 404 where they apply."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from openeas.api.errors import STATUS_TEXT, ErrorBody
from openeas.spec import ServiceSpec

SPEC_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "a PAI-EAS service JSON (unknown fields are kept)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ServiceSpec"}}},
    }
}


def document_openapi(app: FastAPI) -> None:
    """Generate ``app``'s OpenAPI document once, then correct it (``_document``)."""
    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _document(base_openapi())
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def _document(schema: dict[str, Any]) -> None:
    """Make the generated OpenAPI true: validation errors are 400 (FastAPI documents 422), every
    /api/v1 route may answer 401, a route with a service name 404; the ServiceSpec schema (and its
    parts) go into components for create and update."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    spec_schema = ServiceSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in spec_schema.pop("$defs", {}).items():
        components[name] = sub
    components["ServiceSpec"] = spec_schema
    container = components.get("Container", {}).get("properties", {})
    if "env" in container:  # EAS writes a list of {name, value}; a plain mapping is accepted too
        listed = container["env"]
        container["env"] = {
            "anyOf": [
                {k: v for k, v in listed.items() if k not in ("title", "description")},
                {
                    "type": "object",
                    "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                    "additionalProperties": {
                        "anyOf": [
                            {"type": "string", "pattern": "^[^\\u0000]*$"},
                            {"type": ["number", "boolean", "null"]},
                        ]
                    },
                },
            ],
            "title": listed.get("title", "Env"),
        }
    _json_schema_bounds(components)
    error_ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    for path, ops in schema.get("paths", {}).items():
        for op in ops.values():
            responses = op.setdefault("responses", {})
            had_422 = responses.pop("422", None) is not None
            wanted = []
            if had_422:
                wanted.append(400)
            if path.startswith("/api/"):
                wanted.append(401)
            if "{name}" in path:
                wanted.append(404)
            for code in wanted:
                responses.setdefault(str(code), {"description": STATUS_TEXT[code], **error_ref})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    components.setdefault(
        "ErrorBody", ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    )


_BOUNDS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}


def _json_schema_bounds(node: Any) -> None:
    """Pydantic writes a bound on a union (`int | float`) as `gt`/`ge`: JSON Schema's names."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            if "anyOf" in n:
                for short, long in _BOUNDS.items():
                    if short in n:
                        n[long] = n.pop(short)
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)
