"""`llmkeys approve|deny NAMESPACE/NAME [--reason]` and `llmkeys pending`: the approvers' commands.

Called by `cli`. They act as the user of the current kubeconfig (OIDC exec plugins included, via
the official client), so an approver needs nothing but kubectl access: `approve`/`deny` set the
annotation `llmkeys.io/approval` (and `llmkeys.io/approval-reason`) with a merge patch; the
admission webhook checks that the caller is an approver and turns the act into the recorded
approved-by/denied-by stamps, or refuses it (its message is printed). `pending` lists the keys
whose `status.approval.state` is Pending and, where the API server says who the caller is
(SelfSubjectReview), only those the caller may approve.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from llmkeys_operator import api


class ApproverError(Exception):
    """The command cannot be done; the message says why (printed without a traceback)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context")
    command = parser.prog.split()[-1]
    if command in ("approve", "deny"):
        parser.add_argument("key", metavar="NAMESPACE/NAME", help="the VirtualKey")
        parser.add_argument("--reason", required=command == "deny", help="why (recorded; required to deny)")
    else:
        parser.add_argument("-n", "--namespace", help="only this namespace (default: all you may list)")
        parser.add_argument("--all", action="store_true", help="every pending key, not only yours to approve")


def _clients(kubeconfig: str | None, context: str | None) -> Any:
    from kubernetes import client
    from kubernetes import config as kube_config

    try:
        kube_config.load_kube_config(config_file=kubeconfig, context=context)  # type: ignore[no-untyped-call]
    except Exception as exc:  # no kubeconfig, unknown context, ...
        raise ApproverError(f"cannot load kubeconfig: {exc}") from None
    return client.ApiClient()


def _refusal(exc: Any) -> str:
    """What the API server said, when an admission webhook refused (its own text, no object data)."""
    try:
        message = str(json.loads(exc.body).get("message", ""))
    except (TypeError, ValueError, AttributeError):
        message = ""
    if message.startswith("admission webhook "):
        return message
    return f"{exc.status} {exc.reason}"


def act(
    key: str, decision: str, reason: str | None, *, kubeconfig: str | None = None, context: str | None = None
) -> dict[str, Any]:
    """Ask for approval or denial of NAMESPACE/NAME as the kubeconfig's user; the stored object."""
    namespace, _, name = key.partition("/")
    if not namespace or not name:
        raise ApproverError("name the key as NAMESPACE/NAME")
    from kubernetes import client
    from kubernetes.client import exceptions

    annotations = {api.ANNOTATION_APPROVAL: decision, api.ANNOTATION_APPROVAL_REASON: reason or None}
    with _clients(kubeconfig, context) as api_client:
        objects = client.CustomObjectsApi(api_client)
        try:
            stored: Any = objects.patch_namespaced_custom_object(
                api.GROUP,
                api.VERSION,
                namespace,
                "virtualkeys",
                name,
                {"metadata": {"annotations": annotations}},
            )
        except exceptions.ApiException as exc:
            if exc.status == 404:
                raise ApproverError(f"VirtualKey {key} not found") from None
            raise ApproverError(f"refused: {_refusal(exc)}") from None
        except Exception as exc:  # connection refused, TLS, ...
            raise ApproverError(f"cannot reach the API server: {type(exc).__name__}") from None
    return dict(stored)


def whoami(api_client: Any) -> tuple[str, tuple[str, ...]] | None:
    """The caller's username and groups from a SelfSubjectReview, or None if the server cannot say."""
    from kubernetes import client
    from kubernetes.client import exceptions

    try:
        answer: Any = client.AuthenticationV1Api(api_client).create_self_subject_review(
            client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1", kind="SelfSubjectReview")
        )
    except (exceptions.ApiException, ValueError):
        return None
    user = answer.status.user_info if answer is not None and answer.status is not None else None
    if user is None or not user.username:
        return None
    return str(user.username), tuple(str(g) for g in user.groups or ())


def may_act(approvers: Iterable[str], username: str, groups: Sequence[str]) -> bool:
    names = set(approvers)
    return username in names or any(f"group:{group}" in names for group in groups)


def pending_rows(
    keys: Iterable[Mapping[str, Any]], caller: tuple[str, tuple[str, ...]] | None, show_all: bool
) -> list[tuple[str, ...]]:
    rows = []
    for vk in keys:
        status = vk.get("status") or {}
        approval = status.get("approval") or {}
        if approval.get("state") != "Pending":
            continue
        if caller is not None and not show_all and not may_act(approval.get("approvers") or (), *caller):
            continue
        meta = vk.get("metadata") or {}
        ready: Mapping[str, Any] = next(
            (c for c in status.get("conditions") or () if c.get("type") == "Ready"), {}
        )
        owner = ((vk.get("spec") or {}).get("owner") or {}).get("user") or "-"
        rows.append(
            (
                f"{meta.get('namespace')}/{meta.get('name')}",
                status.get("createdBy") or "-",
                owner,
                str(ready.get("lastTransitionTime") or "-"),
                str(ready.get("message") or ""),
            )
        )
    return sorted(rows)


def pending(
    namespace: str | None, show_all: bool, *, kubeconfig: str | None = None, context: str | None = None
) -> tuple[list[tuple[str, ...]], tuple[str, tuple[str, ...]] | None]:
    from kubernetes import client
    from kubernetes.client import exceptions

    with _clients(kubeconfig, context) as api_client:
        objects = client.CustomObjectsApi(api_client)
        listing: Any
        try:
            if namespace:
                listing = objects.list_namespaced_custom_object(
                    api.GROUP, api.VERSION, namespace, "virtualkeys"
                )
            else:
                listing = objects.list_cluster_custom_object(api.GROUP, api.VERSION, "virtualkeys")
        except exceptions.ApiException as exc:
            raise ApproverError(f"the API server refused the listing: {exc.status} {exc.reason}") from None
        except Exception as exc:
            raise ApproverError(f"cannot reach the API server: {type(exc).__name__}") from None
        caller = None if show_all else whoami(api_client)
    return pending_rows(listing.get("items") or [], caller, show_all), caller


def run(args: argparse.Namespace) -> int:
    try:
        if args.command in ("approve", "deny"):
            decision = api.APPROVE if args.command == "approve" else api.DENY
            stored = act(args.key, decision, args.reason, kubeconfig=args.kubeconfig, context=args.context)
            stamps = (stored.get("metadata") or {}).get("annotations") or {}
            by = stamps.get(
                api.ANNOTATION_APPROVED_BY if decision == api.APPROVE else api.ANNOTATION_DENIED_BY
            )
            if by:
                print(f"{args.key}: {'approved' if decision == api.APPROVE else 'denied'} by {by}")
            else:  # no webhook answered: the act is stored but counts for nothing in a cluster
                print(f"{args.key}: {api.ANNOTATION_APPROVAL}={decision} written, but no webhook recorded it")
                return 1
            return 0
        rows, caller = pending(args.namespace, args.all, kubeconfig=args.kubeconfig, context=args.context)
    except ApproverError as exc:
        print(f"llmkeys {args.command}: {exc}", file=sys.stderr)
        return 2
    if caller is None and not args.all:
        print("(the API server did not say who you are: showing every pending key)", file=sys.stderr)
    header = ("KEY", "CREATED-BY", "OWNER", "WAITING-SINCE", "WHY")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
    return 0
