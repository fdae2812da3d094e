"""The compiled config contract: model checks, hash validity, split into Secrets and merge back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pydantic
import pytest

from llmkeys_proxy import config

NOW = datetime(2026, 6, 15, tzinfo=UTC)
SHA = "0" * 64


def key(name: str, namespace: str = "dev", **fields: object) -> config.KeyEntry:
    return config.KeyEntry.model_validate(
        {
            "key_id": f"{abs(hash(name)) % 10**12:012d}",
            "hashes": [{"sha256": SHA}],
            "namespace": namespace,
            "name": name,
        }
        | fields
    )


def test_model_allowlists_are_anded_and_denied_wins() -> None:
    entry = key("a", model_allowlists=[["gpt-*", "claude-*"], ["gpt-5*"]], denied_models=["*-nano"])
    assert entry.model_allowed("gpt-5.4-mini")
    assert not entry.model_allowed("claude-haiku-4.5")  # not in the second list
    assert not entry.model_allowed("gpt-5.4-nano")  # denied
    assert not key("b").model_allowed("gpt-5.4-mini")  # no allowlist allows nothing
    assert key("c", model_allowlists=[["*"]]).model_allowed("anything")


def test_secret_hash_validity_window() -> None:
    current = config.SecretHash(sha256=SHA)
    previous = config.SecretHash(sha256="1" * 64, not_after=NOW)
    future = config.SecretHash(sha256="2" * 64, not_before=NOW + timedelta(hours=1))
    assert current.valid_at(NOW)
    assert previous.valid_at(NOW - timedelta(seconds=1)) and not previous.valid_at(NOW)
    assert not future.valid_at(NOW) and future.valid_at(NOW + timedelta(hours=1))


def test_contract_rejects_bad_values() -> None:
    with pytest.raises(pydantic.ValidationError):
        config.SecretHash(sha256="not-a-hash")
    with pytest.raises(pydantic.ValidationError):
        key("a", key_id="UPPERCASE123")
    with pytest.raises(pydantic.ValidationError):
        config.KeyEntry.model_validate({**key("a").model_dump(), "surprise": 1})
    with pytest.raises(pydantic.ValidationError):
        config.ProvidersDocument.model_validate({"version": 2})


def test_split_and_merge_round_trip_with_small_shards() -> None:
    keys = tuple(key(f"k{i:03d}", namespace=f"ns{i % 2}") for i in range(40))
    proxy_config = config.ProxyConfig(
        keys=tuple(sorted(keys, key=lambda k: (k.namespace, k.name))),
        providers=(config.ProviderEntry(id="llmkeys/mock", provider="mock"),),
        pools=(config.PoolEntry(id="p/b/v", policy="p", budget="b", group_by="team", group_value="v"),),
    )
    providers, shards = proxy_config.split(max_bytes=2000)
    assert len(shards) > 2
    assert all(len(shard.model_dump_json()) < 2000 + 1000 for shard in shards)
    assert {shard.namespace for shard in shards} == {"ns0", "ns1"}
    # Documents survive JSON (what the Secrets hold) and merge back to the same config.
    providers = config.ProvidersDocument.model_validate_json(providers.model_dump_json())
    shards = [config.KeysShard.model_validate_json(shard.model_dump_json()) for shard in shards]
    assert config.ProxyConfig.merge(providers, list(reversed(shards))) == proxy_config


def test_provider_secrets_are_not_in_repr() -> None:
    entry = config.ProviderEntry(
        id="llmkeys/openai",
        provider="openai",
        api_key="sk-real",
        secret_fields={"aws_secret_access_key": "x1y2"},
    )
    assert "sk-real" not in repr(entry) and "x1y2" not in repr(entry)
    route = config.ProviderEntry(id="i", provider="mock", models=(config.ModelRoute(name="gpt-*"),)).route(
        "gpt-5"
    )
    assert route is not None and route.name == "gpt-*"
