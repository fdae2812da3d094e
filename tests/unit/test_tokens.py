"""Shipped tiktoken encodings: loaded offline, hash-verified, and exact against published token ids."""

from __future__ import annotations

import concurrent.futures
import hashlib
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import tiktoken.load

from llmkeys_proxy import tokens


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No sockets, an empty tiktoken cache, and tiktoken's own file readers booby-trapped."""
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network or tiktoken downloader used")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(tiktoken.load, "read_file", refuse)
    monkeypatch.setattr(tiktoken.load, "read_file_cached", refuse)
    saved = dict(tokens._LOADED)
    tokens._LOADED.clear()
    yield cache
    tokens._LOADED.clear()
    tokens._LOADED.update(saved)


def test_shipped_files_match_tiktoken_published_hashes() -> None:
    for spec in tokens.ENCODINGS.values():
        data = (tokens.ENCODINGS_DIR / spec.file).read_bytes()
        assert len(data) == spec.size
        assert hashlib.sha256(data).hexdigest() == spec.sha256


def test_encodings_load_without_network_or_cache(no_network: Path) -> None:
    o200k = tokens.load_encoding("o200k_base")
    cl100k = tokens.load_encoding("cl100k_base")
    # Token ids published in OpenAI's cookbook / tiktoken README.
    assert cl100k.encode("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]
    assert o200k.encode("hello world") == [24912, 2375]
    assert cl100k.encode("hello world") == [15339, 1917]
    assert o200k.n_vocab == 200019
    assert cl100k.n_vocab == 100277
    assert list(no_network.iterdir()) == []  # nothing written to a cache either


def test_harmony_encoding_shares_o200k_ranks(no_network: Path) -> None:
    harmony = tokens.load_encoding("o200k_harmony")
    assert harmony.encode("hello world") == [24912, 2375]
    assert harmony.encode("<|start|>", allowed_special="all") == [200006]


def test_round_trip_unicode() -> None:
    text = "Grüße, 世界! 🚀 naïve café — ½ ≠ 0.5\n\tindent"
    for name in ("o200k_base", "cl100k_base"):
        encoding = tokens.load_encoding(name)
        assert encoding.decode(encoding.encode(text)) == text


def test_corrupted_file_is_refused(tmp_path: Path) -> None:
    source = tokens.ENCODINGS_DIR / "cl100k_base.tiktoken"
    broken = tmp_path / "cl100k_base.tiktoken"
    data = bytearray(source.read_bytes())
    data[1000] ^= 0x01
    broken.write_bytes(bytes(data))
    with pytest.raises(tokens.EncodingIntegrityError, match="expected 223921b7"):
        tokens.load_encoding("cl100k_base", tmp_path)


def test_truncated_and_missing_files_are_refused(tmp_path: Path) -> None:
    source = tokens.ENCODINGS_DIR / "o200k_base.tiktoken"
    (tmp_path / "o200k_base.tiktoken").write_bytes(source.read_bytes()[:-10])
    with pytest.raises(tokens.EncodingIntegrityError):
        tokens.load_encoding("o200k_base", tmp_path)
    with pytest.raises(tokens.EncodingIntegrityError, match="cannot be read"):
        tokens.load_encoding("cl100k_base", tmp_path)


def test_intact_copy_elsewhere_loads(tmp_path: Path) -> None:
    shutil.copy(tokens.ENCODINGS_DIR / "cl100k_base.tiktoken", tmp_path)
    assert tokens.load_encoding("cl100k_base", tmp_path).encode("hello world") == [15339, 1917]


def test_unshipped_encoding_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        tokens.load_encoding("p50k_base")


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5.4-mini", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("openai/gpt-4", "cl100k_base"),
        ("ft:gpt-3.5-turbo:acme::x1", "cl100k_base"),
        ("ft:gpt-4o-mini-2024-07-18:acme::x1", "o200k_base"),
        ("gpt-oss-120b", "o200k_harmony"),
        ("text-davinci-003", "cl100k_base"),  # p50k not shipped: closest successor
        ("claude-sonnet-4-5", "o200k_base"),
        ("gemini-2.5-flash", "o200k_base"),
        ("gpt-6.2-sol", "o200k_base"),
    ],
)
def test_encoding_for_model(model: str, encoding: str) -> None:
    assert tokens.encoding_name_for_model(model) == encoding
    assert tokens.encoding_for_model(model).name == encoding


def test_count_tokens_treats_special_tokens_as_text() -> None:
    assert tokens.count_tokens("gpt-4o", "") == 0
    assert tokens.count_tokens("gpt-4o", "hello world") == 2
    # A prompt containing a special-token look-alike must not raise nor collapse into one token.
    assert tokens.count_tokens("gpt-4o", "<|endoftext|>") > 1


def test_preload_encodings(no_network: Path) -> None:
    tokens.preload_encodings()
    loaded = {key[0]: encoding for key, encoding in tokens._LOADED.items()}
    assert set(loaded) == {"o200k_base", "cl100k_base"}
    assert tokens.encoding_for_model("gpt-4o") is loaded["o200k_base"]
    assert tokens.encoding_for_model("gpt-4") is loaded["cl100k_base"]


def test_concurrent_first_loads_build_one_encoding(no_network: Path) -> None:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: tokens.load_encoding("cl100k_base"), range(8)))
    assert all(result is results[0] for result in results)
