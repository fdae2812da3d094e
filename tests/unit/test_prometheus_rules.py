"""The chart's alert rules are valid Prometheus rules and each alert has a unit test that fires it
(`promtool check rules` and `promtool test rules`, Debian's prometheus package via `make setup`)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
RULES = REPO / "charts" / "llmkeys" / "files" / "prometheus" / "llmkeys-rules.yaml"
RULE_TESTS = REPO / "tests" / "prometheus" / "llmkeys-rules.test.yaml"


def _promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: run `make setup` (scripts/ensure-prometheus.sh)"
    return found


def test_promtool_checks_the_rules() -> None:
    done = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_pass_and_fire_every_alert() -> None:
    alerts = {
        r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r
    }
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {c["alertname"] for t in cases for c in t.get("alert_rule_test", []) if c.get("exp_alerts")}
    assert fired == alerts  # every alert has a case where it fires (and no case names a ghost)
    done = subprocess.run(
        [_promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, cwd=RULE_TESTS.parent
    )
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr
