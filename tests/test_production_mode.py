"""Production mode (`[server] mode = "production"` or `IDHUB_ENV=production`) refuses to
serve with settings fit only for a developer's machine, and says why in one line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from idhub.config import load_settings, production_problem
from tests.conftest import CliResult

STRONG_KEY = "Zq3vX9kLm2Pw8Rt5Yb7Nc4Hd6Jf1Gs0Ae-Ui_Ko"


def _problem(tmp_path: Path, toml: str = "", **env: str) -> str | None:
    config = tmp_path / "idhub.toml"
    config.write_text(toml, encoding="utf-8")
    variables = {"IDHUB_VAR_DIR": str(tmp_path / "var"), **env}
    return production_problem(load_settings(config, env=variables, cwd=tmp_path))


def test_production_mode_refusals(tmp_path: Path) -> None:
    https = {"IDHUB_ISSUER": "https://sso.example.com", "IDHUB_SECRET_KEY": STRONG_KEY}
    assert _problem(tmp_path, **https, IDHUB_ENV="production") is None
    assert _problem(tmp_path, '[server]\nmode = "production"\n', **https) is None
    # Loopback may stay plain http (a local evaluation in production mode).
    for loopback in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000"):
        env = {**https, "IDHUB_ISSUER": loopback, "IDHUB_ENV": "production"}
        assert _problem(tmp_path, **env) is None, loopback
    cases = {
        "https://": {"IDHUB_ISSUER": "http://sso.example.com"},
        "secret key": {"IDHUB_SECRET_KEY": ""},
        "weak secret key": {"IDHUB_SECRET_KEY": "short"},
        "weak": {"IDHUB_SECRET_KEY": "changeme-changeme-changeme-changeme-1234"},
        "debug": {"IDHUB_DEBUG": "true"},
    }
    for words, change in cases.items():
        problem = _problem(tmp_path, **{**https, "IDHUB_ENV": "production", **change})
        assert problem is not None and words in problem, (words, problem)
        assert "\n" not in problem
    # Development mode starts with all of these.
    assert _problem(tmp_path, IDHUB_ISSUER="http://sso.example.com", IDHUB_DEBUG="1") is None


def test_an_unknown_mode_is_a_config_error(tmp_path: Path) -> None:
    from idhub.errors import ConfigError

    config = tmp_path / "idhub.toml"
    config.write_text('[server]\nmode = "prod"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="development, production"):
        load_settings(config, env={}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"IDHUB_ISSUER": "http://sso.example.com"}, "https://"),
        ({"IDHUB_SECRET_KEY": "password123"}, "weak secret key"),
        ({"IDHUB_DEBUG": "on"}, "debug"),
    ],
)
def test_serve_refuses_in_one_line(
    run_cli: Callable[..., CliResult],
    cli_config: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    words: str,
) -> None:
    monkeypatch.setenv("IDHUB_ENV", "production")
    monkeypatch.setenv("IDHUB_ISSUER", "https://sso.example.com")
    monkeypatch.setenv("IDHUB_SECRET_KEY", STRONG_KEY)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = run_cli("serve", "--port", "1", config=cli_config)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.err
    assert "Traceback" not in result.err and result.out == ""


def test_the_example_deployment_config_is_fit_for_production() -> None:
    from tests.conftest import REPO

    settings = load_settings(
        REPO / "deploy" / "idhub.toml.example",
        env={"IDHUB_SECRET_KEY": STRONG_KEY, "IDHUB_DATABASE_URL": "postgresql://db/idhub"},
    )
    assert settings.production and production_problem(settings) is None
    assert settings.limits.request_timeout == 10
