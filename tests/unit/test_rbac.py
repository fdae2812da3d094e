"""The chart's RBAC is exactly what the code calls: verbs derived from the code, compared with the rendered
Roles and ClusterRoles in both directions (nothing missing, nothing extra).

Operator: every `KubeClient` call site (an AST scan of the package: method name = verb, the `kube.*`
resource constant passed, `subresource=`), plus what kopf does for the handlers in
`handlers.REGISTRY` (list+watch per watched resource, a merge patch of annotations on resources
with change handlers, Events, the CRD scan) and the `blockOwnerDeletion` of key Secrets' owner
references. Proxy: the requests `KubernetesSource` and the token verifier's cluster issuer really
send, recorded by an API stand-in on loopback and classified with the API server's verb rules
(non-resource URLs as `("nonResourceURL", path)`, granted by the built-in
system:service-account-issuer-discovery ClusterRole, whose rules are Kubernetes' bootstrap policy).
"""

from __future__ import annotations

import ast
import asyncio
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import yaml
from aiohttp import web

from llmkeys_operator import api, handlers, keysecret, kube, runner, settings
from llmkeys_proxy import identity, kubesource

REPO = pathlib.Path(__file__).resolve().parents[2]
OPERATOR_DIR = REPO / "operator" / "llmkeys_operator"
CHART_DIR = REPO / "charts" / "llmkeys"
RELEASE, NAMESPACE = "llmkeys", "llmkeys-system"
KUBE_METHODS = {"get", "list", "create", "patch", "delete"}  # KubeClient method = RBAC verb

Grants = dict[tuple[str, str], set[str]]  # (apiGroup, resource[/subresource]) -> verbs
#: Built-in ClusterRoles the chart binds (not rendered by it): Kubernetes' bootstrap policy
#: (plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go).
BUILTIN_CLUSTER_ROLES: dict[str, list[dict[str, Any]]] = {
    "system:service-account-issuer-discovery": [
        {
            "nonResourceURLs": [
                "/.well-known/openid-configuration",
                "/.well-known/openid-configuration/",
                "/openid/v1/jwks",
                "/openid/v1/jwks/",
            ],
            "verbs": ["get"],
        }
    ],
}


# ---------------------------------------------------------------------------------- the operator


def _resource_constants() -> dict[str, kube.Resource]:
    return {name: value for name, value in vars(kube).items() if isinstance(value, kube.Resource)}


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef)
    return {node.name: node for node in ast.walk(tree) if isinstance(node, kinds)}


