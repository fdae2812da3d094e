"""The portal's aiohttp application: routes, sign-in, sessions, CSRF, security headers.

`create_app(settings, kube_client, oidc_client)` is called by `server` (the `llmkeys portal`
command) and by tests. Every page needs a session except sign-in, health and static files; a GET
without one is redirected to sign-in (the path to come back to is checked: only local paths).
Every POST needs the session's CSRF token and, when the browser sends one, the portal's Origin.
Every Kubernetes call goes through `kubeapi.KubeAsUser` as the signed-in identity; on top of RBAC
the portal shows and acts on a key only for its owner (spec.owner.user or the stamped creator),
an admin named by a policy selecting it, or (to approve) one of its approvers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import logging
import pathlib
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from llmkeys_operator import api, keysecret
from llmkeys_operator.portal import guardrails, identity, kubeapi, oidc, pages, session, settings

logger = logging.getLogger("llmkeys.portal")

HERE = pathlib.Path(__file__).parent
SESSION_COOKIE = "llmkeys-portal"
LOGIN_COOKIE = "llmkeys-portal-login"
#: Env entries shown on the reveal page, in this order (all come from the key Secret).
ENV_LINES = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "GEMINI_API_KEY",
    "GOOGLE_GEMINI_BASE_URL",
    "LLMKEYS_API_KEY",
    "LLMKEYS_BASE_URL",
)
_PUBLIC_PATHS = ("/login", "/callback", "/healthz", "/readyz", "/signed-out", "/static/")

SETTINGS: web.AppKey[settings.PortalSettings] = web.AppKey("settings", settings.PortalSettings)
KUBE: web.AppKey[kubeapi.KubeAsUser] = web.AppKey("kube", kubeapi.KubeAsUser)
OIDC: web.AppKey[oidc.OidcClient] = web.AppKey("oidc", oidc.OidcClient)
COOKIES: web.AppKey[session.CookieCodec] = web.AppKey("cookies", session.CookieCodec)
TEMPLATES: web.AppKey[jinja2.Environment] = web.AppKey("templates", jinja2.Environment)
#: Reveal tickets already used by this process (id -> when), so a replayed cookie shows nothing.
CONSUMED: web.AppKey[dict[str, float]] = web.AppKey("consumed", dict)
SESSION: web.RequestKey[session.Session] = web.RequestKey("session", session.Session)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AccessLogger(AbstractAccessLogger):
    """Method, path and status only: query strings (the sign-in callback's code) are never logged."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %d %.3fs", request.method, request.path, response.status, time)


# ------------------------------------------------------------------------------------ helpers


def _session(request: web.Request) -> session.Session:
    found: session.Session | None = request.get(SESSION)
    if found is None:
        raise web.HTTPFound("/login")
    return found


def _who(request: web.Request) -> identity.Identity:
    return _session(request).who


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    env = request.app[TEMPLATES]
    current: session.Session | None = request.get(SESSION)
    html = env.get_template(template).render(
        who=current.who if current else None,
        csrf=current.csrf if current else "",
        path=request.path,
        **context,
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def redirect(location: str, status: int = 303) -> web.Response:
    return web.Response(status=status, headers={"Location": location})


def error_page(request: web.Request, status: int, title: str, message: str) -> web.Response:
    return render(request, "error.html", status=status, title=title, message=message)


def safe_next(value: str | None) -> str:
    """A local path to return to after sign-in; anything else (other hosts, schemes, `//x`,
    backslashes, control characters) becomes "/"."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    if any(ord(ch) < 0x21 or ch == "\\" for ch in value):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def _set_cookie(
    response: web.StreamResponse, config: settings.PortalSettings, name: str, value: str, max_age: int
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        secure=config.portal_cookie_secure,
        samesite="Lax",
    )


def save_session(request: web.Request, response: web.StreamResponse, current: session.Session) -> None:
    config = request.app[SETTINGS]
    remaining = int(config.portal_session_max_age_s - (time.time() - current.signed_in_at))
    sealed = request.app[COOKIES].seal_session(current)
    _set_cookie(response, config, SESSION_COOKIE, sealed, max(remaining, 1))
    request[SESSION] = current


def _csp(config: settings.PortalSettings) -> str:
    issuer = urlsplit(config.issuer)
    idp = f"{issuer.scheme}://{issuer.netloc}"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'; form-action 'self' {idp}; frame-ancestors 'none'; base-uri 'none'"
    )


# -------------------------------------------------------------------------------- middlewares


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400:
            response = error_page(request, exc.status, exc.reason, "")
        else:
            response = web.Response(status=exc.status, headers=exc.headers)
    except kubeapi.Forbidden as exc:
        response = error_page(request, 403, "Not allowed", exc.message)
    except kubeapi.NotFound as exc:
        response = error_page(request, 404, "Not found", exc.message)
    except kubeapi.KubeError as exc:
        response = error_page(
            request, exc.status if exc.status < 600 else 502, "The cluster said no", exc.message
        )
    except Exception:
        logger.exception("%s %s failed", request.method, request.path)
        response = error_page(request, 500, "Something went wrong", "The error has been logged.")
    config = request.app[SETTINGS]
    headers = response.headers
    headers["Content-Security-Policy"] = _csp(config)
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    headers["Referrer-Policy"] = "same-origin"  # "no-referrer" would make form posts send Origin: null
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    if not request.path.startswith("/static/"):
        headers["Cache-Control"] = "no-store"
    if config.portal_cookie_secure:
        headers["Strict-Transport-Security"] = "max-age=31536000"
    return response


@web.middleware
async def sessions(request: web.Request, handler: Handler) -> web.StreamResponse:
    codec = request.app[COOKIES]
    current = codec.open_session(request.cookies.get(SESSION_COOKIE))
    if current is not None:
        request[SESSION] = current
    if request.path.startswith(_PUBLIC_PATHS):
        return await handler(request)
    if request.method == "POST":
        form = await request.post()
        origin = request.headers.get("Origin")
        if (
            current is None
            or not current.csrf_ok(str(form.get("csrf", "")))
            or (origin is not None and origin != request.app[SETTINGS].public_origin)
        ):
            return error_page(
                request,
                403,
                "Form refused",
                "The form expired or did not come from this portal. Reload the page and try again.",
            )
    elif current is None:
        target = request.path_qs
        raise web.HTTPFound("/login?next=" + quote(target, safe=""))
    return await handler(request)


# ------------------------------------------------------------------------------------ sign-in


async def login(request: web.Request) -> web.StreamResponse:
    client = request.app[OIDC]
    try:
        url, txn = await client.begin(safe_next(request.query.get("next")))
    except oidc.SignInError as exc:
        return error_page(request, 502, "Sign-in is not available", str(exc))
    response = redirect(url, 302)
    config = request.app[SETTINGS]
    _set_cookie(
        response, config, LOGIN_COOKIE, request.app[COOKIES].seal_login(txn.as_dict()), oidc.LOGIN_MAX_AGE_S
    )
    return response


async def callback(request: web.Request) -> web.StreamResponse:
    codec = request.app[COOKIES]
    data = codec.open_login(request.cookies.get(LOGIN_COOKIE))
    txn = oidc.LoginTransaction.from_dict(data) if data else None
    if txn is None:
        return error_page(
            request,
            400,
            "Sign-in failed",
            "No sign-in was started in this browser (or it expired). Start again.",
        )
    try:
        who = await request.app[OIDC].finish(dict(request.query), txn)
        current = session.new_session(who)
        response = redirect(safe_next(txn.next_path), 302)
        save_session(request, response, current)
    except (oidc.SignInError, session.SessionTooLarge) as exc:
        logger.info("sign-in refused: %s", exc)
        response = error_page(request, 403, "Sign-in failed", str(exc))
    response.del_cookie(LOGIN_COOKIE, path="/")
    logger.info("signed in") if response.status == 302 else None
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    target = None
    try:
        target = await request.app[OIDC].end_session_url()
    except oidc.SignInError:
        target = None
    response = redirect(target or "/signed-out")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def signed_out(request: web.Request) -> web.StreamResponse:
    return render(request, "signed_out.html")


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.StreamResponse:
    try:
        await request.app[OIDC].metadata()
    except oidc.SignInError as exc:
        return web.Response(status=503, text=f"identity provider not reachable: {exc}\n")
    return web.Response(text="ok\n")


# --------------------------------------------------------------------------------- reading


@dataclasses.dataclass
class Listing:
    keys: list[pages.KeyView]
    forbidden: list[str]


async def list_keys(request: web.Request) -> Listing:
    """Every VirtualKey the user may list, in the configured namespaces (or cluster-wide)."""
    config, kube_client, who = request.app[SETTINGS], request.app[KUBE], _who(request)
    namespaces: list[str | None] = list(config.portal_namespaces) or [None]
    results = await asyncio.gather(
        *(kube_client.list(who, kubeapi.VIRTUALKEYS, ns) for ns in namespaces), return_exceptions=True
    )
    keys: list[pages.KeyView] = []
    forbidden: list[str] = []
    for ns, result in zip(namespaces, results, strict=True):
        if isinstance(result, kubeapi.Forbidden):
            forbidden.append(ns or "all namespaces")
        elif isinstance(result, BaseException):
            raise result
        else:
            keys += [pages.key_view(item) for item in result]
    if forbidden and not keys and len(forbidden) == len(namespaces):
        raise kubeapi.Forbidden(403, f"{who.username} may not list VirtualKeys in {', '.join(forbidden)}")
    return Listing(keys=sorted(keys, key=lambda k: (k.namespace, k.name)), forbidden=forbidden)


async def list_policies(request: web.Request) -> list[dict[str, Any]] | None:
    """The LLMPolicies as the user sees them; None when the user may not read them."""
    try:
        return await request.app[KUBE].list(_who(request), kubeapi.LLMPOLICIES, None)
    except kubeapi.Forbidden:
        return None


async def namespace_labels(request: web.Request, namespace: str) -> dict[str, str]:
    try:
        found = await request.app[KUBE].get(_who(request), kubeapi.NAMESPACES, None, namespace)
    except kubeapi.Forbidden:
        return {}
    return dict(((found or {}).get("metadata") or {}).get("labels") or {})


@dataclasses.dataclass
class Access:
    view: pages.KeyView
    raw: dict[str, Any]
    owner: bool
    admin: bool
    approver: bool
    policies: list[api.LLMPolicy]


async def key_access(request: web.Request) -> Access:
    """The key in the URL and what the user may do with it; 403 page when nothing."""
    who = _who(request)
    ns, name = request.match_info["namespace"], request.match_info["name"]
    raw = await request.app[KUBE].get(who, kubeapi.VIRTUALKEYS, ns, name)
    if raw is None:
        raise kubeapi.NotFound(404, f"VirtualKey {ns}/{name} does not exist")
    view = pages.key_view(raw)
    policies = await list_policies(request) or []
    labels = await namespace_labels(request, ns)
    applying = guardrails.applying(policies, ns, labels, (raw.get("metadata") or {}).get("labels"))
    access = Access(
        view=view,
        raw=raw,
        owner=view.owned_by(who),
        admin=any(guardrails.is_admin(r, who) for r in applying),
        approver=pages.fits_approver(view, applying, who),
        policies=applying,
    )
    if not (access.owner or access.admin or access.approver):
        raise kubeapi.Forbidden(403, f"VirtualKey {ns}/{name} belongs to someone else")
    return access


# ----------------------------------------------------------------------------------- pages


async def my_keys(request: web.Request) -> web.StreamResponse:
    who = _who(request)
    listing = await list_keys(request)
    mine = [k for k in listing.keys if k.owned_by(who)]
    return render(request, "keys.html", keys=mine, forbidden=listing.forbidden, title="My keys")


async def key_detail(request: web.Request) -> web.StreamResponse:
    access = await key_access(request)
    bars, top = pages.spend_bars(access.view.history)
    return render(
        request, "detail.html", key=access.view, access=access, bars=bars, top=top, title=access.view.ref
    )


def _form_dict(form: Mapping[str, Any]) -> dict[str, Any]:
    getall = getattr(form, "getall", None)
    result: dict[str, Any] = {}
    for key in form:
        values = getall(key) if getall is not None else [form[key]]
        result[key] = [str(v) for v in values] if key in ("providers", "models") else str(values[-1])
    return result


async def _create_context(request: web.Request, namespace: str | None) -> dict[str, Any]:
    config = request.app[SETTINGS]
    namespaces = list(config.portal_namespaces)
    if namespace not in namespaces:
        namespace = namespaces[0] if namespaces else None
    policies = await list_policies(request)
    offer = None
    if namespace is not None:
        labels = await namespace_labels(request, namespace)
        offer = guardrails.offer_for(policies or [], namespace, labels, _who(request))
    return {
        "namespaces": namespaces,
        "namespace": namespace,
        "offer": offer,
        "policies_hidden": policies is None,
        "owner_fields": guardrails.OWNER_FORM_FIELDS,
    }


async def new_key_form(request: web.Request) -> web.StreamResponse:
    context = await _create_context(request, request.query.get("namespace"))
    return render(request, "new.html", form={}, errors=[], title="New key", **context)


async def create_key(request: web.Request) -> web.StreamResponse:
    who = _who(request)
    form = _form_dict(await request.post())
    namespace = form.get("namespace", "")
    context = await _create_context(request, namespace)
    offer: guardrails.Offer | None = context["offer"]
    if offer is None or namespace != context["namespace"]:
        return render(
            request,
            "new.html",
            status=422,
            form=form,
            title="New key",
            errors=["choose one of the namespaces offered"],
            **context,
        )
    key_request, errors = guardrails.build_request(form, offer, who)
    if key_request is not None:
        policies = await list_policies(request) or []
        violation = guardrails.policy_violation(
            key_request, policies, await namespace_labels(request, namespace)
        )
        if violation:
            errors = [violation]
    if key_request is None or errors:
        return render(request, "new.html", status=422, form=form, errors=errors, title="New key", **context)
    body = {
        "apiVersion": api.API_VERSION,
        "kind": "VirtualKey",
        "metadata": {"name": key_request.name, "namespace": namespace},
        "spec": key_request.spec,
    }
    try:
        created = await request.app[KUBE].create(who, kubeapi.VIRTUALKEYS, namespace, body)
    except kubeapi.Refused as exc:
        return render(
            request, "new.html", status=422, form=form, errors=[exc.message], title="New key", **context
        )
    uid = str((created.get("metadata") or {}).get("uid") or "")
    ticket = session.RevealTicket(
        id=secrets.token_urlsafe(12),
        namespace=namespace,
        name=key_request.name,
        uid=uid,
        issued_at=time.time(),
    )
    response = redirect(f"/keys/{quote(namespace)}/{quote(key_request.name)}/reveal")
    save_session(request, response, _session(request).with_ticket(ticket))
    logger.info("%s created VirtualKey %s/%s", who.username, namespace, key_request.name)
    return response


def _decode(data: Mapping[str, Any]) -> dict[str, str]:
    decoded = {}
    for key, value in data.items():
        try:
            decoded[key] = base64.b64decode(str(value), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            continue
    return decoded


def _ticket_fulfilled(
    secret: Mapping[str, Any] | None, ticket: session.RevealTicket
) -> dict[str, str] | None:
    if not secret:
        return None
    meta = secret.get("metadata") or {}
    if ticket.uid and not keysecret.is_owned_by(secret, ticket.uid):
        return None
    if (
        ticket.rotate_token
        and (meta.get("annotations") or {}).get(keysecret.ANNOTATION_ROTATE_HANDLED) != ticket.rotate_token
    ):
        return None
    data = _decode(secret.get("data") or {})
    return data if data.get(keysecret.API_KEY) else None


async def reveal(request: web.Request) -> web.StreamResponse:
    access = await key_access(request)
    if not access.owner:
        raise kubeapi.Forbidden(403, "only the key's owner sees its value")
    current = _session(request)
    now = time.time()
    consumed = request.app[CONSUMED]
    for old in [t for t, at in consumed.items() if now - at > session.TICKET_MAX_AGE_S]:
        consumed.pop(old, None)
    ticket = current.ticket_for(access.view.namespace, access.view.name, now)
    if ticket is None or ticket.id in consumed:
        return render(
            request, "reveal.html", key=access.view, shown=False, waiting=False, title="Key shown once"
        )
    config, who = request.app[SETTINGS], current.who
    deadline = asyncio.get_running_loop().time() + config.portal_reveal_wait_s
    data = None
    while True:
        secret = await request.app[KUBE].get(
            who, kubeapi.SECRETS, access.view.namespace, access.view.secret_name
        )
        data = _ticket_fulfilled(secret, ticket)
        if data is not None or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.25)
    if data is None:
        fresh = await request.app[KUBE].get(who, kubeapi.VIRTUALKEYS, access.view.namespace, access.view.name)
        view = pages.key_view(fresh) if fresh else access.view
        return render(
            request, "reveal.html", key=view, shown=False, waiting=True, title="Waiting for the key"
        )
    consumed[ticket.id] = now
    env = [(name, data[name]) for name in ENV_LINES if name in data]
    response = render(
        request,
        "reveal.html",
        key=access.view,
        shown=True,
        waiting=False,
        api_key=data[keysecret.API_KEY],
        env=env,
        title="Your new key",
    )
    save_session(request, response, current.without_ticket(ticket.id))
    return response


async def _act(request: web.Request, what: str) -> web.StreamResponse:
    access = await key_access(request)
    who = _who(request)
    view = access.view
    kube_client = request.app[KUBE]
    if what != "approve" and not (access.owner or access.admin):
        raise kubeapi.Forbidden(403, f"only the owner or an admin may {what} {view.ref}")
    form = await request.post()
    response: web.StreamResponse = redirect(f"/keys/{quote(view.namespace)}/{quote(view.name)}")
    if what == "rotate":
        token = f"portal-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"
        await kube_client.patch(
            who,
            kubeapi.VIRTUALKEYS,
            view.namespace,
            view.name,
            {"metadata": {"annotations": {keysecret.ANNOTATION_ROTATE: token}}},
        )
        if access.owner:
            ticket = session.RevealTicket(
                id=secrets.token_urlsafe(12),
                namespace=view.namespace,
                name=view.name,
                rotate_token=token,
                issued_at=time.time(),
            )
            response = redirect(f"/keys/{quote(view.namespace)}/{quote(view.name)}/reveal")
            save_session(request, response, _session(request).with_ticket(ticket))
    elif what in ("suspend", "resume"):
        await kube_client.patch(
            who, kubeapi.VIRTUALKEYS, view.namespace, view.name, {"spec": {"suspended": what == "suspend"}}
        )
    elif what == "delete":
        await kube_client.delete(who, kubeapi.VIRTUALKEYS, view.namespace, view.name)
        response = redirect("/")
    elif what == "approve":
        if not access.approver:
            raise kubeapi.Forbidden(403, f"{who.username} is not an approver of {view.ref}")
        decision = str(form.get("decision", ""))
        if decision not in (api.APPROVE, api.DENY):
            return error_page(request, 400, "Bad request", "decision must be approve or deny")
        reason = str(form.get("reason", "")).strip()[:512]
        annotations = {api.ANNOTATION_APPROVAL: decision, api.ANNOTATION_APPROVAL_REASON: reason or None}
        await kube_client.patch(
            who, kubeapi.VIRTUALKEYS, view.namespace, view.name, {"metadata": {"annotations": annotations}}
        )
        response = redirect("/approvals")
    logger.info("%s: %s %s", who.username, what, view.ref)
    return response


def _action(what: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await _act(request, what)

    return handler


async def approvals(request: web.Request) -> web.StreamResponse:
    who = _who(request)
    listing = await list_keys(request)
    policies = await list_policies(request) or []
    waiting = []
    for key in listing.keys:
        if not key.pending_approval:
            continue
        labels = await namespace_labels(request, key.namespace)
        applying = guardrails.applying(policies, key.namespace, labels, key.labels)
        if pages.fits_approver(key, applying, who):
            waiting.append(key)
    return render(request, "approvals.html", keys=waiting, title="Approvals")


async def admin(request: web.Request) -> web.StreamResponse:
    who = _who(request)
    policies = await list_policies(request) or []
    if not any(guardrails.is_admin(p, who) for raw in policies if (p := guardrails.parse_policy(raw))):
        raise kubeapi.Forbidden(
            403, "the admin views are for the admins an LLMPolicy names (spec.selfService.admins)"
        )
    listing = await list_keys(request)
    view = request.query.get("view", "all")
    by = request.query.get("by", "team")
    by = by if by in pages.GROUP_BY_FIELDS else "team"
    try:
        days = max(1, min(int(request.query.get("days", "30")), 3650))
        threshold = max(0.0, min(float(request.query.get("threshold", "0.8")), 10.0))
    except ValueError:
        days, threshold = 30, 0.8
    now = datetime.now(UTC)
    return render(
        request,
        "admin.html",
        view=view,
        keys=listing.keys,
        inactive=pages.inactive(listing.keys, days, now),
        near_cap=pages.near_cap(listing.keys, threshold),
        top=pages.top_spenders(listing.keys, by),
        by=by,
        days=days,
        threshold=threshold,
        group_fields=pages.GROUP_BY_FIELDS,
        forbidden=listing.forbidden,
        title="Admin",
    )


# ------------------------------------------------------------------------------------ factory


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.filters["when"] = lambda v: v.strftime("%Y-%m-%d %H:%M UTC") if v else "never"
    env.filters["quote"] = lambda v: quote(str(v), safe="")
    return env


def create_app(
    config: settings.PortalSettings, kube_client: kubeapi.KubeAsUser, oidc_client: oidc.OidcClient
) -> web.Application:
    app = web.Application(middlewares=[security_headers, sessions], client_max_size=64 * 1024)
    app[SETTINGS] = config
    app[KUBE] = kube_client
    app[OIDC] = oidc_client
    app[COOKIES] = session.CookieCodec(
        config.portal_session_key,
        max_age_s=config.portal_session_max_age_s,
        login_max_age_s=oidc.LOGIN_MAX_AGE_S,
    )
    app[TEMPLATES] = _templates()
    app[CONSUMED] = {}

    async def close_clients(app: web.Application) -> Any:
        yield
        await kube_client.close()
        await oidc_client.close()

    app.cleanup_ctx.append(close_clients)
    key = "/keys/{namespace}/{name}"
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/login", login)
    app.router.add_get("/callback", callback)
    app.router.add_post("/logout", logout)
    app.router.add_get("/signed-out", signed_out)
    app.router.add_get("/", my_keys)
    app.router.add_get("/keys/new", new_key_form)
    app.router.add_post("/keys/new", create_key)
    app.router.add_get(key, key_detail)
    app.router.add_get(key + "/reveal", reveal)
    for what in ("rotate", "suspend", "resume", "delete", "approve"):
        app.router.add_post(f"{key}/{what}", _action(what))
    app.router.add_get("/approvals", approvals)
    app.router.add_get("/admin", admin)
    app.router.add_static("/static/", HERE / "static", append_version=True)
    return app
