"""Pure parts of the reconcile step: status building, deadlines, config documents, in-flight writes."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from kopf._cogs.structs import references

from llmkeys_operator import api, compile, handlers, keysecret, reconcile, runner, settings
from llmkeys_proxy import config, keys

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def vk_body(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "llmkeys.io/v1alpha1",
        "kind": "VirtualKey",
        "metadata": {"name": "dev", "namespace": "team-a", "uid": "uid-1", "generation": 3},
        "spec": {"owner": {"team": "payments"}, **spec},
    }


def outcome(reason: compile.KeyReason = "Active", expires_at: datetime | None = None) -> compile.KeyOutcome:
    ready = reason == "Active"
    return compile.KeyOutcome(
        reason=reason,
        ready=ready,
        message="active" if ready else reason.lower(),
        expires_at=expires_at,
        effective=api.EffectiveLimits(limits=api.Limits(requests_per_minute=10)),
        conditions=(
            compile.ConditionContent("Ready", "True" if ready else "False", reason, "msg"),
            compile.ConditionContent("PolicyCompliant", "True", "Compliant", "ok"),
        ),
        policies=[],
        emitted=True,
    )


def issued(material: keysecret.KeyMaterial) -> compile.IssuedKey:
    return compile.IssuedKey(material.key_id, material.hashes(NOW), material.issued_at)


def test_index_entries_never_hold_key_material() -> None:
    material = keysecret.issue(NOW)
    vk = api.VirtualKey.model_validate(vk_body())
    secret_body = keysecret.build_key_secret(vk, material, "http://proxy")
    entry = reconcile.index_key_secret(secret_body)
    assert entry.key_id == material.key_id and entry.owner_uid == "uid-1"
    parsed = keys.parse_key(material.key)
    assert parsed is not None and parsed.secret not in repr(entry)
    assert entry.secret_sha256 == keys.hash_secret(parsed.secret)


def test_invalid_spec_is_reported_without_input_values() -> None:
    body = vk_body(limits={"requestsPerMinute": -5})
    entry = reconcile.index_virtual_key(body)
    assert entry.model is None and entry.error is not None
    assert "-5" not in entry.error
    status = reconcile.key_status(entry, None, None, None, None, None, NOW)
    assert status["conditions"][0]["reason"] == "InvalidSpec"
    # A status we cannot read does not make a good spec invalid.
    odd = vk_body()
    odd["status"] = {"conditions": "not a list"}
    assert reconcile.index_virtual_key(odd).model is not None


def test_key_status_conditions_order_and_transition_times() -> None:
    material = keysecret.issue(NOW)
    entry = reconcile.index_virtual_key(vk_body())
    status = reconcile.key_status(entry, outcome(), issued(material), "dev-llm-key", None, None, NOW)
    assert [c["type"] for c in status["conditions"]] == ["Ready", "PolicyCompliant", "SecretReady"]
    assert all(c["observedGeneration"] == 3 for c in status["conditions"])
    assert status["keyId"] == material.key_id and status["observedGeneration"] == 3
    assert status["effective"]["limits"] == {"requestsPerMinute": 10}

    later = NOW + timedelta(hours=1)
    body = vk_body()
    body["status"] = status
    entry = reconcile.index_virtual_key(body)
    again = reconcile.key_status(entry, outcome(), issued(material), "dev-llm-key", None, None, later)
    assert reconcile.status_changes(body["status"], again) is None  # nothing moved: no write
    suspended = reconcile.key_status(
        entry, outcome("Suspended"), issued(material), "dev-llm-key", None, None, later
    )
    ready, compliant, _ = suspended["conditions"]
    assert ready["lastTransitionTime"] == "2026-05-01T13:00:00Z"  # status changed
    assert compliant["lastTransitionTime"] == "2026-05-01T12:00:00Z"  # did not
    changes = reconcile.status_changes(body["status"], suspended)
    assert changes is not None and set(changes) == {"conditions"}


def test_conflict_replaces_pending_and_marks_secret_not_ready() -> None:
    entry = reconcile.index_virtual_key(vk_body())
    status = reconcile.key_status(entry, outcome("Pending"), None, "dev-llm-key", "taken", None, NOW)
    assert status["conditions"][0]["reason"] == "SecretConflict"
    assert status["conditions"][2] == {
        "type": "SecretReady",
        "status": "False",
        "reason": "SecretConflict",
        "message": "taken",
        "lastTransitionTime": "2026-05-01T12:00:00Z",
        "observedGeneration": 3,
    }
    # A suspended key stays Suspended: the more specific reason wins.
    status = reconcile.key_status(entry, outcome("Suspended"), None, "dev-llm-key", "taken", None, NOW)
    assert status["conditions"][0]["reason"] == "Suspended"


def test_issued_key_needs_an_owned_valid_secret_and_drops_expired_previous_hash() -> None:
    first = keysecret.issue(NOW)
    second = keysecret.rotate(first, NOW, timedelta(minutes=5), None)
    vk = api.VirtualKey.model_validate(vk_body())
    entry = reconcile.index_key_secret(keysecret.build_key_secret(vk, second, "http://p"))
    during = reconcile.issued_key_from(entry, "uid-1", NOW + timedelta(minutes=1))
    assert during is not None and len(during.hashes) == 2
    after = reconcile.issued_key_from(entry, "uid-1", NOW + timedelta(minutes=5))
    assert after is not None and [h.sha256 for h in after.hashes] == [second.secret_sha256]
    assert reconcile.issued_key_from(entry, "another-uid", NOW) is None
    assert reconcile.issued_key_from(None, "uid-1", NOW) is None


def test_next_deadline_is_the_earliest_future_change() -> None:
    vk = api.VirtualKey.model_validate(vk_body(rotationInterval="1d"))
    material = keysecret.rotate(keysecret.issue(NOW), NOW, timedelta(minutes=30), None)
    expiring = outcome(expires_at=NOW + timedelta(hours=2))
    assert reconcile.next_deadline(vk, expiring, issued(material), NOW) == NOW + timedelta(minutes=30)
    later = NOW + timedelta(minutes=31)
    assert reconcile.next_deadline(vk, expiring, issued(material), later) == NOW + timedelta(hours=2)
    past_expiry = NOW + timedelta(hours=3)
    assert reconcile.next_deadline(vk, expiring, issued(material), past_expiry) == NOW + timedelta(days=1)
    plain = api.VirtualKey.model_validate(vk_body())
    assert reconcile.next_deadline(plain, outcome(), issued(keysecret.issue(NOW)), NOW) is None


def test_config_documents_are_labelled_secrets_per_namespace() -> None:
    entry = config.KeyEntry(
        key_id="abcdefghijkl",
        hashes=(config.SecretHash(sha256="0" * 64),),
        namespace="team-a",
        name="dev",
    )
    proxy_config = config.ProxyConfig(
        keys=(entry,), providers=(config.ProviderEntry(id="llmkeys/mock", provider="mock"),)
    )
    documents = reconcile.config_documents(proxy_config)
    assert set(documents) == {"llmkeys-config-providers", "llmkeys-config-keys-team-a-0"}
    kind, source, content = documents["llmkeys-config-keys-team-a-0"]
    body = reconcile.config_secret_body("llmkeys-config-keys-team-a-0", "llmkeys", kind, source, content)
    assert body["metadata"]["labels"] == {
        "llmkeys.io/config": "keys",
        "app.kubernetes.io/managed-by": "llmkeys",
        "llmkeys.io/secret": "config",
        "llmkeys.io/source-namespace": "team-a",
    }
    assert reconcile.config_secret_content(body) == content
    shard = config.KeysShard.model_validate_json(base64.b64decode(body["data"]["config.json"]))
    assert shard.keys == (entry,)
    # Same input, same bytes: the config Secrets are rewritten only on real changes.
    assert reconcile.config_documents(proxy_config) == documents


def test_in_flight_writes_expire() -> None:
    writes = reconcile.InFlightWrites(ttl_s=0.0)
    writes.record("a", {"x": 1})
    assert not writes.pending("a", {"x": 1})  # expired at once
    assert len(writes) == 0
    writes = reconcile.InFlightWrites(ttl_s=60.0)
    writes.record("a", {"x": 1})
    assert writes.pending("a", {"x": 1}) and not writes.pending("a", {"x": 2})
    writes.settle("a")
    assert not writes.pending("a", {"x": 1})


def test_decode_secret_data_skips_undecodable_values() -> None:
    body = {"data": {"ok": base64.b64encode(b"value").decode(), "bad": "%%%"}, "stringData": {"s": "plain"}}
    assert reconcile.decode_secret_data(body) == {"ok": "value", "s": "plain"}
    assert json.dumps(reconcile.decode_secret_data({})) == "{}"


def test_only_labelled_credential_secrets_are_indexed() -> None:
    labelled = {"llmkeys.io/secret": "credential"}
    assert reconcile.may_hold_credential(labelled, "Opaque")
    assert reconcile.may_hold_credential(labelled, None)
    assert not reconcile.may_hold_credential({}, "Opaque")  # the label is what a person adds
    assert not reconcile.may_hold_credential({"llmkeys.io/secret": "key"}, "Opaque")
    assert not reconcile.may_hold_credential(labelled, "helm.sh/release.v1")
    assert not reconcile.may_hold_credential({**labelled, "llmkeys.io/config": "keys"}, "Opaque")
    assert not reconcile.may_hold_credential({**labelled, "llmkeys.io/virtualkey": "dev"}, "Opaque")


def test_the_secret_watch_selects_on_the_label_every_secret_the_operator_reads_carries() -> None:
    kopf_config = runner.kopf_settings(settings.OperatorSettings())
    secrets = references.Resource("", "v1", "secrets", kind="Secret", namespaced=True)
    assert list(kopf_config.watching.label_selectors.collect(secrets)) == ["llmkeys.io/secret"]
    selector = handlers.SECRET_WATCH_SELECTOR
    assert selector == keysecret.LABEL_SECRET
    # Key Secrets, config Secrets and (labelled by a person) credential Secrets all match it.
    assert selector in handlers.KEY_SECRET_LABELS
    body = reconcile.config_secret_body("llmkeys-config-providers", "llmkeys", "providers", None, "{}")
    assert body["metadata"]["labels"][selector] == keysecret.SECRET_CONFIG
    assert reconcile.may_hold_credential({selector: keysecret.SECRET_CREDENTIAL}, "Opaque")
