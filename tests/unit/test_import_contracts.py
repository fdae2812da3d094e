"""The layering rules, machine-checked (in the spirit of kopf's `.importlinter` contracts).

Every module of both packages is parsed (no import executed), and each `import` / `from ... import`
anywhere in it, including inside functions and `TYPE_CHECKING` blocks, is resolved to the module it
names. A contract names importers by pattern and either forbids targets or lists the only internal
targets allowed. A new module is covered by the patterns as soon as it exists.
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
PACKAGE_ROOTS = (REPO / "proxy", REPO / "operator")
OURS = ("llmkeys_proxy", "llmkeys_operator")


def module_name(root: pathlib.Path, path: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, pathlib.Path]:
    found: dict[str, pathlib.Path] = {}
    for root in PACKAGE_ROOTS:
        for path in sorted(root.rglob("*.py")):
            found[module_name(root, path)] = path
    return found


def imports_of(name: str, source: str, known: set[str], *, is_package: bool = False) -> set[str]:
    """The internal modules `source` (the module `name`) imports, wherever the import statement is."""
    found: set[str] = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            # `from pkg import mod` imports the module pkg.mod; `from mod import Name` imports mod.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t.split(".")[0] in OURS)
    return found


@dataclasses.dataclass(frozen=True)
class Contract:
    """Modules matching `importers` import none of `forbidden`, and (when `only` is set) no internal
    module outside `only` (patterns are fnmatch globs over dotted names; a module may import itself
    and its own package's `__init__` implicitly)."""

    name: str
    importers: tuple[str, ...]
    forbidden: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None

    def violations(self, graph: dict[str, set[str]]) -> list[str]:
        found = []
        for importer, targets in sorted(graph.items()):
            if not _matches(importer, self.importers):
                continue
            for target in sorted(targets):
                if _matches(target, self.forbidden) or (
                    self.only is not None and not _matches(target, self.only)
                ):
                    found.append(f"{importer} imports {target}")
        return found


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


CONTRACTS = (
    Contract(
        "the proxy never imports the operator",
        importers=("llmkeys_proxy", "llmkeys_proxy.*"),
        forbidden=("llmkeys_operator", "llmkeys_operator.*"),
    ),
    Contract(
        "config.py is the contract: it imports nothing of ours",
        importers=("llmkeys_proxy.config",),
        only=(),
    ),
    Contract(
        "handlers are kopf wiring only, delegating downwards",
        importers=("llmkeys_operator.handlers",),
        only=(
            "llmkeys_operator.runtime",
            "llmkeys_operator.reconcile",
            "llmkeys_operator.keysecret",
            "llmkeys_proxy.config",
        ),
    ),
    Contract(
        "compile is a pure builder over the api models",
        importers=("llmkeys_operator.compile",),
        only=(
            "llmkeys_operator.api",
            "llmkeys_operator.approvals",
            "llmkeys_operator.selectors",
            "llmkeys_operator.durations",
            "llmkeys_proxy.config",
        ),
    ),
    Contract(
        "the api models know only the proxy contract",
        importers=("llmkeys_operator.api",),
        only=("llmkeys_proxy.config",),
    ),
    Contract(
        "provider adapters never reach back up into the request flow or the app",
        importers=("llmkeys_proxy.providers", "llmkeys_proxy.providers.*"),
        forbidden=(
            "llmkeys_proxy.pipeline",
            "llmkeys_proxy.app",
            "llmkeys_proxy.state",
            "llmkeys_proxy.server",
            "llmkeys_proxy.settlement",
        ),
    ),
    Contract(
        "the pipeline names no wire format: it calls the Endpoint's WireFormat",
        importers=("llmkeys_proxy.pipeline",),
        forbidden=(
            "llmkeys_proxy.apis",
            "llmkeys_proxy.apis.openai",
            "llmkeys_proxy.apis.anthropic",
            "llmkeys_proxy.apis.gemini",
            "llmkeys_proxy.apis.bedrock",
        ),
    ),
    Contract(
        "wire formats know nothing of where a request goes, nor of the request flow",
        importers=("llmkeys_proxy.apis", "llmkeys_proxy.apis.*"),
        forbidden=(
            "llmkeys_proxy.providers",
            "llmkeys_proxy.providers.*",
            "llmkeys_proxy.pipeline",
            "llmkeys_proxy.routes",
            "llmkeys_proxy.routing",
            "llmkeys_proxy.app",
            "llmkeys_proxy.state",
            "llmkeys_proxy.limits",
            "llmkeys_proxy.limits.*",
        ),
    ),
    Contract(
        "the format families are independent, except Bedrock carrying Anthropic and OpenAI payloads",
        importers=("llmkeys_proxy.apis.openai", "llmkeys_proxy.apis.anthropic", "llmkeys_proxy.apis.gemini"),
        forbidden=(
            "llmkeys_proxy.apis.openai",
            "llmkeys_proxy.apis.anthropic",
            "llmkeys_proxy.apis.gemini",
            "llmkeys_proxy.apis.bedrock",
        ),
    ),
    Contract(
        "framing and counting are format-free leaves",
        importers=("llmkeys_proxy.sse", "llmkeys_proxy.eventstream", "llmkeys_proxy.tokens"),
        only=(),
    ),
    Contract(
        "the portal is a client of the API server: it runs none of the operator's loops",
        importers=("llmkeys_operator.portal", "llmkeys_operator.portal.*"),
        forbidden=(
            "llmkeys_operator.reconcile",
            "llmkeys_operator.handlers",
            "llmkeys_operator.runtime",
            "llmkeys_operator.runner",
            "llmkeys_operator.usage_sync",
            "llmkeys_operator.events",
            "llmkeys_operator.leader",
        ),
    ),
    Contract(
        "the portal calls Kubernetes only through kubeapi, which impersonates the signed-in user",
        # every portal module but kubeapi (fnmatch has no negation; none other starts with "k")
        importers=("llmkeys_operator.portal", "llmkeys_operator.portal.[!k]*"),
        forbidden=("llmkeys_operator.kube",),
    ),
    Contract(
        "kubeapi needs nothing but the request paths and the identity",
        importers=("llmkeys_operator.portal.kubeapi",),
        only=("llmkeys_operator.kube", "llmkeys_operator.portal.identity"),
    ),
    Contract(
        "the limiter backends know only the config contract and each other",
        importers=("llmkeys_proxy.limits", "llmkeys_proxy.limits.*"),
        only=("llmkeys_proxy.config", "llmkeys_proxy.limits", "llmkeys_proxy.limits.*"),
    ),
    Contract(
        "approval state is pure over the api models",
        importers=("llmkeys_operator.approvals",),
        only=("llmkeys_operator.api", "llmkeys_operator.durations"),
    ),
    Contract(
        "the admission rules are pure: no kopf, no API client",
        importers=("llmkeys_operator.admission",),
        only=(
            "llmkeys_operator.api",
            "llmkeys_operator.approvals",
            "llmkeys_operator.compile",
            "llmkeys_proxy.config",
        ),
    ),
)


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {
        name: imports_of(name, path.read_text(), known, is_package=path.name == "__init__.py") - {name}
        for name, path in modules.items()
    }


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.name)
def test_contract_holds(contract: Contract) -> None:
    graph = import_graph()
    assert any(_matches(name, contract.importers) for name in graph), "the contract matches no module"
    assert contract.violations(graph) == []


def test_the_checker_sees_every_kind_of_import() -> None:
    """A violation hidden in a function, a relative import or a `from pkg import module` is found."""
    known = {"llmkeys_proxy.pipeline", "llmkeys_proxy.providers.base", "llmkeys_operator.api"}
    source = (
        "from llmkeys_proxy import pipeline\n"
        "from . import base\n"
        "def later():\n"
        "    import llmkeys_operator.api\n"
        "    from llmkeys_proxy.usage import TokenCounts\n"
    )
    found = imports_of("llmkeys_proxy.providers.x", source, known)
    assert found == {
        "llmkeys_proxy.pipeline",
        "llmkeys_proxy.providers.base",
        "llmkeys_operator.api",
        "llmkeys_proxy.usage",
    }
    graph = {"llmkeys_proxy.providers.x": found}
    assert CONTRACTS[0].violations(graph) == ["llmkeys_proxy.providers.x imports llmkeys_operator.api"]
    assert CONTRACTS[5].violations(graph) == ["llmkeys_proxy.providers.x imports llmkeys_proxy.pipeline"]
