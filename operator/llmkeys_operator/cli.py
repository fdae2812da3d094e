"""The `llmkeys` command: one entry point for every component of the single image.

Subcommands: `operator` (control plane), `proxy` (data plane, config from Kubernetes or a
directory), `serve` (standalone: manifests folder -> compiled config -> proxy, no cluster),
`crds` (render crds/*.yaml from the API models), `demo` (the README's first command), `report`
(answers from status; also installed as the kubectl plugin `kubectl-llmkeys`), `audit` (query and
verify the file sink's trail), `portal` (the self-service web portal), and the approvers'
`approve`, `deny`, `pending` (as the user of the current kubeconfig).
Each subcommand delegates to one module's `run(args)`; imports are lazy so `llmkeys crds` does not
load aiohttp and the proxy does not load kopf.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, help). Each module exposes `add_arguments(parser)` and `run(args) -> int`.
_COMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("llmkeys_operator.runner", "run the kopf operator (control plane)"),
    "proxy": ("llmkeys_proxy.server", "run the proxy (data plane)"),
    "serve": ("llmkeys_operator.standalone", "standalone gateway from a folder of manifests"),
    "crds": ("llmkeys_operator.crdgen", "write the CRD manifests generated from the API models"),
    "demo": ("llmkeys_operator.demo", "run the standalone demo and call it with the openai SDK"),
    "report": ("llmkeys_operator.report", "usage, spend, limits, inactive and expiring keys from status"),
    "audit": ("llmkeys_operator.audit_cli", "query and verify the audit files of the file sink"),
    "portal": ("llmkeys_operator.portal.server", "the self-service web portal (OpenID Connect sign-in)"),
    "approve": ("llmkeys_operator.approver", "approve a VirtualKey (as yourself, via your kubeconfig)"),
    "deny": ("llmkeys_operator.approver", "deny a VirtualKey, with a reason"),
    "pending": ("llmkeys_operator.approver", "list the VirtualKeys waiting for your approval"),
}


def main(argv: list[str] | None = None, *, prog: str = "llmkeys", only: tuple[str, ...] | None = None) -> int:
    """Run a subcommand; `only` restricts the subcommands offered (the kubectl plugin: `report`)."""
    parser = argparse.ArgumentParser(prog=prog, description="Governed virtual LLM API keys.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in _COMMANDS.items():
        if only is not None and name not in only:
            continue
        cmd = sub.add_parser(name, help=help_text)
        # Only the chosen subcommand's module is imported (for its arguments and its run()).
        if argv is None:
            argv = sys.argv[1:]
        if argv and argv[0] == name:
            module = importlib.import_module(module_name)
            module.add_arguments(cmd)
    args = parser.parse_args(argv)
    module = importlib.import_module(_COMMANDS[args.command][0])
    return int(module.run(args))


if __name__ == "__main__":
    sys.exit(main())
