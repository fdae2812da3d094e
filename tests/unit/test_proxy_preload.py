"""Which tiktoken encodings the proxy builds before it reports ready (LLMKEYS_PRELOAD_ENCODINGS)."""

from __future__ import annotations

import pytest

from llmkeys_proxy import server, settings


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ("o200k_base",)),  # the default: the encoding of every current OpenAI model
        ("none", ()),
        ("o200k_base, cl100k_base", ("o200k_base", "cl100k_base")),
    ],
)
def test_encodings_to_preload(value: str | None, expected: tuple[str, ...]) -> None:
    env = {"LLMKEYS_CONFIG_DIR": "/nonexistent"}
    if value is not None:
        env["LLMKEYS_PRELOAD_ENCODINGS"] = value
    proxy_settings = settings.ProxySettings.from_env(env)
    assert server.encodings_to_preload(proxy_settings) == expected


def test_an_encoding_we_do_not_ship_is_named_in_the_error() -> None:
    proxy_settings = settings.ProxySettings.from_env(
        {"LLMKEYS_CONFIG_DIR": "/nonexistent", "LLMKEYS_PRELOAD_ENCODINGS": "r50k_base"}
    )
    with pytest.raises(ValueError, match=r"unknown encodings \['r50k_base'\]"):
        server.encodings_to_preload(proxy_settings)
