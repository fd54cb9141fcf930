"""The OpenAPI 3.1 description of the HTTP API, built from the event models.

`python -m edge_inspector.api.openapi` prints it; the committed `openapi.json` is that output
(a test keeps the two, and the server's routes, the same).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import __version__
from ..commands import (
    EnabledBody,
    InspectCommand,
    MissedDefectBody,
    ResolveBody,
    ThresholdBody,
    VerdictBody,
)
from ..events import ActionRecord, Incident, InspectionResult, OperatorAlert, StationState

REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": {"$ref": "#/components/responses/BadRequest"},
    "401": {"$ref": "#/components/responses/Unauthorized"},
}
NOT_FOUND = {"404": {"$ref": "#/components/responses/NotFound"}}
REFUSED = {"409": {"$ref": "#/components/responses/Refused"}}


def _param(name: str, where: str, schema: dict[str, Any], description: str, **kw: Any) -> Any:
    return {"name": name, "in": where, "schema": schema, "description": description, **kw}


STATION = _param("station_id", "path", {"type": "string"}, "The station's id.", required=True)
INCIDENT = _param("incident_id", "path", {"type": "string"}, "The incident's id.", required=True)
PAGING = [
    _param("station_id", "query", {"type": "string"}, "Only this station."),
    _param("since", "query", {"type": "string", "format": "date-time"}, "From (ISO 8601)."),
    _param("until", "query", {"type": "string", "format": "date-time"}, "Before (ISO 8601)."),
    _param(
        "limit",
        "query",
        {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
        "Page size.",
    ),
    _param("offset", "query", {"type": "integer", "minimum": 0, "default": 0}, "Skip this many."),
]


def _body(model: type[BaseModel]) -> dict[str, Any]:
    """A JSON request body: the command model's own schema (what the server validates)."""
    schema = model.model_json_schema(mode="validation")
    schema.pop("title", None)
    return {
        "required": bool(schema.get("required")),
        "content": {"application/json": {"schema": schema}},
    }


