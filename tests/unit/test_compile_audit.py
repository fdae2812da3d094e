"""The effective audit policy of a key: the policies' level (highest wins, metadata without any), a
key's own level only where every applying policy allows it, sinks joined, the longest retention;
shown in status (`effective.audit`) and compiled into the key's config entry."""

from __future__ import annotations

from tests.unit.test_compile import entry, outcome, policy, run, vk

from llmkeys_proxy import config


def test_without_policies_metadata_is_the_default_and_a_key_chooses_freely() -> None:
    result = run([vk("plain"), vk("own", audit={"level": "content", "sinks": ["file"], "retainDays": 30})])
    assert entry(result, "plain").audit == config.KeyAudit(level="metadata")
    assert entry(result, "own").audit == config.KeyAudit(level="content", sinks=("file",), retain_days=30)
    effective = outcome(result, "own").effective
    assert effective is not None
    assert effective.model_dump(by_alias=True, exclude_none=True)["audit"] == {
        "level": "content",
        "sinks": ["file"],
        "retainDays": 30,
    }


def test_the_highest_policy_level_applies_with_joined_sinks_and_the_longest_retention() -> None:
    policies = [
        policy("base", audit={"level": "metadata", "sinks": ["stdout"], "retainDays": 90}),
        policy("compliance", audit={"level": "content", "sinks": ["file"], "retainDays": 400}),
    ]
    result = run([vk("k", audit={"retainDays": 30, "sinks": ["otlp"]})], policies)
    assert entry(result, "k").audit == config.KeyAudit(
        level="content", sinks=("stdout", "file", "otlp"), retain_days=400
    )
    assert outcome(result, "k").reason == "Active"


def test_a_key_level_no_policy_allows_breaks_the_policy() -> None:
    policies = [policy("prod", audit={"level": "metadata"})]
    result = run([vk("quiet", audit={"level": "none"}), vk("chatty", audit={"level": "content"})], policies)
    for name, level in (("quiet", "none"), ("chatty", "content")):
        found = outcome(result, name)
        assert found.reason == "PolicyViolation"
        assert f'audit.level {level} is not allowed by LLMPolicy "prod"' in found.message
        assert entry(result, name).audit.level == "metadata"


def test_a_key_may_choose_a_level_every_policy_allows() -> None:
    policies = [
        policy("a", audit={"allowedLevels": ["none", "content"]}),
        policy("b", audit={"allowedLevels": ["content"]}),
    ]
    result = run([vk("chatty", audit={"level": "content"}), vk("quiet", audit={"level": "none"})], policies)
    assert entry(result, "chatty").audit.level == "content" and outcome(result, "chatty").reason == "Active"
    assert outcome(result, "quiet").reason == "PolicyViolation"
    assert 'not allowed by LLMPolicy "b"' in outcome(result, "quiet").message
