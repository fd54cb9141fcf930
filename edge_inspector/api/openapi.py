"""The OpenAPI 3.1 description of the HTTP API, generated from its route table (`routes.ROUTES`,
which the server registers its routes from) and the pydantic models the routes name.

`python -m edge_inspector.api.openapi` prints it; the committed `openapi.json` is that output
(a test keeps the two, and the server's routes, the same).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from .. import __version__
from .routes import ERRORS, PATH_PARAMETERS, ROUTES, Error, Media, Param, Reply, Route

REF = "#/components/schemas/{model}"
_MODE: JsonSchemaMode = "serialization"  # the answers' models, as the server sends them
_ALWAYS = frozenset({403})  # any request: another site's page, or an unknown Host without a token
_JSON_BODY = frozenset({413, 415})
type Refs = Mapping[type[BaseModel], dict[str, Any]]


def _reply(route: Route) -> Reply:
    return route.reply if isinstance(route.reply, Reply) else Reply(route.reply)


def _models() -> list[type[BaseModel]]:
    """Every model an answer names, once, in the order the routes name them."""
    found: dict[type[BaseModel], None] = {Error: None}
    for route in ROUTES:
        content = _reply(route).content
        if isinstance(content, type):
            found[content] = None
        found.update(dict.fromkeys(route.messages))
    return list(found)


def _content(content: type[BaseModel] | Media, refs: Refs) -> dict[str, Any]:
    if isinstance(content, type):
        return {"application/json": {"schema": refs[content]}}
    return {media: {"schema": dict(schema)} for media, schema in content.items()}


def _body(body: type[BaseModel] | Media) -> dict[str, Any]:
    """A request body: a command model's own schema (what the server validates), or media."""
    if not isinstance(body, type):
        return {"required": True, "content": _content(body, {})}
    schema = body.model_json_schema(mode="validation")
    schema.pop("title", None)
    return {
        "required": bool(schema.get("required")),
        "content": {"application/json": {"schema": schema}},
    }


def _parameter(param: Param, where: str) -> dict[str, Any]:
    found = {"name": param.name, "in": where, "schema": dict(param.schema)}
    required = {"required": True} if param.required or where == "path" else {}
    return {**found, "description": param.description, **required}


def _parameters(route: Route) -> list[dict[str, Any]]:
    """Its path parameters (by the names in its path), then its query parameters."""
    names = re.findall(r"\{(\w+)\}", route.path)
    if unknown := [n for n in names if n not in PATH_PARAMETERS]:
        raise ValueError(f"{route.path}: declare {unknown} in routes.PATH_PARAMETERS")
    path = [_parameter(PATH_PARAMETERS[name], "path") for name in names]
    return path + [_parameter(param, "query") for param in route.query]


def _responses(route: Route, refs: Refs) -> dict[str, Any]:
    reply = _reply(route)
    answer: dict[str, Any] = {"description": reply.description}
    if reply.content is not None:
        answer["content"] = _content(reply.content, refs)
    statuses = {*route.errors, *_ALWAYS}
    if route.auth:
        statuses.add(401)
    if isinstance(route.body, type):
        statuses |= _JSON_BODY
    if unknown := statuses - set(ERRORS):
        raise ValueError(f"{route.method} {route.path}: declare {unknown} in routes.ERRORS")
    errors = {str(s): {"$ref": f"#/components/responses/{ERRORS[s][0]}"} for s in sorted(statuses)}
    return {str(reply.status): answer, **errors}


def _operation(route: Route, refs: Refs) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": route.summary}
    if route.description:
        operation["description"] = route.description
    if not route.auth:
        operation["security"] = []  # the server lets it through without a token
    if parameters := _parameters(route):
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = _body(route.body)
    operation["responses"] = _responses(route, refs)
    return operation


def build() -> dict[str, Any]:
    models = _models()
    keys, defs = models_json_schema([(m, _MODE) for m in models], ref_template=REF)
    refs = {model: keys[(model, _MODE)] for model in models}
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method] = _operation(route, refs)
    error = _content(Error, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Edge Inspector engine",
            "version": __version__,
            "description": "The visual-inspection engine as a service: stations, inspections, "
            "incidents, commands, live events and streams, metrics.",
        },
        "servers": [{"url": "http://127.0.0.1:8321"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "http.token (needed when the API is bound beyond loopback); "
                    "`?token=` works too, for clients that cannot set headers.",
                }
            },
            "responses": {
                name: {"description": description, "content": error}
                for name, description in ERRORS.values()
            },
        },
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    print(render(), end="")
