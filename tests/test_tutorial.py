"""docs/tutorial.md, run as written: every `$ idhub ...` line, in order, against the suite's
slapd holding the generated company (what `python -m tests.slapd` serves), with the TOML and
the policy test file the tutorial shows. A command that fails, or an explanation that no longer
says ALLOW / DENY where the tutorial does, fails here."""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.slapd import SERVICE_PASSWORD, Slapd

TUTORIAL = REPO / "docs" / "tutorial.md"
pytestmark = [pytest.mark.slapd]


def _blocks(text: str, language: str) -> list[str]:
    """The fenced code blocks of `language` ("" for a bare fence), in order."""
    found: list[str] = []
    fence: str | None = None  # the open block's language
    lines: list[str] = []
    for line in text.splitlines(keepends=True):
        if not line.startswith("```"):
            lines.append(line)
        elif fence is None:
            fence, lines = line[3:].strip(), []
        else:
            if fence == language:
                found.append("".join(lines))
            fence = None
    return found


def _commands(text: str) -> list[list[str]]:
    return [
        shlex.split(line[len("$ idhub ") :])
        for block in _blocks(text, "sh")
        for line in block.splitlines()
        if line.startswith("$ idhub ")
    ]


def test_every_tutorial_command_runs_as_shown(
    slapd_company: Slapd, cli_config: Path, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    text = TUTORIAL.read_text(encoding="utf-8")
    # The directory source exactly as shown, pointed at the running slapd.
    (source,) = [b for b in _blocks(text, "toml") if "[directory.ldap.corp]" in b]
    password_file = tmp_path / "var" / "corp-ldap.pw"
    password_file.write_text(SERVICE_PASSWORD + "\n", encoding="utf-8")
    source = re.sub(r'url = "[^"]+"', f'url = "{slapd_company.url}"', source)
    source = source.replace('"var/corp-ldap.pw"', f'"{password_file}"')
    # The policy as shipped plus the test file the tutorial adds.
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    (cases,) = [b for b in _blocks(text, "yaml") if "manager_scope_test.yaml" in b]
    (policies / "tests" / "manager_scope_test.yaml").write_text(cases, encoding="utf-8")
    sod = policies / "sod.yaml"
    (exception,) = [b for b in _blocks(text, "yaml") if "policies/sod.yaml" in b]
    rules = sod.read_text(encoding="utf-8")
    assert "\nexceptions:\n" in rules
    sod.write_text(rules.replace("\nexceptions:\n", "\nexceptions:\n" + exception, 1))
    config = cli_config.read_text(encoding="utf-8").replace(
        f'dir = "{REPO / "policies"}"', f'dir = "{policies}"'
    )
    cli_config.write_text(config + "\n" + source, encoding="utf-8")

    commands = _commands(text)
    assert ["policy", "sod"] in [c[:2] for c in commands]
    assert len(commands) >= 14
    outputs: dict[str, str] = {}
    for argv in commands:
        result = run_cli(*argv, config=cli_config)
        assert result.code == 0, f"idhub {shlex.join(argv)}: {result.err or result.out}"
        outputs.setdefault(" ".join(argv[:2]), "")
        outputs[" ".join(argv[:2])] += result.out

    assert "connected to" in outputs["directory test"]
    assert "dry run, nothing changed" in outputs["sync ldap"]
    assert re.search(r"\b0 failed\b", outputs["policy test"])
    first, second = outputs["policy explain"].split("decision:")[1:]
    assert first.startswith(" ALLOW") and "manager of /总部/销售部" in first
    assert second.startswith(" DENY")
    assert "chain OK" in outputs["audit verify"]
    if sod.exists():
        assert "u000011: approve-and-pay [accepted]" in outputs["policy sod"]
    # The explanation the tutorial prints is the one idhub gives (but for the policy version).
    (shown,) = [b for b in _blocks(text, "") if b.startswith("decision: ALLOW")]
    version = re.compile(r"policy [0-9a-f.]+")
    assert version.sub("", shown).split() == version.sub("", "decision:" + first).split()
