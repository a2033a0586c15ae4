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


def test_the_balancer_is_a_trusted_proxy_and_appends_the_client_address() -> None:
    import ipaddress

    settings = load_settings(
        DEPLOY / "idhub.toml.example",
        env={"IDHUB_SECRET_KEY": "x" * 43, "IDHUB_DATABASE_URL": "postgresql://idhub:pw@db/idhub"},
    )
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    subnet = compose["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert settings.server.trusted_proxies == (subnet,)
    assert ipaddress.ip_network(subnet).is_private
    for name in (n for n in compose["services"] if n.startswith("idhub-")):
        assert compose["services"][name]["environment"]["IDHUB_TRUSTED_PROXIES"] == subnet
    nginx = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in nginx
    assert settings.server.proxy_header == "x-forwarded-for"
