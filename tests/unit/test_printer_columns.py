"""`kubectl get` columns of the generated CRDs, checked together with the values the operator writes.

A column's type decides how the API server formats the value (see tests/printer_columns.py): a
`date` column prints an age, `<invalid>` for a future instant, so a column's type and the format
of the status field it shows are only right together.
"""

from __future__ import annotations

import pathlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import jsonschema
import pytest
import yaml
from tests import printer_columns

from llmkeys_operator import api, compile, keysecret, reconcile

REPO = pathlib.Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)


def crd(kind: str) -> dict[str, Any]:
    for path in sorted((REPO / "crds").glob("*.yaml")):
        loaded: dict[str, Any] = yaml.safe_load(path.read_text())
        if loaded["spec"]["names"]["kind"] == kind:
            return loaded
    raise AssertionError(f"no CRD for {kind}")


def active_key(expires_at: datetime | None) -> dict[str, Any]:
    """A VirtualKey with the status the operator writes for an active, issued key."""
    body = {
        "apiVersion": "llmkeys.io/v1alpha1",
        "kind": "VirtualKey",
        "metadata": {
            "name": "support-agent",
            "namespace": "support",
            "uid": "uid-1",
            "generation": 2,
            "creationTimestamp": reconcile.format_time(NOW - timedelta(minutes=2)),
        },
        "spec": {"owner": {"team": "support"}},
    }
    entry = reconcile.index_virtual_key(body)
    effective = api.EffectiveLimits(
        models=["gpt-5.4-mini", "claude-haiku-4-5*"],
        limits=api.Limits(requests_per_minute=60, spend_per_month_usd=Decimal("150")),
    )
    outcome = compile.KeyOutcome(
        reason="Active",
        ready=True,
        message="active",
        expires_at=expires_at,
        effective=effective,
        conditions=(
            compile.ConditionContent("Ready", "True", "Active", "the key is active"),
            compile.ConditionContent("PolicyCompliant", "True", "Compliant", "ok"),
        ),
        policies=[],
        emitted=True,
    )
    material = keysecret.issue(NOW)
    issued = compile.IssuedKey(material.key_id, material.hashes(NOW), material.issued_at)
    status = reconcile.key_status(entry, outcome, issued, "support-agent-llm-key", None, None, NOW)
    usage = api.UsageByPeriod(month=api.Usage(period_start=NOW.replace(day=1, hour=0), spend_usd="0.4213"))
    status["usage"] = usage.model_dump(mode="json", by_alias=True, exclude_none=True)
    body["status"] = {k: v for k, v in status.items() if v is not None}
    return body


def test_a_key_that_has_not_expired_prints_its_expiry_time() -> None:
    expiry = NOW + timedelta(days=83)
    key = active_key(expiry)
    # What the operator writes is valid under the CRD's own status schema.
    status_schema = crd("VirtualKey")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    jsonschema.Draft7Validator(status_schema["status"]).validate(key["status"])

    printed = printer_columns.row(crd("VirtualKey"), key, NOW)
    assert printed["Expires"] == "2027-02-25T12:00:00Z"
    assert datetime.fromisoformat(printed["Expires"].replace("Z", "+00:00")) == expiry
    expected = {
        "Ready": "True",
        "Reason": "Active",
        "Team": "support",
        "Models": '["gpt-5.4-mini","claude-haiku-4-5*"]',
        "RPM": "60",
        "Spend": "0.4213",
        "Cap": "150",
        "Expires": "2027-02-25T12:00:00Z",
        "Age": "2m",
        "KeyID": key["status"]["keyId"],
    }
    assert {name: printed[name] for name in expected} == expected


def test_a_column_prints_none_only_where_the_object_lacks_the_field() -> None:
    """`<none>` for a present value means the column's type does not fit the value written."""
    definition = crd("VirtualKey")
    columns = definition["spec"]["versions"][0]["additionalPrinterColumns"]
    for expiry in (None, NOW + timedelta(days=1)):
        key = active_key(expiry)
        printed = printer_columns.row(definition, key, NOW)
        for column in columns:
            present = [v for v in printer_columns.find(key, column["jsonPath"]) if v is not None]
            assert (printed[column["name"]] == "<none>") == (not present), column["name"]
        assert (printed["Expires"] == "<none>") == (expiry is None)


def test_printer_columns_of_every_kind_resolve_to_fields_of_the_schema() -> None:
    """A column pointing at a field the schema lacks (a typo, a rename) prints <none> forever."""
    for kind in ("VirtualKey", "ProviderCredential", "LLMPolicy"):
        definition = crd(kind)
        version = definition["spec"]["versions"][0]
        schema = version["schema"]["openAPIV3Schema"]
        for column in version["additionalPrinterColumns"]:
            node: dict[str, Any] = schema
            for part in column["jsonPath"].replace('[?(@.type=="Ready")]', "[]").strip(".").split("."):
                name = part.removesuffix("[]")
                if name == "metadata":
                    break
                node = node["properties"][name]
                if part.endswith("[]"):
                    node = node["items"]
            else:
                expected = {"date": "string", "integer": "integer", "number": "number", "boolean": "boolean"}
                if column["type"] in expected:
                    assert node.get("type") == expected[column["type"]], (kind, column["name"])
                # A date column only for instants in the past (an age); a future one prints <invalid>.
                if column["type"] == "date":
                    assert column["jsonPath"] == ".metadata.creationTimestamp", (kind, column["name"])


@pytest.mark.parametrize(
    ("seconds", "printed"),
    [
        (-5, "<invalid>"),
        (-1, "0s"),
        (59, "59s"),
        (150, "2m30s"),
        (600, "10m"),
        (3 * 3600 + 120, "3h2m"),
        (30 * 3600, "30h"),
        (3 * 86400 + 3600, "3d1h"),
        (400 * 86400, "400d"),
        (3 * 365 * 86400 + 86400, "3y1d"),
    ],
)
def test_date_columns_print_an_age_and_a_future_instant_is_invalid(seconds: int, printed: str) -> None:
    column = {"name": "At", "type": "date", "jsonPath": ".at"}
    at = reconcile.format_time(NOW - timedelta(seconds=seconds))
    assert printer_columns.cell(column, {"at": at}, NOW) == printed


def test_cells_keep_only_values_of_their_column_type() -> None:
    def show(kind: str, value: Any) -> str:
        return printer_columns.cell({"name": "X", "type": kind, "jsonPath": ".x"}, {"x": value}, NOW)

    assert show("integer", "60") == "<none>"  # a string in an integer column is dropped
    assert show("integer", 60) == "60"
    assert show("string", 150) == "150"
    assert show("string", 1e6) == "1000000"  # integral JSON numbers decode as int64
    assert show("string", 0.5e-5) == "5e-06"
    assert show("string", 1234567.5) == "1.2345675e+06"
    assert show("string", ["a", "b"]) == '["a","b"]'
    assert show("date", "tomorrow") == "<invalid>"
    assert show("boolean", True) == "true"
