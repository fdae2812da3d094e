"""Virtual key format: generation, parsing, hashing, verification and the scanner regex."""

from __future__ import annotations

import hashlib
import math
import re

import pytest

from llmkeys_proxy import keys


def test_generated_key_has_the_documented_shape() -> None:
    key = keys.generate_key()
    assert key.startswith("sk-llmk-")
    assert re.fullmatch(keys.SCANNER_REGEX, key)
    parsed = keys.parse_key(key)
    assert parsed is not None
    assert keys.is_key_id(parsed.key_id)
    assert keys.format_key(parsed.key_id, parsed.secret) == key


def test_secret_carries_at_least_256_bits() -> None:
    assert keys.SECRET_LENGTH * math.log2(62) >= 256
    assert len(keys.generate_secret()) == keys.SECRET_LENGTH


def test_keys_are_unique_and_keep_an_id_across_rotation() -> None:
    generated = {keys.generate_key() for _ in range(200)}
    assert len(generated) == 200
    rotated = keys.parse_key(keys.generate_key("abcdefghij12"))
    assert rotated is not None and rotated.key_id == "abcdefghij12"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "sk-llmk-",
        "sk-llmk-ABCDEFGHIJKL-" + "a" * 43,  # upper-case id
        "sk-llmk-abcdefghijkl-" + "a" * 42,  # short secret
        "sk-llmk-abcdefghijkl-" + "a" * 44,  # long secret
        "sk-llmk-abcdefghijkl-" + "a" * 42 + "!",
        "Bearer sk-llmk-abcdefghijkl-" + "a" * 43,
        "sk-proj-abcdefghijkl-" + "a" * 43,
    ],
)
def test_malformed_keys_do_not_parse(value: str) -> None:
    assert keys.parse_key(value) is None


def test_hash_is_the_sha256_of_the_secret_part() -> None:
    secret = keys.generate_secret()
    digest = keys.hash_secret(secret)
    assert digest == hashlib.sha256(secret.encode()).hexdigest()
    assert keys.hash_secret(keys.generate_secret()) != digest


def test_parsed_key_repr_hides_the_secret() -> None:
    key = keys.generate_key()
    parsed = keys.parse_key(key)
    assert parsed is not None
    assert parsed.secret not in repr(parsed) and parsed.key_id in repr(parsed)


def test_scanner_regex_finds_keys_in_text() -> None:
    key = keys.generate_key()
    text = f'export OPENAI_API_KEY="{key}"\nother=sk-llmk-short'
    assert re.findall(keys.SCANNER_REGEX, text) == [key]


def test_scanner_regex_finds_keys_glued_to_padding_or_cut_off() -> None:
    key = keys.generate_key()
    padded = f"Got more than 8190 bytes: Bearer {key}{'A' * 9000}"  # an oversized header, logged
    cut = f"x-goog-api-key: {key[:-20]}"  # a log line showing only the start of the header
    assert re.search(keys.SCANNER_REGEX, padded)
    assert re.search(keys.SCANNER_REGEX, cut)
    assert not re.search(keys.SCANNER_REGEX, "sk-llmk-" + "a" * 12 + "-short")
