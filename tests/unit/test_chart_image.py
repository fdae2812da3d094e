"""The image the chart runs: the Dockerfile's promises (non-root, `llmkeys` entry point, wheel install)
and the packaging they rely on (every data file of the packages ships in the wheel).

No Docker engine is needed: the Dockerfile is read, and the wheel's contents are derived from
pyproject.toml's package-data rules (an editable install would hide a missing rule).
"""

from __future__ import annotations

import fnmatch
import pathlib
import re
import tomllib

REPO = pathlib.Path(__file__).resolve().parents[2]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def test_runtime_stage_is_slim_python_non_root_with_the_llmkeys_entry_point() -> None:
    instructions = dockerfile_instructions()
    stages = [args for instr, args in instructions if instr == "FROM"]
    assert len(stages) == 2, "multi-stage: build wheels, then a clean runtime"
    assert all(stage.startswith("python:3.11-slim") for stage in stages)
    runtime = instructions[[i for i, (instr, _) in enumerate(instructions) if instr == "FROM"][-1] :]
    users = [args for instr, args in runtime if instr == "USER"]
    # Numeric and non-zero: the chart's runAsNonRoot can only be verified for a numeric user.
    assert users and re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", users[-1])
    assert users[-1].split(":")[0] == "65532"  # the chart's podSecurityContext.runAsUser
    assert ("ENTRYPOINT", '["llmkeys"]') in runtime
    assert ("EXPOSE", "8080") in runtime
    # Installed from the built wheel, offline, not from the source tree.
    assert any("--no-index" in args and "/wheels" in args for instr, args in runtime if instr == "RUN")
    assert not any(instr in {"COPY", "ADD"} and "operator" in args for instr, args in runtime)


def test_dockerignore_admits_exactly_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    admitted = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = set()
    for instr, args in dockerfile_instructions():
        if instr == "COPY" and not args.startswith("--from"):
            copied.update(part.rstrip("/") for part in args.split()[:-1])
    assert copied <= admitted
    for path in copied:
        assert (REPO / path).exists(), f"the Dockerfile copies {path}, which does not exist"
    # pyproject's `readme` must be in the build context or the wheel build fails.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["readme"] in copied


def test_every_package_data_file_ships_in_the_wheel() -> None:
    """Files the code loads at run time (encodings, Lua scripts, price tables) need a package-data rule."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_data: dict[str, list[str]] = pyproject["tool"]["setuptools"]["package-data"]
    assert pyproject["project"]["scripts"]["llmkeys"] == "llmkeys_operator.cli:main"
    missing = []
    for root, package in ((REPO / "proxy", "llmkeys_proxy"), (REPO / "operator", "llmkeys_operator")):
        package_dir = root / package
        rules = package_data.get(package, [])
        for path in package_dir.rglob("*"):
            relative = path.relative_to(package_dir).as_posix()
            if path.is_dir() or path.suffix in {".py", ".pyc"} or "__pycache__" in relative:
                continue
            if not any(fnmatch.fnmatch(relative, rule) for rule in rules):
                missing.append(f"{package}/{relative}")
    assert missing == [], "add package-data rules in pyproject.toml, or the image lacks these files"
