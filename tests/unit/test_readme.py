"""README.md tells the truth: its error-code table equals the proxy's code table, and its two
commands are the Makefile targets CI runs."""

from __future__ import annotations

import dataclasses
import pathlib
import re

from llmkeys_operator import settings as operator_settings
from llmkeys_operator.portal import settings as portal_settings
from llmkeys_proxy import errors
from llmkeys_proxy import settings as proxy_settings

REPO = pathlib.Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")


def test_error_code_table_matches_the_proxy() -> None:
    section = README.split("<!-- error-codes:", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", section, flags=re.MULTILINE)
    documented = {code: int(status) for code, status in rows}
    actual = {code: row.status for code, row in errors.CODES.items()}
    assert documented == actual


def test_the_two_commands_exist_and_ci_runs_the_test_command() -> None:
    commands = re.findall(r"^make (\w+)\s+#", README, flags=re.MULTILINE)
    assert commands == ["demo", "test"]
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    for target in commands:
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE), target
    assert "make test" in (REPO / ".ci" / "run").read_text(encoding="utf-8")


def test_every_setting_is_documented() -> None:
    for cls in (
        proxy_settings.ProxySettings,
        operator_settings.OperatorSettings,
        portal_settings.PortalSettings,
    ):
        missing = [
            f"LLMKEYS_{field.name.upper()}"
            for field in dataclasses.fields(cls)
            if f"LLMKEYS_{field.name.upper()}" not in README
        ]
        assert missing == [], f"{cls.__name__}: add {missing} to README.md's settings table"


def test_every_documented_report_command_parses() -> None:
    """Each question of README "Reports" names a command the `llmkeys report` parser accepts."""
    import argparse
    import shlex

    from llmkeys_operator import report

    section = README.split("### Reports", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^\| [^|]+\? \| `(llmkeys report [^`]+)` \|$", section, flags=re.MULTILINE)
    assert len(commands) == 7
    parser = argparse.ArgumentParser(prog="llmkeys report", exit_on_error=False)
    report.add_arguments(parser)
    for command in commands:
        args = parser.parse_args(shlex.split(command)[2:])
        assert args.report in ("usage", "spikes", "limited", "near-caps", "inactive"), command


def test_every_image_the_readme_shows_exists() -> None:
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", README)
    assert images, "the portal section shows screenshots"
    assert [image for image in images if not (REPO / image).is_file()] == []
