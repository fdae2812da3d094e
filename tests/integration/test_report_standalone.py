"""`llmkeys report --state-dir`: the seven questions answered from a real standalone gateway.

`llmkeys serve` runs in-process on a free port with the mock provider; real traffic goes through it
with the openai SDK (usage numbers taken from the SDK's responses); `serve` writes the status files;
each documented report command (README "Reports") is run through the CLI and its JSON is checked
against the traffic sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import pathlib
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import openai
import pytest

from llmkeys_operator import cli, standalone

MANIFESTS = """
apiVersion: llmkeys.io/v1alpha1
kind: ProviderCredential
metadata: {name: mock}
spec:
  provider: mock
  models: [{name: gpt-5.4-mini}, {name: gpt-6-luna}]
---
apiVersion: llmkeys.io/v1alpha1
kind: LLMPolicy
metadata: {name: teams}
spec:
  keySelector: {matchLabels: {pooled: "yes"}}
  budgets:
    - {name: team-tokens, groupBy: team, tokensPerMonth: 400}
---
apiVersion: llmkeys.io/v1alpha1
kind: VirtualKey
metadata: {name: alice, labels: {pooled: "yes"}}
spec:
  owner: {user: alice@example.com, team: payments, app: checkout}
---
apiVersion: llmkeys.io/v1alpha1
kind: VirtualKey
metadata: {name: bob}
spec:
  owner: {user: bob@example.com, team: search, app: ranker}
---
apiVersion: llmkeys.io/v1alpha1
kind: VirtualKey
metadata: {name: triage}
spec:
  owner: {agent: triage-bot, team: search, app: helpdesk}
  limits: {requestsPerMinute: 2}
---
apiVersion: llmkeys.io/v1alpha1
kind: VirtualKey
metadata: {name: carol, creationTimestamp: "2026-01-05T00:00:00Z"}
spec:
  owner: {user: carol@example.com, team: payments}
---
apiVersion: llmkeys.io/v1alpha1
kind: VirtualKey
metadata: {name: dave}
spec:
  owner: {user: dave@example.com, team: search}
  expiresAt: "EXPIRES"
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _key(state: pathlib.Path, name: str) -> str:
    for line in (state / "keys" / "default" / f"{name}.env").read_text().splitlines():
        if line.startswith("LLMKEYS_API_KEY="):
            return line.split("=", 1)[1]
    raise AssertionError(f"no key for {name}")


