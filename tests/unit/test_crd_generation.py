"""The generated CRDs: crds/ equals the models, the schemas are structural and bounded."""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from llmkeys_operator import cli, crdgen

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_crds_directory_equals_the_models() -> None:
    rendered = crdgen.render_crds()
    on_disk = {path.name: path.read_text() for path in (REPO / "crds").glob("*.yaml")}
    assert on_disk == rendered, "crds/ drifted from llmkeys_operator/api.py: run `make crds`"


def test_rendering_is_deterministic() -> None:
    assert crdgen.render_crds() == crdgen.render_crds()


def test_cli_writes_and_checks(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "crds"
    assert cli.main(["crds", "--out", str(out), "--check"]) == 1
    assert "out of date" in capsys.readouterr().out
    assert cli.main(["crds", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(crdgen.render_crds())
    assert cli.main(["crds", "--out", str(out), "--check"]) == 0
    # An unchanged file is not rewritten (mtime-sensitive tools and GitOps diffs stay quiet).
    capsys.readouterr()
    crdgen.run(argparse.Namespace(out=str(out), check=False))
    assert "wrote" not in capsys.readouterr().out


def _crds() -> dict[str, dict[str, Any]]:
    return {
        crd["spec"]["names"]["kind"]: crd
        for crd in (yaml.safe_load(text) for text in crdgen.render_crds().values())
    }


def test_names_scope_and_subresources() -> None:
    crds = _crds()
    expected = {
        "VirtualKey": ("virtualkeys", "vk", "Namespaced"),
        "ProviderCredential": ("providercredentials", "pcred", "Namespaced"),
        "LLMPolicy": ("llmpolicies", "llmpol", "Cluster"),
    }
    assert set(crds) == set(expected)
    for kind, (plural, short, scope) in expected.items():
        spec = crds[kind]["spec"]
        assert crds[kind]["metadata"]["name"] == f"{plural}.llmkeys.io"
        assert spec["names"]["plural"] == plural
        assert spec["names"]["shortNames"] == [short]
        assert spec["names"]["categories"] == ["llmkeys"]
        assert spec["scope"] == scope
        version = spec["versions"][0]
        assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
        assert version["subresources"] == {"status": {}}


def test_virtualkey_printer_columns() -> None:
    columns = _crds()["VirtualKey"]["spec"]["versions"][0]["additionalPrinterColumns"]
    by_name = {c["name"]: c for c in columns if not c.get("priority")}
    assert list(by_name) == [
        "Ready",
        "Reason",
        "Team",
        "Owner",
        "Models",
        "RPM",
        "Spend",
        "Cap",
        "Expires",
        "Age",
    ]
    # The owner as the admission webhook stamped it (issue 10), and who created the key (wide output).
    assert by_name["Owner"]["jsonPath"] == ".spec.owner.user"
    assert {c["name"]: c["jsonPath"] for c in columns}["CreatedBy"] == ".status.createdBy"
    assert by_name["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert by_name["Reason"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].reason'
    assert by_name["Spend"]["jsonPath"] == ".status.usage.month.spendUSD"
    assert by_name["Cap"]["jsonPath"] == ".status.effective.limits.spendPerMonthUSD"


def _nodes(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}{{}}")
    if "items" in node:
        yield from _nodes(node["items"], f"{path}[]")


@pytest.mark.parametrize("kind", ["VirtualKey", "ProviderCredential", "LLMPolicy"])
def test_schemas_are_structural_and_bounded(kind: str) -> None:
    schema = _crds()[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    text = yaml.safe_dump(schema)
    assert "$ref" not in text and "anyOf" not in text and "title:" not in text
    for path, node in _nodes(schema, kind):
        assert "type" in node, f"{path} has no type"
        assert node.get("additionalProperties") is not False, f"{path}: additionalProperties false"
        bounded_elsewhere = "enum" in node or node.get("format") == "date-time"
        if node["type"] == "string" and not bounded_elsewhere and not path.endswith((".apiVersion", ".kind")):
            assert "maxLength" in node, f"{path} is an unbounded string"
        if node["type"] == "array":
            assert "maxItems" in node, f"{path} is an unbounded list"
        if node["type"] == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, f"{path} is an unbounded map"
            assert "properties" not in node, f"{path} mixes properties and additionalProperties"
        if path.count(".") > 1 and not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{path} has no description for kubectl explain"


def test_conditions_are_list_maps_keyed_by_type() -> None:
    for kind, crd in _crds().items():
        status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        conditions = status["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map", kind
        assert conditions["x-kubernetes-list-map-keys"] == ["type"], kind
        assert set(conditions["items"]["required"]) == {
            "type",
            "status",
            "reason",
            "message",
            "lastTransitionTime",
        }


def test_money_is_a_decimal_string_with_a_pattern() -> None:
    spec = _crds()["VirtualKey"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spend = spec["properties"]["limits"]["properties"]["spendPerMonthUSD"]
    assert spend["type"] == "string"
    assert spend["pattern"] == r"^[0-9]{1,8}(\.[0-9]{1,6})?$"
