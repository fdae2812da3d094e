"""`llmkeys report` and `kubectl-llmkeys report` against a cluster (the kmock emulator), with a kubeconfig.

The cluster is seeded with VirtualKeys and LLMPolicies whose status holds what the operator writes
(usage per period with refusals and breakdowns, 31-day history, pools); each of the seven documented
questions is asked through the CLI, exactly as a person would, and the numbers are checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import pathlib
import subprocess
import sys
from typing import Any

from tests import kmock_cluster as kc

from llmkeys_operator import cli, report

NOW = "2026-05-20T12:00:00Z"


def _usage(
    requests: int, tokens: int, spend: str, *, refusals: dict[str, int] | None = None, models: Any = None
) -> dict[str, Any]:
    return {
        "periodStart": "2026-05-01T00:00:00Z",
        "requests": requests,
        "inputTokens": tokens - tokens // 4,
        "outputTokens": tokens // 4,
        "spendUSD": spend,
        "lastUsedAt": "2026-05-20T11:00:00Z",
        **({"refusals": refusals} if refusals else {}),
        **({"byModel": models} if models else {}),
        "byProvider": [{"name": "llmkeys/openai", "requests": requests, "tokens": tokens, "spendUSD": spend}],
    }


def _key(
    name: str,
    namespace: str,
    owner: dict[str, str],
    *,
    month: dict[str, Any] | None = None,
    history: list[tuple[str, str]] = (),  # type: ignore[assignment]
    created: str = "2026-04-01T00:00:00Z",
    last_used: str | None = None,
    expires: str | None = None,
    limits: dict[str, Any] | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "keyId": f"{name[:6]:a<6}000000",
        "conditions": [{"type": "Ready", "status": "True", "reason": "Active", "message": ""}],
        "effective": {"limits": limits or {}},
    }
    if month is not None or last_used is not None:
        status["usage"] = {
            **({"month": month} if month else {}),
            "history": [{"date": d, "requests": 1, "tokens": 10, "spendUSD": s} for d, s in history],
            **({"lastUsedAt": last_used} if last_used else {}),
        }
    if expires:
        status["expiresAt"] = expires
    return {
        "apiVersion": kc.GROUP_VERSION,
        "kind": "VirtualKey",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created},
        "spec": {"owner": owner},
        "status": status,
    }


KEYS = [
    _key(
        "alice",
        "payments",
        {"user": "alice@example.com", "team": "payments", "app": "checkout"},
        month=_usage(
            40,
            90_000,
            "12.5",
            models=[{"name": "gpt-5.4", "requests": 40, "tokens": 90_000, "spendUSD": "12.5"}],
        ),
        history=[("2026-05-18", "1"), ("2026-05-19", "1"), ("2026-05-20", "9")],
        limits={"spendPerMonthUSD": "15"},
    ),
    _key(
        "bob",
        "search",
        {"user": "bob@example.com", "team": "search", "app": "ranker"},
        month=_usage(
            200,
            150_000,
            "3.25",
            models=[
                {"name": "gpt-5.4-mini", "requests": 150, "tokens": 100_000, "spendUSD": "1.25"},
                {"name": "gpt-5.4", "requests": 50, "tokens": 50_000, "spendUSD": "2"},
            ],
        ),
        history=[("2026-05-17", "2"), ("2026-05-20", "2.5")],
    ),
    _key(
        "triage",
        "search",
        {"agent": "triage-bot", "team": "search", "app": "helpdesk"},
        month=_usage(
            30,
            5_000,
            "0.5",
            refusals={"rate_limit_exceeded": 17, "model_not_allowed": 2},
            models=[{"name": "gpt-5.4-mini", "requests": 30, "tokens": 5_000, "spendUSD": "0.5"}],
        ),
        history=[("2026-05-20", "0.5")],
    ),
    _key(
        "old", "payments", {"user": "carol@example.com", "team": "payments"}, last_used="2026-03-02T08:00:00Z"
    ),
    _key("unused", "search", {"user": "dave@example.com", "team": "search"}, created="2026-02-01T00:00:00Z"),
    _key("new", "search", {"user": "erin@example.com", "team": "search"}, created="2026-05-19T00:00:00Z"),
    _key(
        "contractor",
        "search",
        {"user": "frank@example.com", "team": "search"},
        expires="2026-05-25T12:00:00Z",
        created="2026-05-19T00:00:00Z",
    ),
]

POLICY = {
    "apiVersion": kc.GROUP_VERSION,
    "kind": "LLMPolicy",
    "metadata": {"name": "teams"},
    "spec": {"budgets": [{"name": "monthly", "groupBy": "team", "spendPerMonthUSD": "20"}]},
    "status": {
        "pools": [
            {
                "budget": "monthly",
                "group": "payments",
                "periodStart": "2026-05-01T00:00:00Z",
                "spendUSD": "17",
                "tokens": 95_000,
                "capUSD": "20",
            },
            {
                "budget": "monthly",
                "group": "search",
                "periodStart": "2026-05-01T00:00:00Z",
                "spendUSD": "3.75",
                "tokens": 155_000,
                "capUSD": "20",
                "refusals": {"pool_budget_exceeded": 3},
            },
        ]
    },
}


def _kubeconfig(path: pathlib.Path, server: str) -> pathlib.Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "me", "user": {"token": "not-checked-by-the-emulator"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "me"}}],
        "current-context": "emulator",
    }
    path.write_text(json.dumps(config))
    return path


async def test_report_answers_the_seven_questions_on_a_cluster(
    kube_cluster: kc.LlmkeysKubernetesEmulator, cluster_client: kc.ClusterClient, tmp_path: pathlib.Path
) -> None:
    for body in KEYS:
        await cluster_client.create(kc.VIRTUALKEYS, body)
        # The emulator stamps creationTimestamp with the real time; these keys are older.
        meta = body["metadata"]
        patch = {"metadata": {"creationTimestamp": meta["creationTimestamp"]}}
        await cluster_client.patch(kc.VIRTUALKEYS, meta["namespace"], meta["name"], patch)
    await cluster_client.create(kc.POLICIES, POLICY)
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", str(kube_cluster.url))
    where = ["--kubeconfig", str(kubeconfig), "--now", NOW]

    async def ask(*argv: str) -> list[dict[str, Any]]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            # The kubernetes client blocks; the emulator runs on this loop.
            code = await asyncio.to_thread(cli.main, ["report", *where, "-o", "json", *argv])
        assert code == 0, out.getvalue()
        rows: list[dict[str, Any]] = json.loads(out.getvalue())
        return rows

    # 1. Which developer consumed the most tokens?  `llmkeys report usage --by user --sort tokens --top 1`
    assert [
        (r["user"], r["tokens"]) for r in await ask("usage", "--by", "user", "--sort", "tokens", "--top", "1")
    ] == [("bob@example.com", 150_000)]
    # 2. Which app caused the cost spike?  `llmkeys report spikes --by app --days 7`
    spikes = await ask("spikes", "--by", "app", "--days", "7")
    assert (spikes[0]["app"], spikes[0]["todayUSD"], spikes[0]["dailyMeanUSD"]) == (
        "checkout",
        "9",
        "0.285714",
    )
    assert spikes[0]["ratio"] == 31.5
    # 3. Which agent hit the rate limit?  `llmkeys report limited --by agent --code rate_limit_exceeded`
    #    (here over the month: `--period month`)
    limited = await ask("limited", "--by", "agent", "--period", "month", "--code", "rate_limit_exceeded")
    assert [(r["kind"], r["agent"], r["refusals"]) for r in limited] == [("key", "triage-bot", 17)]
    # 4. Which team is approaching its monthly cap?  `llmkeys report near-caps --threshold 80`
    near = await ask("near-caps", "--threshold", "80")
    assert [(r["kind"], r["name"], r["team"], r["percent"]) for r in near] == [
        ("pool", "teams/monthly", "payments", 85.0),
        ("key", "payments/alice", "payments", 83.3),
    ]
    # 5. Which model drives the most spend?  `llmkeys report usage --by model --sort spend`
    models = await ask("usage", "--by", "model", "--sort", "spend")
    assert [(r["model"], r["spendUSD"], r["keys"]) for r in models] == [
        ("gpt-5.4", "14.5", 2),
        ("gpt-5.4-mini", "1.75", 2),
    ]
    # 6. Which provider is used most?  `llmkeys report usage --by provider --sort requests`
    assert [
        (r["provider"], r["requests"]) for r in await ask("usage", "--by", "provider", "--sort", "requests")
    ] == [("llmkeys/openai", 270)]
    # 7. Which keys are inactive and should be revoked?  `llmkeys report inactive --days 30`
    inactive = await ask("inactive", "--days", "30")
    assert [(r["key"], r["lastUsedAt"], r["idleDays"]) for r in inactive] == [
        ("search/unused", "never", 108),
        ("payments/old", "2026-03-02T08:00:00Z", 79),
    ]
    expiring = await ask("expiring", "--days", "7")
    assert [(r["key"], r["daysLeft"]) for r in expiring] == [("search/contractor", 5.0)]

    # Pools refused by their cap show up next to keys; one namespace limits the keys listed.
    all_limited = await ask("limited", "--by", "team", "--period", "month")
    assert [(r["kind"], r["team"], r["refusals"]) for r in all_limited] == [
        ("key", "search", 19),
        ("pool", "teams/monthly/search", 3),
    ]
    where += ["-n", "payments"]
    assert {r["team"] for r in await ask("usage", "--by", "team")} == {"payments"}


def test_kubectl_plugin_is_the_same_command(tmp_path: pathlib.Path) -> None:
    """`kubectl llmkeys report ...` runs the `kubectl-llmkeys` script: the same parser and code."""
    script = pathlib.Path(sys.executable).parent / "kubectl-llmkeys"
    state = tmp_path / "state"
    (state / "status" / "virtualkeys" / "default").mkdir(parents=True)
    (state / "status" / "virtualkeys" / "default" / "k.json").write_text(json.dumps(KEYS[0]))
    done = subprocess.run(
        [str(script), "report", "--state-dir", str(state), "--now", NOW, "-o", "csv", "usage", "--by", "app"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.splitlines() == ["app,keys,requests,tokens,spendUSD", "checkout,1,40,90000,12.5"]
    refused = subprocess.run([str(script), "serve", "--help"], capture_output=True, text=True)
    assert refused.returncode == 2 and "invalid choice" in refused.stderr  # the plugin offers reports only
    missing = subprocess.run(
        [str(script), "report", "--state-dir", str(tmp_path / "nope"), "usage"],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "holds no status/ folder" in missing.stderr
    assert report.parse_period("7d") == 7
