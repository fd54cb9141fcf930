"""The JSON Schema subset that tool parameters may use, and a validator for it.

Tool arguments come from a language model and are not trusted. A mapped action declares its
parameters as JSON Schema; the subset here is what small models handle and what can be checked
strictly: an object of named properties, each a string (optionally an enum, a length or a
pattern), a number or integer (optionally a range), a boolean, or an array of those.
Unknown properties are refused (an action never receives a key its author did not declare).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["SchemaError", "check_schema", "validate_arguments"]

_SCALARS = {"string", "number", "integer", "boolean"}
_KEYWORDS: dict[str, set[str]] = {
    "string": {"type", "description", "enum", "minLength", "maxLength", "pattern"},
    "number": {"type", "description", "enum", "minimum", "maximum"},
    "integer": {"type", "description", "enum", "minimum", "maximum"},
    "boolean": {"type", "description"},
    "array": {"type", "description", "items", "minItems", "maxItems"},
}


class SchemaError(ValueError):
    """A tool's parameter schema uses something outside the supported subset."""


def _check_property(name: str, spec: Any) -> None:
    if not isinstance(spec, Mapping):
        raise SchemaError(f"property {name!r}: expected a mapping, got {type(spec).__name__}")
    kind = spec.get("type")
    if kind not in _KEYWORDS:
        raise SchemaError(
            f"property {name!r}: type must be one of {', '.join(sorted(_KEYWORDS))}, got {kind!r}"
        )
    unknown = set(spec) - _KEYWORDS[kind]
    if unknown:
        raise SchemaError(f"property {name!r}: unsupported keywords {', '.join(sorted(unknown))}")
    if "pattern" in spec:
        try:
            re.compile(spec["pattern"])
        except (re.error, TypeError) as exc:
            raise SchemaError(f"property {name!r}: pattern does not compile: {exc}") from None
    if "enum" in spec and (not isinstance(spec["enum"], list) or not spec["enum"]):
        raise SchemaError(f"property {name!r}: enum must be a non-empty list")
    if kind == "array":
        items = spec.get("items")
        if not isinstance(items, Mapping) or items.get("type") not in _SCALARS:
            raise SchemaError(f"property {name!r}: items must be a scalar type")
        _check_property(f"{name}[]", items)


def check_schema(schema: Any) -> dict[str, Any]:
    """Check a parameter schema; return it normalised (`additionalProperties: false`)."""
    if not isinstance(schema, Mapping):
        raise SchemaError("parameters must be a mapping (a JSON Schema object)")
    if schema.get("type", "object") != "object":
        raise SchemaError("parameters must have type: object")
    unknown = set(schema) - {"type", "properties", "required", "additionalProperties"}
    if unknown:
        raise SchemaError(f"unsupported keywords {', '.join(sorted(unknown))}")
    if schema.get("additionalProperties", False) is not False:
        raise SchemaError("additionalProperties must be false (or left out)")
    properties = schema.get("properties", {})
    if not isinstance(properties, Mapping):
        raise SchemaError("properties must be a mapping")
    for name, spec in properties.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name):
            raise SchemaError(f"property name {name!r} is not a plain identifier")
        _check_property(name, spec)
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise SchemaError("required must be a list of property names")
    missing = [r for r in required if r not in properties]
    if missing:
        raise SchemaError(f"required names undeclared properties: {', '.join(missing)}")
    return {
        "type": "object",
        "properties": {k: dict(v) for k, v in properties.items()},
        "required": list(required),
        "additionalProperties": False,
    }


def _boolean_errors(path: str, spec: Mapping[str, Any], value: Any) -> list[str]:
    return [] if isinstance(value, bool) else [f"{path}: expected true or false"]


def _number_type_error(path: str, kind: str, value: Any) -> str | None:
    """Why `value` is not a finite number of `kind` (an integral float counts as an integer)."""
    # bool is a subclass of int, but true is not 1 to the author of a schema.
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "integer" and numeric and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not numeric or (kind == "integer" and not isinstance(value, int)):
        return f"{path}: expected {'an integer' if kind == 'integer' else 'a number'}"
    if not math.isfinite(value):
        return f"{path}: expected a finite number"
    return None


def _number_errors(path: str, spec: Mapping[str, Any], value: Any) -> list[str]:
    wrong_type = _number_type_error(path, spec["type"], value)
    if wrong_type is not None:
        return [wrong_type]
    errors = []
    if "minimum" in spec and value < spec["minimum"]:
        errors.append(f"{path}: must be at least {spec['minimum']}")
    if "maximum" in spec and value > spec["maximum"]:
        errors.append(f"{path}: must be at most {spec['maximum']}")
    if "enum" in spec and value not in spec["enum"]:
        errors.append(f"{path}: must be one of {spec['enum']}")
    return errors


def _string_errors(path: str, spec: Mapping[str, Any], value: Any) -> list[str]:
    if not isinstance(value, str):
        return [f"{path}: expected a string"]
    errors = []
    if "enum" in spec and value not in spec["enum"]:
        errors.append(f"{path}: must be one of {', '.join(map(str, spec['enum']))}")
    if len(value) < spec.get("minLength", 0):
        errors.append(f"{path}: shorter than {spec['minLength']} characters")
    if len(value) > spec.get("maxLength", 2000):
        errors.append(f"{path}: longer than {spec.get('maxLength', 2000)} characters")
    if "pattern" in spec and not re.search(spec["pattern"], value):
        errors.append(f"{path}: does not match {spec['pattern']}")
    return errors


def _array_errors(path: str, spec: Mapping[str, Any], value: Any) -> list[str]:
    if not isinstance(value, list):
        return [f"{path}: expected a list"]
    errors = []
    if len(value) < spec.get("minItems", 0):
        errors.append(f"{path}: fewer than {spec['minItems']} items")
    if len(value) > spec.get("maxItems", 100):
        errors.append(f"{path}: more than {spec.get('maxItems', 100)} items")
    for i, item in enumerate(value[:100]):
        errors.extend(_value_errors(f"{path}[{i}]", spec["items"], item))
    return errors


_CHECKERS: dict[str, Callable[[str, Mapping[str, Any], Any], list[str]]] = {
    "boolean": _boolean_errors,
    "number": _number_errors,
    "integer": _number_errors,
    "string": _string_errors,
    "array": _array_errors,
}


def _value_errors(path: str, spec: Mapping[str, Any], value: Any) -> list[str]:
    # The schema was checked, so its type is one of the table's; anything else counts as an
    # array, as it always has.
    return _CHECKERS.get(spec["type"], _array_errors)(path, spec, value)


def validate_arguments(schema: Mapping[str, Any], arguments: Any) -> list[str]:
    """Every way `arguments` breaks `schema` (a checked schema); empty when it fits."""
    if not isinstance(arguments, Mapping):
        return [f"arguments must be an object, got {type(arguments).__name__}"]
    properties: Mapping[str, Any] = schema.get("properties", {})
    errors = [f"{name}: required" for name in schema.get("required", []) if name not in arguments]
    for name, value in arguments.items():
        if name not in properties:
            errors.append(f"{name}: not a parameter of this tool")
            continue
        errors.extend(_value_errors(name, properties[name], value))
    return errors
