"""OpenAPI 3.1 built from the route registry's pydantic models."""

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from cloud.http.registry import Endpoint
from cloud.models.common import ErrorEnvelope

_REF = "#/components/schemas/{model}"
_PATH_PARAM = re.compile(r"{([^}]+)}")
_ERRORS = {
    "400": "Validation error",
    "401": "Not authenticated",
    "403": "Not permitted",
    "404": "Not found",
    "409": "Conflict",
}


def build_openapi(endpoints: list[Endpoint], title: str, version: str) -> dict[str, Any]:
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorEnvelope, "serialization")]
    for ep in endpoints:
        if ep.body is not None:
            wanted.append((ep.body, "validation"))
        if ep.response is not None:
            wanted.append((ep.response, "serialization"))
    unique = list(dict.fromkeys(wanted))
    refs, defs = models_json_schema(unique, ref_template=_REF)
    error_ref = refs[(ErrorEnvelope, "serialization")]

    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        op: dict[str, Any] = {
            "summary": ep.summary,
            "tags": [ep.tag],
            "operationId": ep.handler.__name__,
        }
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PATH_PARAM.findall(ep.path)
        ]
        if ep.query is not None:
            schema = ep.query.model_json_schema(ref_template=_REF)
            required = set(schema.get("required", []))
            for name, prop in schema.get("properties", {}).items():
                params.append(
                    {"name": name, "in": "query", "required": name in required, "schema": prop}
                )
        if params:
            op["parameters"] = params
        if ep.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[(ep.body, "validation")]}},
            }
        data: dict[str, Any] = {}
        if ep.response is not None:
            ref = refs[(ep.response, "serialization")]
            data = {"type": "array", "items": ref} if ep.many else ref
        success = {
            "type": "object",
            "required": ["success", "data"],
            "properties": {"success": {"const": True}, "data": data},
        }
        responses: dict[str, Any] = {
            str(ep.status): {
                "description": "Success",
                "content": {"application/json": {"schema": success}},
            }
        }
        for status, text in _ERRORS.items():
            if status == "401" and ep.public and ep.body is None:
                continue
            responses[status] = {
                "description": text,
                "content": {"application/json": {"schema": error_ref}},
            }
        op["responses"] = responses
        if not ep.public:
            op["security"] = [{"bearerAuth": []}]
        paths.setdefault(ep.path, {})[ep.method.lower()] = op

    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
