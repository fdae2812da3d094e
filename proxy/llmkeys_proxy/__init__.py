"""llmkeys data plane: the proxy that turns virtual keys into governed provider calls.

Never imports `llmkeys_operator`; the operator imports this package's contract (`config`, `keys`).
"""