async def report(where: list[str], *argv: str) -> list[dict[str, Any]]:
    """Run `llmkeys report <where> -o json <argv>` through the CLI; its parsed output."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = await asyncio.to_thread(cli.main, ["report", *where, "-o", "json", *argv])
    assert code == 0, out.getvalue()
    rows: list[dict[str, Any]] = json.loads(out.getvalue())
    return rows


@pytest.fixture
async def gateway(tmp_path: pathlib.Path) -> AsyncIterator[tuple[str, pathlib.Path]]:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    expires = (datetime.now(UTC) + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    (manifests / "all.yaml").write_text(MANIFESTS.replace("EXPIRES", expires))
    state = tmp_path / "state"
    port = _free_port()
    parser = argparse.ArgumentParser()
    standalone.add_arguments(parser)
    args = parser.parse_args(
        [
            "--manifests",
            str(manifests),
            "--state-dir",
            str(state),
            "--port",
            str(port),
            "--status-interval",
            "0.2",
        ]
    )
    args.redis_url = ""
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(standalone.serve(args, ready=ready, stop=stop))
    await asyncio.wait_for(ready.wait(), 30)
    try:
        yield f"http://127.0.0.1:{port}/v1", state
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0


async def _chat(url: str, key: str, model: str, prompt: str) -> int | None:
    """Total tokens of one chat completion, or None when refused with HTTP 429."""
    async with openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0) as client:
        try:
            response = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}], max_tokens=16
            )
        except openai.RateLimitError:
            return None
    assert response.usage is not None
    return response.usage.total_tokens


async def test_report_answers_the_seven_questions_from_a_state_dir(gateway: tuple[str, pathlib.Path]) -> None:
    url, state = gateway
    tokens: dict[str, int] = {}
    refused: dict[str, int] = {}
    plan = [("alice", "gpt-5.4-mini", "hello there, how are you today?")] * 3
    plan += [("bob", "gpt-6-luna", "rank these search results for me please " * 4)]
    plan += [("triage", "gpt-5.4-mini", "triage this ticket")] * 4
    for name, model, prompt in plan:
        used = await _chat(url, _key(state, name), model, prompt)
        if used is None:
            refused[name] = refused.get(name, 0) + 1
        else:
            tokens[name] = tokens.get(name, 0) + used
    assert refused == {"triage": 2}  # requestsPerMinute: 2

    # serve writes the status files every 0.2 s; wait until they show all the traffic.
    status = state / "status" / "virtualkeys" / "default"
    for _ in range(100):
        docs = {p.stem: json.loads(p.read_text()) for p in status.glob("*.json")}
        shown = {
            n: d["status"].get("usage", {}).get("month", {}).get("requests", 0)
            for n, d in docs.items()
            if "usage" in d["status"]
        }
        refusals = docs.get("triage", {}).get("status", {}).get("usage", {}).get("month", {}).get("refusals")
        if shown == {"alice": 3, "bob": 1, "triage": 2} and refusals == {"rate_limit_exceeded": 2}:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"status files never showed the traffic: {shown}")
    spend = {n: Decimal(docs[n]["status"]["usage"]["month"]["spendUSD"]) for n in ("alice", "bob", "triage")}
    assert all(value > 0 for value in spend.values())
    where = ["--state-dir", str(state)]

    # 1. Which developer consumed the most tokens?
    top_user = await report(where, "usage", "--by", "user", "--sort", "tokens", "--top", "1")
    expected_user = max(
        ("alice@example.com", tokens["alice"]), ("bob@example.com", tokens["bob"]), key=lambda x: x[1]
    )
    assert [(r["user"], r["tokens"]) for r in top_user] == [expected_user]

    # 2. Which app caused the cost spike? (today against the mean of the 7 days before)
    spikes = await report(where, "spikes", "--by", "app", "--days", "7")
    apps = {"checkout": spend["alice"], "ranker": spend["bob"], "helpdesk": spend["triage"]}
    assert spikes[0]["app"] == max(apps, key=lambda a: apps[a])
    assert {r["app"]: Decimal(r["todayUSD"]) for r in spikes if r["app"] in apps} == apps

    # 3. Which agent hit the rate limit?
    limited = await report(where, "limited", "--by", "agent", "--code", "rate_limit_exceeded")
    assert [(r["kind"], r["agent"], r["refusals"]) for r in limited] == [("key", "triage-bot", 2)]

    # 4. Which team is approaching its monthly cap? (alice's tokens against the 400-token pool)
    near = await report(where, "near-caps", "--threshold", "1")
    assert [(r["kind"], r["team"], r["used"], r["limit"]) for r in near] == [
        ("pool", "payments", tokens["alice"], 400)
    ]
    assert near[0]["percent"] == round(tokens["alice"] * 100 / 400, 1)

    # 5. Which model drives the most spend?
    models = await report(where, "usage", "--by", "model", "--sort", "spend")
    by_model = {r["model"]: Decimal(r["spendUSD"]) for r in models}
    assert by_model == {"gpt-5.4-mini": spend["alice"] + spend["triage"], "gpt-6-luna": spend["bob"]}
    assert models[0]["model"] == max(by_model, key=lambda m: by_model[m])

    # 6. Which provider is used most?
    providers = await report(where, "usage", "--by", "provider", "--sort", "requests", "--top", "1")
    assert [(r["provider"], r["requests"]) for r in providers] == [("default/mock", 6)]

    # 7. Which keys are inactive and should be revoked? (carol: created in January, never used)
    inactive = await report(where, "inactive", "--days", "30")
    assert [(r["key"], r["lastUsedAt"]) for r in inactive] == [("default/carol", "never")]

    expiring = await report(where, "expiring", "--days", "7")
    assert [r["key"] for r in expiring] == ["default/dave"] and 2.9 < expiring[0]["daysLeft"] <= 3.0

    # The same rows as CSV and as a table.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["report", "--state-dir", str(state), "-o", "csv", "usage", "--by", "team"]) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "team,keys,requests,tokens,spendUSD" and len(lines) == 3  # payments, search
