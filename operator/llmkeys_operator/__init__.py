"""llmkeys control plane: reconciles VirtualKey, ProviderCredential and LLMPolicy resources."""
