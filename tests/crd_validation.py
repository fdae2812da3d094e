"""Validate manifests against the generated CRDs the way `kubectl apply --validate=strict` would.

Used by the CRD and examples tests: strict decoding (unknown fields), the openAPIV3Schema (with
the jsonschema package) and the CEL `x-kubernetes-validations` (with the common-expression-language
package), each reported with the message text the apiserver gives, so tests can assert what a
user would read.
"""

from __future__ import annotations

import datetime
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import cel
import jsonschema
import yaml

CRDS_DIR = pathlib.Path(__file__).resolve().parent.parent / "crds"


def load_schemas(crds_dir: pathlib.Path = CRDS_DIR) -> dict[str, dict[str, Any]]:
    """Kind -> openAPIV3Schema of the committed CRD files."""
    schemas = {}
    for path in sorted(crds_dir.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        schemas[crd["spec"]["names"]["kind"]] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schemas


def as_json(value: Any) -> Any:
    """YAML-decoded data as the apiserver receives it (kubectl sends JSON: timestamps are strings)."""
    if isinstance(value, dict):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json(v) for v in value]
    if isinstance(value, datetime.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, datetime.date):
        return value.isoformat()
    return value


def apply_error(manifest: dict[str, Any], schemas: dict[str, dict[str, Any]] | None = None) -> str | None:
    """What `kubectl apply --validate=strict` prints for this manifest, or None when it is accepted."""
    schemas = schemas if schemas is not None else load_schemas()
    manifest = as_json(manifest)
    kind = manifest.get("kind", "")
    if kind not in schemas:
        return f'no matches for kind "{kind}"'
    schema = schemas[kind]
    unknown = list(_unknown_fields(manifest, schema, ""))
    if unknown:
        version = manifest.get("apiVersion", "").rsplit("/", 1)[-1]
        fields = ", ".join(f'unknown field "{path}"' for path in unknown)
        return f'{kind} in version "{version}" cannot be handled as a {kind}: strict decoding error: {fields}'
    causes = [*_schema_errors(manifest, schema), *_cel_errors(manifest, schema, "")]
    if not causes:
        return None
    name = manifest.get("metadata", {}).get("name", "")
    if len(causes) == 1:
        return f'The {kind} "{name}" is invalid: {causes[0]}'
    return f'The {kind} "{name}" is invalid: \n' + "\n".join(f"* {cause}" for cause in causes)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _unknown_fields(data: Any, schema: dict[str, Any], path: str) -> Iterator[str]:
    if isinstance(data, dict) and schema.get("type") == "object":
        if "properties" in schema:
            for key, value in data.items():
                if key in schema["properties"]:
                    yield from _unknown_fields(value, schema["properties"][key], _join(path, key))
                else:
                    yield _join(path, key)
        elif isinstance(schema.get("additionalProperties"), dict):
            for key, value in data.items():
                yield from _unknown_fields(value, schema["additionalProperties"], _join(path, key))
    elif isinstance(data, list) and "items" in schema:
        for index, value in enumerate(data):
            yield from _unknown_fields(value, schema["items"], _join(path, index))


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


def _schema_errors(manifest: dict[str, Any], schema: dict[str, Any]) -> Iterator[str]:
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(
        validator.iter_errors(manifest), key=lambda e: (list(map(str, e.absolute_path)), e.validator)
    )
    for error in errors:
        path = ""
        for key in error.absolute_path:
            path = _join(path, key)
        value = error.instance
        kind = error.validator
        limit = error.validator_value
        if kind == "required":
            missing = str(error.message).split("'")[1]
            yield f"{_join(path, missing)}: Required value"
        elif kind == "type":
            actual = _json_type(value)
            yield f'{path}: Invalid value: "{actual}": {path} in body must be of type {limit}: "{actual}"'
        elif kind == "enum":
            supported = ", ".join(json.dumps(v) for v in limit)
            yield f"{path}: Unsupported value: {_show(value)}: supported values: {supported}"
        elif kind == "minimum":
            yield f"{path}: Invalid value: {value}: {path} in body should be greater than or equal to {limit}"
        elif kind == "maximum":
            yield f"{path}: Invalid value: {value}: {path} in body should be less than or equal to {limit}"
        elif kind == "pattern":
            yield f"{path}: Invalid value: {_show(value)}: {path} in body should match '{limit}'"
        elif kind == "minLength":
            shown = _show(value)
            yield f"{path}: Invalid value: {shown}: {path} in body should be at least {limit} chars long"
        elif kind == "maxLength":
            yield f"{path}: Too long: may not be more than {limit} bytes"
        elif kind in ("maxItems", "maxProperties"):
            yield f"{path}: Too many: {len(value)}: must have at most {limit} items"
        else:
            yield f"{path}: Invalid value: {_show(value)}: {error.message}"
    yield from _format_errors(manifest, schema, "")


def _format_errors(data: Any, schema: dict[str, Any], path: str) -> Iterator[str]:
    # jsonschema only checks formats with optional extras; date-time is the one the CRDs use.
    if schema.get("format") == "date-time" and isinstance(data, str):
        try:
            datetime.datetime.fromisoformat(data)
        except ValueError:
            yield f'{path}: Invalid value: "{data}": {path} in body must be of type date-time: "{data}"'
    for child, child_schema, child_path in _children(data, schema, path):
        yield from _format_errors(child, child_schema, child_path)


def _children(data: Any, schema: dict[str, Any], path: str) -> Iterator[tuple[Any, dict[str, Any], str]]:
    if isinstance(data, dict):
        for key, value in data.items():
            if key in schema.get("properties", {}):
                yield value, schema["properties"][key], _join(path, key)
            elif isinstance(schema.get("additionalProperties"), dict):
                yield value, schema["additionalProperties"], _join(path, key)
    elif isinstance(data, list) and "items" in schema:
        for index, value in enumerate(data):
            yield value, schema["items"], _join(path, index)


def _cel_errors(data: Any, schema: dict[str, Any], path: str) -> Iterator[str]:
    for child, child_schema, child_path in _children(data, schema, path):
        yield from _cel_errors(child, child_schema, child_path)
    for rule in schema.get("x-kubernetes-validations", []):
        try:
            holds = cel.evaluate(rule["rule"], {"self": data})
        except (RuntimeError, TypeError, ValueError) as exc:
            # The apiserver reports a rule that cannot evaluate as an error of that rule.
            yield f"{path or '<nil>'}: {_cel_invalid(data)}{exc} evaluating rule: {rule['message']}"
            continue
        if holds is not True:
            # The apiserver names the root `<nil>` (a rule on the whole object).
            yield f"{path or '<nil>'}: {_cel_invalid(data)}{rule['message']}"


def _cel_invalid(data: Any) -> str:
    """`Invalid value: ` plus the value as current API servers (v1.35 on) show it for a failed CEL
    rule: strings quoted, numbers and booleans as they are, objects and lists left out (older
    servers printed the type instead, e.g. `Invalid value: "object": `)."""
    if isinstance(data, (dict, list)):
        return "Invalid value: "
    if isinstance(data, bool):
        return f"Invalid value: {'true' if data else 'false'}: "
    if data is None:
        return "Invalid value: null: "
    return f"Invalid value: {_show(data)}: "
