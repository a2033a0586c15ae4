"""The shipped deployment files stay consistent with the code."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from idhub.config import load_settings
from tests.conftest import REPO

DEPLOY = REPO / "deploy"


def test_example_config_is_valid() -> None:
    settings = load_settings(
        DEPLOY / "idhub.toml.example",
        env={"IDHUB_SECRET_KEY": "x" * 43, "IDHUB_DATABASE_URL": "postgresql://idhub:pw@db/idhub"},
    )
    assert settings.server.issuer.startswith("https://")
    assert settings.database.url.startswith("postgresql")
    assert settings.policy.dir == Path("/etc/idhub/policies")


def test_compose_runs_two_replicas_behind_the_balancer() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    replicas = [name for name in compose["services"] if name.startswith("idhub-")]
    assert len(replicas) >= 2
    upstreams = re.findall(r"server (idhub-\d+):8000", (DEPLOY / "nginx.conf").read_text())
    assert sorted(upstreams) == sorted(replicas)
    for name in replicas:
        env = compose["services"][name]["environment"]
        # Every replica must share the secret key and the database, or tokens will not validate.
        assert "IDHUB_SECRET_KEY" in env and "IDHUB_DATABASE_URL" in env


def test_dockerfile_copies_what_the_example_config_names() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert "COPY policies /etc/idhub/policies" in dockerfile
    assert "deploy/idhub.toml.example /etc/idhub/idhub.toml" in dockerfile
