"""Kubernetes label selector matching (metav1.LabelSelector semantics) for LLMPolicy selection.

Called by `compile` to decide which policies select a VirtualKey (by namespace labels and by the
key's own labels). Pure; no API access.
"""

from __future__ import annotations

from collections.abc import Mapping

from llmkeys_operator import api

#: Label the apiserver puts on every namespace; lets a namespaceSelector match by name even when the
#: caller knows no other namespace labels.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def selector_matches(selector: api.LabelSelector | None, labels: Mapping[str, str]) -> bool:
    """True when `labels` satisfy the selector; an absent or empty selector matches everything."""
    if selector is None:
        return True
    for key, value in selector.match_labels.items():
        if labels.get(key) != value:
            return False
    return all(_requirement_matches(req, labels) for req in selector.match_expressions)


def _requirement_matches(req: api.LabelSelectorRequirement, labels: Mapping[str, str]) -> bool:
    present = req.key in labels
    if req.operator == "In":
        return present and labels[req.key] in req.values
    if req.operator == "NotIn":  # as in Kubernetes: an absent label is "not in"
        return not present or labels[req.key] not in req.values
    if req.operator == "Exists":
        return present
    return not present  # DoesNotExist


def namespace_labels_of(
    namespace: str, namespace_labels: Mapping[str, Mapping[str, str]] | None
) -> dict[str, str]:
    """The labels of a namespace as the apiserver would show them (name label always present)."""
    labels = dict((namespace_labels or {}).get(namespace, {}))
    labels[NAMESPACE_NAME_LABEL] = namespace
    return labels
