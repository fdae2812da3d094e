"""Provider adapters, one module per provider family; `adapter_class` maps a ProviderEntry's type to one.

Called by the app when a config is published (one adapter per ProviderCredential). Modules load
lazily, so a provider whose optional dependency is missing only disables that provider.
"""

from __future__ import annotations

import importlib
import logging

from llmkeys_proxy import config
from llmkeys_proxy.providers import base

logger = logging.getLogger("llmkeys.proxy.providers")

#: provider type -> "module:Class" of its adapter.
ADAPTERS: dict[config.ProviderType, str] = {
    "openai": "llmkeys_proxy.providers.openai:OpenAIAdapter",
    "openai-compatible": "llmkeys_proxy.providers.openai:OpenAIAdapter",
    "azure-openai": "llmkeys_proxy.providers.azure:AzureOpenAIAdapter",
    "mock": "llmkeys_proxy.providers.mock:MockAdapter",
    "anthropic": "llmkeys_proxy.providers.anthropic:AnthropicAdapter",
    "gemini": "llmkeys_proxy.providers.gemini:GeminiAdapter",
    "vertex-ai": "llmkeys_proxy.providers.vertex:VertexAdapter",
    "bedrock": "llmkeys_proxy.providers.bedrock:BedrockAdapter",
}


def adapter_class(provider: config.ProviderType) -> type[base.ProviderAdapter] | None:
    """The adapter class for `provider`, or None when it is not available in this build."""
    target = ADAPTERS.get(provider)
    if target is None:
        return None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        logger.warning("provider %s unavailable: %s", provider, exc)
        return None
    cls: type[base.ProviderAdapter] = getattr(module, class_name)
    return cls