def build() -> dict[str, Any]:
    _, defs = models_json_schema(
        [
            (InspectionResult, "serialization"),
            (Incident, "serialization"),
            (StationState, "serialization"),
            (ActionRecord, "serialization"),
            (OperatorAlert, "serialization"),
        ],
        ref_template=REF,
    )
    schemas: dict[str, Any] = dict(defs["$defs"])
    schemas["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    }
    schemas["InspectionSummary"] = {
        "type": "object",
        "required": ["inspection_id", "station_id", "timestamp", "verdict"],
        "properties": {
            "inspection_id": {"type": "string"},
            "station_id": {"type": "string"},
            "timestamp": {"type": "string", "format": "date-time"},
            "verdict": {"enum": ["pass", "fail"]},
            "part_id": {"type": ["string", "null"]},
            "lot_id": {"type": ["string", "null"]},
            "defect_classes": {"type": "array", "items": {"type": "string"}},
            "detections": {"type": "integer"},
            "latency_ms": {"type": "number"},
            "detail": {
                "type": "boolean",
                "description": "The full record is kept (GET /api/inspections/{id}).",
            },
        },
    }
    count = {"type": "integer", "minimum": 0}
    schemas["Stats"] = {
        "type": "object",
        "required": ["inspections", "failed", "by_class", "feedback"],
        "properties": {
            "inspections": count,
            "failed": count,
            "by_class": {"type": "object", "additionalProperties": count},
            "feedback": {
                "type": "object",
                "required": ["confirmed", "rejected", "missed"],
                "properties": {"confirmed": count, "rejected": count, "missed": count},
            },
        },
    }
    schemas["Series"] = {
        "type": "object",
        "required": ["bucket_s", "points"],
        "properties": {
            "bucket_s": {"type": "integer"},
            "points": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["start", "inspections", "failed", "incidents"],
                    "properties": {
                        "start": {"type": "string", "format": "date-time"},
                        "inspections": count,
                        "failed": count,
                        "incidents": count,
                    },
                },
            },
        },
    }
    schemas["ManualResults"] = {
        "type": "object",
        "required": ["indexed", "results"],
        "properties": {
            "indexed": {"type": "boolean"},
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["reference", "file", "section", "excerpt"],
                    "properties": {
                        "reference": {"type": "string"},
                        "file": {"type": "string"},
                        "section": {"type": "string"},
                        "page": {"type": ["integer", "null"]},
                        "excerpt": {"type": "string"},
                        "score": {"type": "number"},
                    },
                },
            },
        },
    }
    schemas["Health"] = {
        "type": "object",
        "required": ["status", "version", "stations"],
        "properties": {
            "status": {"enum": ["ok", "degraded"]},
            "version": {"type": "string"},
            "uptime_s": {"type": "number"},
            "stations": {"type": "object", "additionalProperties": {"type": "string"}},
            "vlm": {"enum": ["ok", "degraded", None]},
            "vlm_detail": {
                "description": "The VLM stage (null: none configured).",
                "type": ["object", "null"],
                "properties": {
                    "error": {"type": ["string", "null"]},
                    "model_missing": {
                        "type": "boolean",
                        "description": "The Ollama server lacks the configured model.",
                    },
                    "breaker": {"enum": ["closed", "open", "half_open", None]},
                    "queue_depth": {"type": ["integer", "null"]},
                    "enriched": {"type": ["integer", "null"]},
                },
            },
            "mqtt": {"enum": ["connected", "disconnected", None]},
        },
    }

    def error(description: str) -> dict[str, Any]:
        return _json(_ref("Error"), description)

    jpeg = {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}
    paths: dict[str, Any] = {
        "/api/health": {
            "get": {
                "summary": "Liveness and what is degraded (no token needed)",
                "security": [],
                "responses": {"200": _json(_ref("Health"))},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition format)",
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": ERRORS["401"],
                },
            }
        },
        "/api/openapi.json": {
            "get": {
                "summary": "This description (no token needed)",
                "security": [],
                "responses": {"200": _json({"type": "object"})},
            }
        },
        "/api/stations": {
            "get": {
                "summary": "Every station's state",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["stations"],
                            "properties": {
                                "stations": {"type": "array", "items": _ref("StationState")}
                            },
                        }
                    ),
                    "401": ERRORS["401"],
                },
            }
        },
        "/api/stations/{station_id}": {
            "get": {
                "summary": "One station's state",
                "parameters": [STATION],
                "responses": {"200": _json(_ref("StationState")), **ERRORS, **NOT_FOUND},
            }
        },
        "/api/stations/{station_id}/enabled": {
            "post": {
                "summary": "Pause or resume inspection",
                "parameters": [STATION],
                "requestBody": _body(EnabledBody),
                "responses": {"200": _json(_ref("StationState")), **ERRORS, **NOT_FOUND},
            }
        },
        "/api/stations/{station_id}/thresholds": {
            "post": {
                "summary": "Set a defect class's confidence threshold (no class: every class)",
                "parameters": [STATION],
                "requestBody": _body(ThresholdBody),
                "responses": {"200": _json(_ref("StationState")), **ERRORS, **NOT_FOUND},
            }
        },
        "/api/stations/{station_id}/inspect": {
            "post": {
                "summary": "Inspect a fresh frame from the station's camera now",
                "parameters": [STATION],
                "requestBody": _body(InspectCommand),
                "responses": {
                    "200": _json(_ref("InspectionResult")),
                    **ERRORS,
                    **NOT_FOUND,
                    **REFUSED,
                },
            }
        },
        "/api/stations/{station_id}/frames": {
            "post": {
                "summary": "Inspect a picture sent in the body (stations with a `push` source)",
                "parameters": [
                    STATION,
                    _param("part_id", "query", {"type": "string"}, "The part's id."),
                    _param("lot_id", "query", {"type": "string"}, "The lot's id."),
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                        "image/png": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                "responses": {
                    "200": _json(_ref("InspectionResult")),
                    **ERRORS,
                    **NOT_FOUND,
                    **REFUSED,
                    "422": error("Not a picture"),
                },
            }
        },
        "/api/stations/{station_id}/snapshot.jpg": {
            "get": {
                "summary": "The last inspected frame with its boxes and labels",
                "parameters": [STATION],
                "responses": {
                    "200": {"description": "JPEG", **jpeg},
                    "401": ERRORS["401"],
                    **NOT_FOUND,
                },
            }
        },
        "/api/stations/{station_id}/stream.mjpeg": {
            "get": {
                "summary": "The annotated live view (MJPEG, multipart/x-mixed-replace)",
                "parameters": [STATION],
                "responses": {
                    "200": {
                        "description": "MJPEG stream",
                        "content": {"multipart/x-mixed-replace": {"schema": {"type": "string"}}},
                    },
                    "401": ERRORS["401"],
                    **NOT_FOUND,
                },
            }
        },
        "/api/inspections": {
            "get": {
                "summary": "Inspections, newest first (paged)",
                "parameters": [
                    *PAGING,
                    _param("verdict", "query", {"enum": ["pass", "fail"]}, "Only this verdict."),
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["inspections", "limit", "offset"],
                            "properties": {
                                "inspections": {
                                    "type": "array",
                                    "items": _ref("InspectionSummary"),
                                },
                                "limit": {"type": "integer"},
                                "offset": {"type": "integer"},
                            },
                        }
                    ),
                    **ERRORS,
                },
            }
        },
        "/api/inspections/{inspection_id}": {
            "get": {
                "summary": "One inspection's full record (kept for failures and parts with ids)",
                "parameters": [
                    _param("inspection_id", "path", {"type": "string"}, "Its id.", required=True)
                ],
                "responses": {"200": _json(_ref("InspectionResult")), **ERRORS, **NOT_FOUND},
            }
        },
        "/api/incidents": {
            "post": {
                "summary": "Report a defect a person found that the station passed",
                "requestBody": _body(MissedDefectBody),
                "responses": {
                    "201": _json(_ref("Incident"), "Recorded (a confirmed, missed incident)"),
                    **ERRORS,
                    **NOT_FOUND,
                },
            },
            "get": {
                "summary": "Incidents, newest first (paged)",
                "parameters": PAGING,
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["incidents", "limit", "offset"],
                            "properties": {
                                "incidents": {"type": "array", "items": _ref("Incident")},
                                "limit": {"type": "integer"},
                                "offset": {"type": "integer"},
                            },
                        }
                    ),
                    **ERRORS,
                },
            },
        },
        "/api/stats": {
            "get": {
                "summary": "Counts in a time range: inspections, failures, incidents by class, "
                "operators' verdicts",
                "parameters": PAGING[:3],
                "responses": {"200": _json(_ref("Stats")), **ERRORS},
            }
        },
        "/api/stats/series": {
            "get": {
                "summary": "Inspections, failures and incidents per time bucket",
                "parameters": [
                    *PAGING[:3],
                    _param(
                        "bucket_s",
                        "query",
                        {"type": "integer", "minimum": 10, "maximum": 86400, "default": 900},
                        "Bucket length in seconds.",
                    ),
                ],
                "responses": {"200": _json(_ref("Series")), **ERRORS},
            }
        },
        "/api/manuals/search": {
            "get": {
                "summary": "Search the equipment manuals",
                "parameters": [
                    _param("q", "query", {"type": "string"}, "What to look for.", required=True),
                    _param(
                        "limit",
                        "query",
                        {"type": "integer", "minimum": 1, "maximum": 20, "default": 3},
                        "How many passages.",
                    ),
                ],
                "responses": {"200": _json(_ref("ManualResults")), **ERRORS},
            }
        },
        "/api/incidents/{incident_id}": {
            "get": {
                "summary": "One incident, with the VLM's report and actions",
                "parameters": [INCIDENT],
                "responses": {"200": _json(_ref("Incident")), **ERRORS, **NOT_FOUND},
            }
        },
        "/api/incidents/{incident_id}/images/{kind}": {
            "get": {
                "summary": "An incident's annotated frame, crop or raw frame",
                "parameters": [
                    INCIDENT,
                    _param(
                        "kind", "path", {"enum": ["frame", "crop", "raw"]}, "Which.", required=True
                    ),
                ],
                "responses": {
                    "200": {"description": "JPEG", **jpeg},
                    "401": ERRORS["401"],
                    **NOT_FOUND,
                },
            }
        },
        "/api/incidents/{incident_id}/verdict": {
            "post": {
                "summary": "An operator's verdict (kept in the incident's audit trail)",
                "parameters": [INCIDENT],
                "requestBody": _body(VerdictBody),
                "responses": {"200": _json(_ref("Incident")), **ERRORS, **NOT_FOUND},
            }
        },
        "/api/incidents/{incident_id}/actions/{request_id}": {
            "post": {
                "summary": "Run or decline an action the VLM asked a person to confirm",
                "parameters": [
                    INCIDENT,
                    _param("request_id", "path", {"type": "string"}, "The request.", required=True),
                ],
                "requestBody": _body(ResolveBody),
                "responses": {"200": _json(_ref("ActionRecord")), **ERRORS, **REFUSED},
            }
        },
        "/api/ws": {
            "get": {
                "summary": "Live events over a websocket",
                "description": 'Messages are JSON `{"type": ..., "data": ...}` with type '
                "`inspection` (InspectionResult), `incident` and `incident_update` (Incident), "
                "`missed_defect` (Incident: a defect a person reported that a station passed), "
                "`station_state` (StationState), `alert` (OperatorAlert). On connecting: every "
                "station's state, then with `since` the incidents stored since then (each with "
                '`replay: true`), then `{"type": "ready"}`. A client too slow to keep up '
                "(1000 messages behind, or one message not taken in 10 s) is closed with code "
                "1013 and reconnects with `since`. A client connected with "
                "`actions=1` (Home Assistant in remote mode) carries out the engine's `service` "
                'actions: it gets `{"type": "action_call", "data": {call_id, action, '
                'arguments, context}}` and answers `{"type": "action_result", "call_id", '
                '"ok", "result" | "error"}`.',
                "parameters": [
                    _param(
                        "events",
                        "query",
                        {"type": "string"},
                        "Comma-separated types to receive (default: all).",
                    ),
                    _param(
                        "since",
                        "query",
                        {"type": "string", "format": "date-time"},
                        "Replay the incidents stored since then first.",
                    ),
                    _param(
                        "actions",
                        "query",
                        {"enum": ["0", "1"]},
                        "1: this client carries out `service` actions (Home Assistant).",
                    ),
                ],
                "responses": {
                    "101": {"description": "Switching to the websocket protocol"},
                    **ERRORS,
                },
            }
        },
    }
    for operations in paths.values():
        for operation in operations.values():
            responses = operation["responses"]
            # every request: another site's page (Origin), or an unknown Host without a token
            responses["403"] = {"$ref": "#/components/responses/Forbidden"}
            if "requestBody" in operation and "application/json" in operation["requestBody"].get(
                "content", {}
            ):
                responses["413"] = {"$ref": "#/components/responses/TooLarge"}
                responses["415"] = {"$ref": "#/components/responses/NotJson"}
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
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "http.token (needed when the API is bound beyond loopback); "
                    "`?token=` works too, for clients that cannot set headers.",
                }
            },
            "responses": {
                "BadRequest": error("The request is malformed"),
                "Unauthorized": error("No valid bearer token"),
                "NotFound": error("No such station, incident or image"),
                "Refused": error("The engine refuses (station disabled, not a push station...)"),
                "Forbidden": error(
                    "Another site's page (its Origin is not this server), or a Host that is not "
                    "an address or localhost while no token is set (DNS rebinding)"
                ),
                "TooLarge": error("The body is larger than the route takes"),
                "NotJson": error("The body is not sent as application/json"),
            },
        },
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    print(render(), end="")
