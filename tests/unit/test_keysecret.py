"""The key Secret builder and rotation rules (pure, no cluster)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

from llmkeys_operator import api, keysecret
from llmkeys_proxy import keys

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def vk(**spec: Any) -> api.VirtualKey:
    annotations = spec.pop("annotations", {})
    return api.VirtualKey.model_validate(
        {
            "metadata": {"name": "dev", "namespace": "team-a", "uid": "uid-1", "annotations": annotations},
            "spec": spec,
        }
    )


def decoded(body: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in body["data"].items()}


def test_secret_holds_the_key_and_every_sdk_env_entry() -> None:
    material = keysecret.issue(NOW)
    body = keysecret.build_key_secret(vk(), material, "https://llm.example.com/")
    data = decoded(body)
    key = material.key
    assert keys.parse_key(key) is not None
    for name in (
        "api-key",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "AZURE_OPENAI_API_KEY",
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "AWS_BEARER_TOKEN_BEDROCK",
        "LLMKEYS_API_KEY",
    ):
        assert data[name] == key
    assert data["OPENAI_BASE_URL"] == "https://llm.example.com/v1"
    assert data["ANTHROPIC_BASE_URL"] == "https://llm.example.com"
    assert data["AZURE_OPENAI_ENDPOINT"] == "https://llm.example.com"
    assert data["GOOGLE_GEMINI_BASE_URL"] == "https://llm.example.com"
    assert data["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"] == "https://llm.example.com"
    assert data["LLMKEYS_KEY_ID"] == material.key_id
    meta = body["metadata"]
    assert meta["name"] == "dev-llm-key" and meta["namespace"] == "team-a"
    assert meta["labels"] == {
        "app.kubernetes.io/managed-by": "llmkeys",
        "llmkeys.io/secret": "key",
        "llmkeys.io/virtualkey": "dev",
        "llmkeys.io/key-id": material.key_id,
    }
    assert meta["ownerReferences"][0]["uid"] == "uid-1" and meta["ownerReferences"][0]["controller"] is True
    assert meta["annotations"] == {"llmkeys.io/issued-at": "2026-05-01T12:00:00Z"}


def test_read_back_round_trips_and_rejects_garbage() -> None:
    material = keysecret.rotate(keysecret.issue(NOW), NOW + timedelta(days=1), timedelta(hours=1), "t1")
    body = keysecret.build_key_secret(vk(secretName="custom"), material, "http://proxy:8080")
    assert body["metadata"]["name"] == "custom"
    assert keysecret.read_key_secret(body) == material
    body["data"]["api-key"] = base64.b64encode(b"not-a-key").decode()
    assert keysecret.read_key_secret(body) is None
    body["data"]["api-key"] = "%%% not base64"
    assert keysecret.read_key_secret(body) is None
    assert keysecret.read_key_secret({"data": {}}) is None


def test_rotation_keeps_the_key_id_and_the_old_hash_for_the_grace_period_only() -> None:
    first = keysecret.issue(NOW)
    second = keysecret.rotate(first, NOW, timedelta(minutes=10), "token")
    assert second.key_id == first.key_id and second.key != first.key
    assert second.rotate_token == "token"
    during = second.hashes(NOW + timedelta(minutes=9))
    assert [h.sha256 for h in during] == [second.secret_sha256, first.secret_sha256]
    assert during[1].not_after == NOW + timedelta(minutes=10)
    assert [h.sha256 for h in second.hashes(NOW + timedelta(minutes=10))] == [second.secret_sha256]
    # No grace: the old key stops at once.
    assert keysecret.rotate(first, NOW, timedelta(0), None).previous_sha256 is None


def test_rotation_due_on_new_annotation_token_or_interval() -> None:
    material = keysecret.issue(NOW, rotate_token="a")
    assert keysecret.rotation_due(vk(annotations={"llmkeys.io/rotate": "a"}), material, NOW) is None
    assert keysecret.rotation_due(vk(annotations={"llmkeys.io/rotate": "b"}), material, NOW) == "requested"
    assert keysecret.rotation_due(vk(annotations={"llmkeys.io/rotate": ""}), material, NOW) is None
    periodic = vk(rotationInterval="30d")
    assert keysecret.rotation_due(periodic, material, NOW + timedelta(days=29)) is None
    assert keysecret.rotation_due(periodic, material, NOW + timedelta(days=30)) == "interval"
    assert keysecret.next_rotation_at(periodic, material) == NOW + timedelta(days=30)
    assert keysecret.rotation_grace(vk()) == timedelta(hours=1)
    assert keysecret.rotation_grace(vk(rotationGracePeriod="5m")) == timedelta(minutes=5)


def test_repair_patch_restores_only_our_fields() -> None:
    owner = vk()
    material = keysecret.issue(NOW)
    body = keysecret.build_key_secret(owner, material, "http://proxy")
    assert keysecret.repair_patch(body, owner, material, "http://proxy") is None
    body["data"]["OPENAI_API_KEY"] = base64.b64encode(b"edited").decode()
    body["data"]["EXTRA"] = base64.b64encode(b"user data").decode()
    del body["data"]["GEMINI_API_KEY"]
    body["metadata"]["labels"]["team"] = "x"
    body["metadata"]["ownerReferences"] = []
    patch = keysecret.repair_patch(body, owner, material, "http://proxy")
    assert patch is not None
    assert set(patch["data"]) == {"OPENAI_API_KEY", "GEMINI_API_KEY"}
    assert patch["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert "labels" not in patch["metadata"]  # the user's extra label is left alone
    # A rotation patch removes nothing but writes the new key and bookkeeping.
    rotated = keysecret.rotate(material, NOW, timedelta(hours=1), "t")
    patch = keysecret.repair_patch(
        keysecret.build_key_secret(owner, material, "http://proxy"), owner, rotated, "http://proxy"
    )
    assert patch is not None
    assert base64.b64decode(patch["data"]["api-key"]).decode() == rotated.key
    assert patch["metadata"]["annotations"]["llmkeys.io/previous-key-sha256"] == material.secret_sha256
    assert patch["metadata"]["annotations"]["llmkeys.io/rotate-handled"] == "t"


def test_ownership_is_by_controller_uid() -> None:
    body = keysecret.build_key_secret(vk(), keysecret.issue(NOW), "http://proxy")
    assert keysecret.is_owned_by(body, "uid-1")
    assert not keysecret.is_owned_by(body, "uid-2")
    assert not keysecret.is_owned_by(body, None)
    assert not keysecret.is_owned_by({"metadata": {}}, "uid-1")
    # The labels the operator's Secret watch selects on (handlers.KEY_SECRET_LABELS).
    labels = body["metadata"]["labels"]
    assert labels[keysecret.LABEL_MANAGED_BY] == keysecret.MANAGED_BY
    assert keysecret.LABEL_VIRTUALKEY in labels
    assert labels[keysecret.LABEL_SECRET] == keysecret.SECRET_KEY


def test_a_key_secret_from_before_the_secret_label_gets_it_on_repair() -> None:
    """Key Secrets written by earlier versions lack `llmkeys.io/secret`; the reconcile of their
    VirtualKey (on every operator start) reads them by name and labels them."""
    material = keysecret.issue(NOW)
    body = keysecret.build_key_secret(vk(), material, "http://proxy")
    del body["metadata"]["labels"][keysecret.LABEL_SECRET]
    patch = keysecret.repair_patch(body, vk(), material, "http://proxy")
    assert patch == {"metadata": {"labels": {keysecret.LABEL_SECRET: keysecret.SECRET_KEY}}}


def test_material_repr_hides_the_key() -> None:
    material = keysecret.issue(NOW)
    assert material.key not in repr(material)


KEYLESS = {"staticKey": False, "identities": [{"serviceAccount": "app"}]}


def test_a_keyless_secret_holds_no_secret_and_reads_back_as_its_key_id() -> None:
    material = keysecret.issue(NOW, static=False)
    assert material.key is None and keys.is_key_id(material.key_id)
    assert material.hashes(NOW) == () and keysecret.rotation_due(vk(**KEYLESS), material, NOW) is None
    body = keysecret.build_key_secret(vk(**KEYLESS), material, "https://llm.example.com/", "gateway")
    data = decoded(body)
    assert data == {
        "LLMKEYS_KEY_ID": material.key_id,
        "LLMKEYS_BASE_URL": "https://llm.example.com",
        "LLMKEYS_AUTH": "workload-token",
        "LLMKEYS_TOKEN_AUDIENCE": "gateway",
        "OPENAI_BASE_URL": "https://llm.example.com/v1",
        "ANTHROPIC_BASE_URL": "https://llm.example.com",
        "AZURE_OPENAI_ENDPOINT": "https://llm.example.com",
        "GOOGLE_GEMINI_BASE_URL": "https://llm.example.com",
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": "https://llm.example.com",
    }
    assert body["metadata"]["labels"][keysecret.LABEL_KEY_ID] == material.key_id
    read = keysecret.read_key_secret(body)
    assert read is not None and read.key is None and read.key_id == material.key_id


def test_becoming_keyless_removes_every_static_key_entry_and_keeps_user_entries() -> None:
    static = keysecret.issue(NOW)
    existing = keysecret.build_key_secret(vk(), static, "http://proxy")
    existing["data"]["MY_SETTING"] = base64.b64encode(b"kept").decode()
    keyless = keysecret.issue(NOW, static.key_id, static=False)
    patch = keysecret.repair_patch(existing, vk(**KEYLESS), keyless, "http://proxy")
    assert patch is not None
    removed = {name for name, value in patch["data"].items() if value is None}
    assert removed == set(keysecret.STATIC_KEY_ENTRIES)
    assert "MY_SETTING" not in patch["data"]
    merged = {k: v for k, v in {**existing["data"], **patch["data"]}.items() if v is not None}
    assert static.key not in "".join(base64.b64decode(v).decode() for v in merged.values())
    assert keysecret.read_key_secret({**existing, "data": merged}).key_id == static.key_id  # type: ignore[union-attr]
