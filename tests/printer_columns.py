"""What `kubectl get` prints for a custom resource, from its CRD's additionalPrinterColumns.

Used by the printer-column tests. Follows the API server's table conversion for custom resources
(apiextensions-apiserver `tableconvertor`): a column's JSONPath is evaluated on the object; a
`string` column prints the first result as JSONPath text (lists and maps as compact JSON, other
values with Go's `%v`); `integer`, `number` and `boolean` columns keep a value of that JSON type
and nothing else; a `date` column parses an RFC 3339 string and prints the time since then with
`duration.HumanDuration`, which is `<invalid>` for an instant more than a second in the future.
A cell without a value prints `<none>`, as kubectl does.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

NONE = "<none>"

_FILTER = re.compile(r'^\[\?\(@\.([A-Za-z0-9_]+)=="([^"]*)"\)\]')
_FIELD = re.compile(r"^\.([A-Za-z0-9_]+)")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")


def find(obj: Any, path: str) -> list[Any]:
    """Results of the simple JSONPaths CRD columns use: `.a.b` and `[?(@.k=="v")]` filters."""
    values = [obj]
    rest = path
    while rest:
        if match := _FILTER.match(rest):
            key, wanted = match.groups()
            values = [
                item
                for value in values
                if isinstance(value, list)
                for item in value
                if isinstance(item, dict) and item.get(key) == wanted
            ]
        elif match := _FIELD.match(rest):
            values = [v[match.group(1)] for v in values if isinstance(v, dict) and match.group(1) in v]
        else:
            raise ValueError(f"unsupported JSONPath {path!r} at {rest!r}")
        rest = rest[match.end() :]
    return values


def go_value(value: Any) -> str:
    """Go's `%v` of a JSON-decoded scalar (integral numbers decode as int64)."""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 2**63:
            return go_value(int(value))
        return _go_float(value)
    return str(value)


def _go_float(value: float) -> str:
    # strconv.FormatFloat(v, 'g', -1, 64): shortest digits, exponent form below 1e-4 or from 1e6 on
    # (a shortest 'g' uses precision 6 for that decision).
    if math.isinf(value) or math.isnan(value):
        return {math.inf: "+Inf", -math.inf: "-Inf"}.get(value, "NaN")
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    point = len(text) + exponent - 1  # decimal exponent of the first digit
    prefix = "-" if sign else ""
    if point < -4 or point >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if point < 0 else '+'}{abs(point):02d}"
    if point < 0:
        return f"{prefix}0.{'0' * (-point - 1)}{text}"
    whole, fraction = text[: point + 1].ljust(point + 1, "0"), text[point + 1 :]
    return f"{prefix}{whole}.{fraction}" if fraction else f"{prefix}{whole}"


def human_duration(seconds_since: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    seconds = int(seconds_since)
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 60 * 2:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        rest = seconds % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = seconds // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        rest = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if rest == 0 else f"{hours // 24 // 365}y{rest}d"
    return f"{hours // 24 // 365}y"


def cell(column: dict[str, Any], obj: dict[str, Any], now: datetime) -> str:
    """The text kubectl shows for one column of one object."""
    results = find(obj, column["jsonPath"])
    if not results or results[0] is None:
        return NONE
    value = results[0]
    kind = column["type"]
    if kind == "string":
        if isinstance(value, (list, dict)):
            return json.dumps(value, separators=(",", ":"))
        return go_value(value)
    if kind == "integer" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(int(value))
    if kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return go_value(float(value))
    if kind == "boolean" and isinstance(value, bool):
        return go_value(value)
    if kind == "date" and isinstance(value, str):
        if not _RFC3339.match(value):
            return "<invalid>"
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return human_duration((now - at).total_seconds())
    return NONE


def row(crd: dict[str, Any], obj: dict[str, Any], now: datetime | None = None) -> dict[str, str]:
    """Column name -> printed cell for the default (priority 0) and wide columns of the served version."""
    now = now or datetime.now(UTC)
    version = next(v for v in crd["spec"]["versions"] if v.get("served", True))
    return {column["name"]: cell(column, obj, now) for column in version.get("additionalPrinterColumns", [])}
