"""`idhub cas service add|list|remove` against a real SQLite database."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def test_add_list_remove(run_cli: Callable[..., Any], cli_config: Path) -> None:
    assert run_cli("migrate", config=cli_config).code == 0
    added = run_cli(
        "cas", "service", "add", "oa", "--url", "https://oa.example.com/", "--domain", "oa",
        "--display-name", "泛微 OA", "--first-party", "--attribute", "username",
        "--attribute", "email", "--json", config=cli_config,
    )  # fmt: skip
    assert added.code == 0, added.err
    assert json.loads(added.out)["attributes"] == ["username", "email"]
    listed = run_cli("cas", "service", "list", "--json", config=cli_config)
    [service] = json.loads(listed.out)
    assert service["name"] == "oa" and service["urls"] == ["https://oa.example.com/"]
    assert service["first_party"] is True and service["single_logout"] is True
    table = run_cli("cas", "service", "list", config=cli_config)
    assert "https://oa.example.com/" in table.out
    again = run_cli(
        "cas", "service", "add", "oa", "--url", "https://oa.example.com/", config=cli_config
    )
    assert again.code != 0 and "exists" in again.err
    assert run_cli("cas", "service", "remove", "oa", config=cli_config).code == 0
    assert json.loads(run_cli("cas", "service", "list", "--json", config=cli_config).out) == []
    missing = run_cli("cas", "service", "remove", "oa", config=cli_config)
    assert missing.code != 0


def test_bad_patterns_are_refused(run_cli: Callable[..., Any], cli_config: Path) -> None:
    assert run_cli("migrate", config=cli_config).code == 0
    for url in ("oa.example.com", "https://user@oa.example.com/", "ftp://oa.example.com/"):
        result = run_cli("cas", "service", "add", "oa", "--url", url, config=cli_config)
        assert result.code != 0 and "--url" in result.err, (url, result.err)


def test_require_mfa_is_registered_and_listed(
    run_cli: Callable[..., Any], cli_config: Path
) -> None:
    assert run_cli("migrate", config=cli_config).code == 0
    for name, extra in (("oa", ["--require-mfa"]), ("plain", [])):
        added = run_cli(
            "cas", "service", "add", name, "--url", f"https://{name}.example.com/", *extra,
            config=cli_config,
        )  # fmt: skip
        assert added.code == 0, added.err
    listed = json.loads(run_cli("cas", "service", "list", "--json", config=cli_config).out)
    assert {s["name"]: s["require_mfa"] for s in listed} == {"oa": True, "plain": False}