def _resource_params(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """Names of parameters annotated `kube.Resource`, in order of all parameters."""
    params = [*function.args.posonlyargs, *function.args.args, *function.args.kwonlyargs]
    return [p.arg for p in params if p.annotation and ast.unparse(p.annotation) == "kube.Resource"]


def _all_params(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    return [p.arg for p in [*function.args.posonlyargs, *function.args.args, *function.args.kwonlyargs]]


class _Scanner:
    """Resolves the resource argument of KubeClient calls, following `kube.Resource` parameters to
    the call sites of their function (within the module)."""

    def __init__(self, tree: ast.Module, where: str) -> None:
        self.tree = tree
        self.where = where
        self.functions = _functions(tree)
        self.constants = _resource_constants()

    def resolve(self, expr: ast.expr, function: ast.AST | None, depth: int = 0) -> list[kube.Resource] | None:
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == "kube":
            return [self.constants[expr.attr]] if expr.attr in self.constants else None
        if (
            isinstance(expr, ast.Name)
            and isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
            and expr.id in _resource_params(function)
        ):
            assert depth < 5, f"{self.where}: cannot follow {expr.id} through the call chain"
            index = _all_params(function).index(expr.id)
            found: list[kube.Resource] = []
            for caller in self.functions.values():
                for call in ast.walk(caller):
                    if not (isinstance(call, ast.Call) and ast.unparse(call.func) == function.name):
                        continue
                    args = {i: a for i, a in enumerate(call.args)}
                    args.update({_all_params(function).index(k.arg): k.value for k in call.keywords if k.arg})
                    assert index in args, f"{self.where}: {function.name}() called without {expr.id}"
                    resolved = self.resolve(args[index], caller, depth + 1)
                    shown = ast.unparse(args[index])
                    assert resolved, f"{self.where}: {function.name}({shown}) is not resolvable"
                    found.extend(resolved)
            assert found, f"{self.where}: {function.name} is never called: its {expr.id} is unknown"
            return found
        return None

    def calls(self) -> Iterator[tuple[kube.Resource, str | None, str]]:
        for function in [*self.functions.values(), None]:
            nodes = ast.walk(function) if function is not None else ast.iter_child_nodes(self.tree)
            for call in nodes:
                if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
                    continue
                if call.func.attr not in KUBE_METHODS or not call.args:
                    continue
                resources = self.resolve(call.args[0], function)
                if resources is None:
                    continue  # not a KubeClient call (e.g. dict.get)
                subresource = next((k.value for k in call.keywords if k.arg == "subresource"), None)
                sub = None
                if subresource is not None:
                    assert isinstance(subresource, ast.Constant), f"{self.where}: subresource must be literal"
                    sub = subresource.value
                for resource in resources:
                    yield resource, sub, call.func.attr


def operator_code_grants() -> tuple[Grants, set[str]]:
    """What the operator's own API calls need, and the `kube.*` constants the package references."""
    grants: Grants = {}
    referenced: set[str] = set()
    constants = _resource_constants()
    for path in sorted(OPERATOR_DIR.glob("*.py")):
        if path.name == "kube.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "kube"
                and node.attr in constants
            ):
                referenced.add(node.attr)
        for resource, sub, verb in _Scanner(tree, path.name).calls():
            name = f"{resource.plural}/{sub}" if sub else resource.plural
            grants.setdefault((resource.group, name), set()).add(verb)
    return grants, referenced


def kopf_grants() -> Grants:
    """What kopf itself calls for our registry and settings."""
    grants: Grants = {}
    registry = handlers.REGISTRY
    kopf_config = runner.kopf_settings(settings.OperatorSettings())
    watched = [
        *registry._indexing.get_all_handlers(),
        *registry._watching.get_all_handlers(),
        *registry._spawning.get_all_handlers(),
        *registry._changing.get_all_handlers(),
    ]
    for handler in watched:
        selector = handler.selector
        assert selector is not None and selector.any_name
        grants.setdefault((selector.group or "", selector.any_name), set()).update({"list", "watch"})
    # Change handlers and daemons/timers: kopf keeps its diff base and progress in annotations
    # (AnnotationsProgressStorage), written with a merge patch of the object itself.
    for handler in [*registry._changing.get_all_handlers(), *registry._spawning.get_all_handlers()]:
        grants[(handler.selector.group or "", handler.selector.any_name)].add("patch")
    # kopf's own Events (warnings and errors of handlers) are POSTed as core v1 Events.
    if kopf_config.posting.enabled:
        grants.setdefault(("", "events"), set()).add("create")
    # The resource scan watches CRDs to notice ours being (re)created.
    if not kopf_config.scanning.disabled:
        grants[("apiextensions.k8s.io", "customresourcedefinitions")] = {"list", "watch"}
    assert not registry._webhooks.get_all_handlers() or not kopf_config.admission.managed, (
        "managed webhook configurations need RBAC on admissionregistration.k8s.io: derive it here"
    )
    return grants


def owner_reference_grants() -> Grants:
    """blockOwnerDeletion on an ownerReference needs `update` on the owner's finalizers subresource
    where the OwnerReferencesPermissionEnforcement admission plugin runs."""
    vk = api.VirtualKey.model_validate(
        {
            "apiVersion": api.API_VERSION,
            "kind": "VirtualKey",
            "metadata": {"name": "k", "namespace": "n", "uid": "u"},
            "spec": {"owner": {"team": "t"}},
        }
    )
    reference = keysecret.owner_reference(vk)
    if not reference.get("blockOwnerDeletion"):
        return {}
    group = reference["apiVersion"].split("/")[0]
    return {(group, f"{kube.VIRTUALKEYS.plural}/finalizers"): {"update"}}


def operator_needs() -> Grants:
    needed: Grants = {}
    code, _ = operator_code_grants()
    for part in (code, kopf_grants(), owner_reference_grants()):
        for key, verbs in part.items():
            needed.setdefault(key, set()).update(verbs)
    return needed


# ------------------------------------------------------------------------------------- the proxy


def verb_of(method: str, path: str, query: dict[str, str]) -> tuple[str, str]:
    """(resource, verb) of a request, by the API server's rules (collection vs object, ?watch);
    a path outside /api and /apis is a non-resource URL: (path, lower-case method)."""
    if not path.startswith(("/api/", "/apis/")):
        return path, method.lower()
    parts = path.strip("/").split("/")
    parts = parts[2:] if parts[0] == "api" else parts[3:]  # drop /api/v1 or /apis/<group>/<version>
    if parts[:1] == ["namespaces"] and len(parts) > 2:
        parts = parts[2:]
    resource, name = parts[0], (parts[1] if len(parts) > 1 else None)
    if method == "GET":
        if query.get("watch") in ("true", "1"):
            return resource, "watch"
        return resource, "get" if name else "list"
    return resource, {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]


async def proxy_requests() -> set[tuple[str, str]]:
    """Run the proxy's config source and its cluster token issuer against an API stand-in; the
    (resource or non-resource URL, verb) pairs they sent."""
    seen: list[tuple[str, str, dict[str, str]]] = []
    base = ""

    async def secrets(request: web.Request) -> web.StreamResponse:
        seen.append((request.method, request.path, dict(request.query)))
        if request.path == "/.well-known/openid-configuration":
            return web.json_response({"issuer": "https://kubernetes.default.svc", "jwks_uri": base + "/x"})
        if request.path == "/openid/v1/jwks":
            return web.json_response({"keys": []})
        if request.query.get("watch") == "true":
            response = web.StreamResponse()
            await response.prepare(request)
            await asyncio.sleep(0.05)
            return response  # the stream ends: the source resumes the watch
        return web.json_response({"kind": "SecretList", "metadata": {"resourceVersion": "7"}, "items": []})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", secrets)
    runner_ = web.AppRunner(app)
    await runner_.setup()
    site = web.TCPSite(runner_, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    access = kubesource.ApiAccess(server=base)
    source = kubesource.KubernetesSource(NAMESPACE, access=access, retry_s=0.05)
    verifier = identity.TokenVerifier([identity.IssuerSource.kubernetes(access)])
    await source.start()
    await verifier.start()
    try:
        for _ in range(100):
            if source.watches >= 2 and verifier.status()[0]["age_s"] is not None:
                break
            await asyncio.sleep(0.02)
    finally:
        await verifier.close()
        await source.stop()
        await runner_.cleanup()
    assert source.lists >= 1 and source.watches >= 2
    assert verifier.status()[0]["error"] is None  # discovery and JWKS were read
    paths = {path for _, path, _ in seen}
    assert paths == {
        f"/api/v1/namespaces/{NAMESPACE}/secrets",
        "/.well-known/openid-configuration",
        "/openid/v1/jwks",
    }
    return {verb_of(method, path, query) for method, path, query in seen}


# ------------------------------------------------------------------------------------- the chart


def rendered(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    helm = pathlib.Path(sys.executable).parent / "helm"
    args = [str(helm), "template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE]
    if values:
        args += ["-f", "-"]
    out = subprocess.run(
        args, input=yaml.safe_dump(values or {}), capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def granted(docs: list[dict[str, Any]], service_account: str) -> Grants:
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs}
    grants: Grants = {}
    for binding in [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]:
        subjects = binding["subjects"]
        if not any(s["kind"] == "ServiceAccount" and s["name"] == service_account for s in subjects):
            continue
        ref = binding["roleRef"]
        namespace = None if ref["kind"] == "ClusterRole" else binding["metadata"]["namespace"]
        if ref["kind"] == "ClusterRole" and ref["name"] in BUILTIN_CLUSTER_ROLES:
            rules = BUILTIN_CLUSTER_ROLES[ref["name"]]
        else:
            rules = roles[(ref["kind"], namespace, ref["name"])]["rules"]
        for rule in rules:
            if "nonResourceURLs" in rule:
                for url in rule["nonResourceURLs"]:
                    grants.setdefault(("nonResourceURL", url), set()).update(rule["verbs"])
                continue
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    grants.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


# ------------------------------------------------------------------------------------- the tests


def test_the_scan_finds_every_api_call_of_the_operator() -> None:
    code, referenced = operator_code_grants()
    # Each resource the package names is used in some call the scan understood.
    assert referenced == {"SECRETS", "EVENTS", "VIRTUALKEYS", "PROVIDERCREDENTIALS", "LLMPOLICIES", "LEASES"}
    assert code[("", "secrets")] == {"get", "create", "patch", "delete"}
    assert code[("coordination.k8s.io", "leases")] == {"get", "create", "patch"}
    assert code[("llmkeys.io", "virtualkeys/status")] == {"patch"}


def test_operator_rbac_is_exactly_what_the_code_and_kopf_call() -> None:
    needed = operator_needs()
    for values in ({}, {"operator": {"watchNamespaces": ["team-a"]}}):
        have = granted(rendered(values), f"{RELEASE}-operator")
        missing = {k: sorted(v - have.get(k, set())) for k, v in needed.items() if v - have.get(k, set())}
        extra = {k: sorted(v - needed.get(k, set())) for k, v in have.items() if v - needed.get(k, set())}
        assert missing == {}, f"the chart lacks what the operator calls: {missing}"
        assert extra == {}, f"the chart grants what no code calls: {extra}"


def test_proxy_rbac_is_exactly_what_its_config_source_sends() -> None:
    sent = asyncio.run(proxy_requests())
    urls = {"/.well-known/openid-configuration", "/openid/v1/jwks"}
    assert sent == {("secrets", "list"), ("secrets", "watch"), *((url, "get") for url in urls)}
    resources = {("", resource): {verb for r, verb in sent if r == resource} for resource, _ in sent}
    resources = {k: v for k, v in resources.items() if k[1] not in urls}
    have = granted(rendered(), f"{RELEASE}-proxy")
    # The issuer-discovery role also allows the same URLs with a trailing slash: nothing more.
    assert have == resources | {("nonResourceURL", u): {"get"} for url in urls for u in (url, url + "/")}
    # Without the cluster's issuer (identities of ServiceAccounts off), the proxy reads Secrets only.
    off = granted(rendered({"proxy": {"identity": {"kubernetesIssuer": "off"}}}), f"{RELEASE}-proxy")
    assert off == resources
