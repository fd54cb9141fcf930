"""Commands from clients, read strictly: one definition for the HTTP API and the MQTT topics.

A command arrives as bytes (an HTTP body, an MQTT payload) and is refused, with a message that
says why, unless it is a JSON object of bounded size and depth whose fields have exactly the
types they are documented with: no string-to-number or number-to-boolean coercion, no unknown
fields, strings of bounded length, thresholds within `MIN_THRESHOLD`..1. `InputError` carries
the refusal; the HTTP API answers it with a 4xx, the MQTT bridge on `<base>/<station>/error`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .config import MIN_THRESHOLD
from .errors import InputError

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "ConfirmCommand",
    "EnabledBody",
    "InputError",
    "InspectCommand",
    "MissedDefectBody",
    "RefusalLog",
    "ResolveBody",
    "SetCommand",
    "ThresholdBody",
    "VerdictBody",
    "parse_command",
    "parse_object",
]

MAX_BODY_BYTES = 64 * 1024  # far more than any command needs
MAX_DEPTH = 4  # {"thresholds": {"scratch": 0.5}} is 2
_MAX_INT_DIGITS = 18

# Plain aliases, not `type` statements: their JSON Schema is inlined in the OpenAPI document
# instead of becoming a `$defs` entry it cannot point to.
PartId = Annotated[str, Field(min_length=1, max_length=128)]
Person = Annotated[str, Field(min_length=1, max_length=100)]
Note = Annotated[str, Field(max_length=500)]
Name = Annotated[str, Field(min_length=1, max_length=64)]
Confidence = Annotated[float, Field(ge=MIN_THRESHOLD, le=1.0)]  # as config.Threshold


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, populate_by_name=True)


class EnabledBody(_Strict):
    """`POST /api/stations/{id}/enabled`."""

    enabled: bool


class ThresholdBody(_Strict):
    """`POST /api/stations/{id}/thresholds`: one class, or every class when `class` is absent."""

    class_name: Name | None = Field(default=None, alias="class")
    confidence: Confidence


class InspectCommand(_Strict):
    """`POST /api/stations/{id}/inspect` and `<base>/<station>/inspect`: inspect now."""

    part_id: PartId | None = None
    lot_id: PartId | None = None


class SetCommand(_Strict):
    """`<base>/<station>/set`: any of enabled, one threshold for every class, or per class."""

    enabled: bool | None = None
    threshold: Confidence | None = None
    thresholds: Annotated[dict[Name, Confidence], Field(max_length=64)] | None = None

    @model_validator(mode="after")
    def _something(self) -> SetCommand:
        if self.enabled is None and self.threshold is None and not self.thresholds:
            raise ValueError("expected at least one of enabled, threshold, thresholds")
        return self


class ConfirmCommand(_Strict):
    """`<base>/<station>/confirm`: a human approves or declines an action the VLM asked for."""

    incident_id: Annotated[str, Field(min_length=1, max_length=64)]
    request_id: Annotated[str, Field(min_length=1, max_length=64)]
    approve: bool
    by: Person = "mqtt"


class ResolveBody(_Strict):
    """`POST /api/incidents/{id}/actions/{request_id}`."""

    approve: bool
    by: Person = "api"


class VerdictBody(_Strict):
    """`POST /api/incidents/{id}/verdict`."""

    state: Literal["acknowledged", "confirmed", "rejected"] = "acknowledged"
    by: Person = "api"
    note: Note | None = None


class MissedDefectBody(_Strict):
    """`POST /api/incidents`: a defect a person found that a station passed."""

    station_id: Name
    defect_class: Name
    by: Person = "api"
    part_id: PartId | None = None
    lot_id: PartId | None = None
    note: Note | None = None


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise InputError(f"a number of {len(text)} digits", code="invalid_json")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InputError(f"{text[:20]!r} is out of range", code="invalid_json")
    return value


def _no_constant(text: str) -> Any:
    raise InputError(f"{text} is not a number JSON allows", code="invalid_json")


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def parse_object(raw: bytes, *, max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """A JSON object of at most `max_bytes`, nested at most `MAX_DEPTH` deep, with integers of
    at most 18 digits and finite numbers; empty input is `{}`. Refused with `InputError`."""
    if len(raw) > max_bytes:
        raise InputError(
            f"{len(raw)} bytes: a command is at most {max_bytes} bytes",
            code="too_large",
            status=413,
        )
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
        data = json.loads(
            text,
            parse_int=_bounded_int,
            parse_float=_finite_float,
            parse_constant=_no_constant,
        )
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text", code="invalid_json") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise InputError(f"nested more than {MAX_DEPTH} deep", code="invalid_json") from None
    if _depth(data) > MAX_DEPTH:
        raise InputError(f"nested more than {MAX_DEPTH} deep", code="invalid_json")
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", code="invalid_json")
    return data


def parse_command[M: BaseModel](model: type[M], data: dict[str, Any]) -> M:
    """`data` as `model`, strictly; the refusal names each field and what was wrong."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}" for e in exc.errors()
        )
        raise InputError(problems) from None


class RefusalLog:
    """Warnings for refused commands, at most `burst` a `window_s`; the rest are counted and
    the count logged when the next window opens (a flood of bad commands is not a flood of
    log lines)."""

    def __init__(self, logger: logging.Logger, *, burst: int = 10, window_s: float = 60.0) -> None:
        self._logger = logger
        self._burst = burst
        self._window_s = window_s
        self._opened = -math.inf
        self._logged = 0
        self.suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._opened >= self._window_s:
            if self.suppressed:
                self._logger.warning(
                    "%d more refused commands in the last %.0f s were not logged",
                    self.suppressed,
                    now - self._opened,
                )
            self._opened, self._logged, self.suppressed = now, 0, 0
        if self._logged < self._burst:
            self._logged += 1
            self._logger.warning(message, *args)
        else:
            self.suppressed += 1
