"""OpenAPI 3.1 pieces shared by the cloud API and the gateway's kiosk API: both documents are
built the same way, from the pydantic models that validate the requests and responses, and state
the same validation rules (``RULES``), so neither document can promise what its server refuses.

Each server keeps its own route table; this module only turns models and statuses into the
document's parts.
"""

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, WithJsonSchema
from pydantic.json_schema import (
    GenerateJsonSchema,
    JsonSchemaMode,
    JsonSchemaValue,
    models_json_schema,
)
from pydantic_core import core_schema

from contracts.numbers import INTEGER_RULE
from contracts.text import PRINTABLE_PATTERN

REF_TEMPLATE = "#/components/schemas/{model}"
ERROR_REF = REF_TEMPLATE.format(model="ErrorEnvelope")
NUL_FREE_PATTERN = r"^[^\x00]*$"
_PATH_PARAM = re.compile(r"{([^}]+)}")

STATUS_TEXT: dict[int, str] = {
    400: "Validation error (the envelope's details name each field; values are not echoed)",
    401: "Not authenticated",
    403: "Not permitted",
    404: "Not found",
    409: "Conflict",
    410: "Gone: existed once and never will again",
    413: "Request body too large",
    429: "Too many attempts; retry after the Retry-After header's seconds",
    502: "An integration (payment provider) failed",
    503: "Temporarily unavailable",
}

RULES = "\n".join(
    [
        "Rules every request is held to (each refusal is a 400 error envelope):",
        "",
        "- No string the server reads from a request (body, path or query parameter) may "
        "contain NUL (U+0000).",
        "- Fields described as printable text also refuse the control characters U+0001-U+001F "
        "and U+007F-U+009F and lone surrogates (a \\ud800-\\udfff escape that is not half of a "
        "pair); the pattern states the control-character part.",
        f"- {INTEGER_RULE}",
        "- NaN, Infinity and -Infinity are not JSON and are refused; so are unknown fields.",
        "- A method a path does not support is answered 405 with an Allow header naming the "
        "methods it does (components.responses.MethodNotAllowed).",
        "- Errors use the envelope {success: false, error: {code, message, details, timestamp, "
        "requestId}}.",
    ]
)


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str
    message: str
    details: Any = None
    timestamp: datetime
    requestId: str


class ErrorEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    success: Literal[False]
    error: ErrorBody


# Any JSON value with no NUL in any string, key or value (a free-form machine config): the
# request-wide NUL rule, stated for a field whose shape is otherwise open.
JSON_VALUE_REF = REF_TEMPLATE.format(model="NulFreeJsonValue")
JSON_VALUE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "pattern": NUL_FREE_PATTERN},
        {"type": ["number", "boolean", "null"]},
        {"type": "array", "items": {"$ref": JSON_VALUE_REF}},
        {
            "type": "object",
            "propertyNames": {"pattern": NUL_FREE_PATTERN},
            "additionalProperties": {"$ref": JSON_VALUE_REF},
        },
    ]
}
NulFreeJsonObject = Annotated[
    dict[str, Any],
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": NUL_FREE_PATTERN},
            "additionalProperties": {"$ref": JSON_VALUE_REF},
        },
        mode="validation",
    ),
]


class RequestStrings(GenerateJsonSchema):
    """Request strings refuse NUL on both servers; a request schema says so with a pattern
    unless the field states a stricter one (printable text, a phone number, a code)."""

    def str_schema(self, schema: core_schema.StringSchema) -> JsonSchemaValue:
        json_schema = super().str_schema(schema)
        if self.mode == "validation":
            json_schema.setdefault("pattern", NUL_FREE_PATTERN)
        return json_schema


ModelKey = tuple[type[BaseModel], JsonSchemaMode]


def component_schemas(
    models: Iterable[ModelKey],
) -> tuple[dict[ModelKey, JsonSchemaValue], dict[str, JsonSchemaValue]]:
    """References to each (model, mode) and the components/schemas they point into; the error
    envelope is always among them."""
    error_key: ModelKey = (ErrorEnvelope, "serialization")
    wanted: list[ModelKey] = list(dict.fromkeys([error_key, *models]))
    built, defs = models_json_schema(
        wanted, ref_template=REF_TEMPLATE, schema_generator=RequestStrings
    )
    refs = {key: built[key] for key in wanted}
    return refs, dict(defs.get("$defs", {}))


class Route(Protocol):
    """What both servers' route tables say about their models."""

    @property
    def body(self) -> type[BaseModel] | None: ...

    @property
    def response(self) -> type[BaseModel] | None: ...


def route_schemas(
    routes: Iterable[Route],
) -> tuple[dict[ModelKey, JsonSchemaValue], dict[str, JsonSchemaValue]]:
    """``component_schemas`` of every route's body (as validated) and response (as sent)."""
    wanted: list[ModelKey] = []
    for route in routes:
        if route.body is not None:
            wanted.append((route.body, "validation"))
        if route.response is not None:
            wanted.append((route.response, "serialization"))
    return component_schemas(wanted)


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF_TEMPLATE, schema_generator=RequestStrings)
    required = set(schema.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": prop}
        for name, prop in schema.get("properties", {}).items()
    ]


def path_parameters(path: str, *, printable: bool) -> list[dict[str, Any]]:
    pattern = PRINTABLE_PATTERN if printable else NUL_FREE_PATTERN
    return [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "minLength": 1, "pattern": pattern},
        }
        for name in _PATH_PARAM.findall(path)
    ]


def success_schema(data: JsonSchemaValue) -> JsonSchemaValue:
    return {
        "type": "object",
        "required": ["success", "data"],
        "properties": {"success": {"const": True}, "data": data},
    }


def json_body(schema: JsonSchemaValue) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def success_response(data: JsonSchemaValue, description: str = "Success") -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": success_schema(data)}},
    }


def error_responses(statuses: Iterable[int]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status in sorted(set(statuses)):
        response: dict[str, Any] = {
            "description": STATUS_TEXT[status],
            "content": {"application/json": {"schema": {"$ref": ERROR_REF}}},
        }
        if status == 429:
            response["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before trying again",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                }
            }
        responses[str(status)] = response
    return responses


METHOD_NOT_ALLOWED: dict[str, Any] = {
    "description": "The path exists but not with this method",
    "headers": {
        "Allow": {
            "description": "The methods the path supports, comma separated",
            "required": True,
            "schema": {"type": "string"},
        }
    },
    "content": {"application/json": {"schema": {"$ref": ERROR_REF}}},
}


def document(
    *,
    title: str,
    version: str,
    summary: str,
    paths: dict[str, dict[str, Any]],
    schemas: dict[str, JsonSchemaValue],
    security_schemes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    components: dict[str, Any] = {
        "schemas": schemas | {"NulFreeJsonValue": JSON_VALUE_SCHEMA},
        "responses": {"MethodNotAllowed": METHOD_NOT_ALLOWED},
    }
    if security_schemes:
        components["securitySchemes"] = security_schemes
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": f"{summary}\n\n{RULES}"},
        "paths": paths,
        "components": components,
    }
