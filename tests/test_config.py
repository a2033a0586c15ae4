from __future__ import annotations

from pathlib import Path

import pytest

from idhub.config import Secret, describe, load_settings, redact_url
from idhub.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "idhub.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file(tmp_path: Path) -> None:
    settings = load_settings(None, env={}, cwd=tmp_path)
    assert settings.server.issuer == "http://127.0.0.1:8000"
    assert settings.database.url == f"sqlite:///{tmp_path.resolve() / 'var' / 'idhub.db'}"
    assert settings.secret_key is None
    with pytest.raises(ConfigError, match="no secret key"):
        settings.require_secret_key()


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nissuer = "https://sso.example.com"\nport = 9000\n')
    settings = load_settings(
        path, env={"IDHUB_ISSUER": "https://id.corp.example", "IDHUB_SECRET_KEY": "k" * 40}
    )
    assert settings.server.issuer == "https://id.corp.example"
    assert settings.server.port == 9000
    assert settings.secret_key == Secret("k" * 40)


def test_bad_value_points_at_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[server]\nissuer = "https://x"\n\n[tokens]\naccess_token_ttl = "soon"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert info.value.location == f"{path}:5"
    assert "whole number" in str(info.value)


def test_unknown_key_and_section_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nisuer = 'typo'\n")
    with pytest.raises(ConfigError, match=r"idhub.toml:2: unknown setting \[server\] isuer"):
        load_settings(path, env={})
    path = write(tmp_path, "[servers]\n")
    with pytest.raises(ConfigError, match="unknown section"):
        load_settings(path, env={})


def test_toml_syntax_error_has_a_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nissuer = \n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert info.value.line == 2


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="IDHUB_PORT"):
        load_settings(None, env={"IDHUB_PORT": "eighty"}, cwd=tmp_path)


def test_secret_key_is_refused_in_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'secret_key = "abc"\n')
    with pytest.raises(ConfigError, match="must not be written"):
        load_settings(path, env={})


def test_secrets_never_print(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        env={
            "IDHUB_SECRET_KEY": "topsecretvalue",
            "IDHUB_DATABASE_URL": "postgresql://idhub:hunter2@db/idhub",
        },
        cwd=tmp_path,
    )
    text = repr(settings) + str(describe(settings))
    assert "topsecretvalue" not in text
    assert "hunter2" not in text
    assert redact_url("postgresql://u:p@h/d") == "postgresql://u:****@h/d"


def test_config_check_command(run_cli, cli_config: Path) -> None:
    result = run_cli("config", "check", config=cli_config)
    assert result.code == 0, result.err
    assert "secret_key = **********" in result.out
    bad = cli_config.parent / "bad.toml"
    bad.write_text("[database]\npool_size = 'many'\n", encoding="utf-8")
    result = run_cli("config", "check", config=bad)
    assert result.code == 2
    assert f"{bad}:2" in result.err
    assert "Traceback" not in result.err
