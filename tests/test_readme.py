"""The README's example commands, run as a reader would after `make run`: the same shell
lines, with curl, against a live idhub seeded by `idhub init --demo`, so they cannot silently
break (`make demo` and the quick start are tests/test_examples_demo.py's)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import CliResult, LiveServer
from tests.sso_support import cli_config_for

REPO = Path(__file__).resolve().parent.parent
SERVED = "http://127.0.0.1:8000"


def readme_commands() -> list[str]:
    """The shell lines of the block after "Then, for example:", continuations joined."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("Then, for example:", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_example_commands_work(
    make_live_server: Callable[..., LiveServer],
    sqlite_db_url: str,
    run_cli: Callable[..., CliResult],
    tmp_path: Path,
) -> None:
    live = make_live_server(sqlite_db_url)
    config = cli_config_for(tmp_path, sqlite_db_url)
    # As after `make run` in the checkout: the shipped policies.
    with config.open("a", encoding="utf-8") as toml:
        toml.write(f'\n[policy]\ndir = "{REPO / "policies"}"\n')
    seeded = run_cli("init", "--demo", config=config)
    assert seeded.code == 0, seeded.err
    secrets = dict(re.findall(r"client_id=(\S+) client_secret=(\S+)", seeded.out))
    live.services.authz.refresh_directory()  # as its poller would within seconds

    commands = readme_commands()
    programs = [c.split()[0] for c in commands]
    assert programs == ["curl", "curl", ".venv/bin/idhub", ".venv/bin/idhub"]
    env = {**os.environ, "OA_SECRET": secrets["oa"], "IDHUB_CONFIG": str(config)}
    outputs = []
    for command in commands:
        line = command.replace(SERVED, live.url)
        line = line.replace(".venv/bin/idhub", f"{sys.executable} -m idhub")
        done = subprocess.run(
            ["bash", "-c", line], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"{command}: {done.stderr or done.stdout}"
        outputs.append(done.stdout)

    discovery, token, explain, verify = outputs
    assert json.loads(discovery)["token_endpoint"] == live.url + "/token"
    issued = json.loads(token)
    assert issued["token_type"].lower() == "bearer" and issued["access_token"].count(".") == 2
    assert "ALLOW" in explain.upper() and "bob" in explain
    assert "live chain OK" in verify
