"""`[upstream.<name>]` tables of kind "oidc": every key checked, the secret never inline, and
every mistake reported with the file and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from idhub.config import ConfigError, Settings, load_settings, production_problem
from idhub.core.secret import Secret

GOOD = """\
[server]
issuer = "https://idhub.example.com"

[upstream.parent]
issuer = "https://login.parent.example"
client_id = "subsidiary"
client_secret_env = "PARENT_SECRET"
label = "Parent company"
scopes = ["openid", "email"]
match = "employee_number"
claim = "employee_id"
require_email_verified = true
allowed_algs = ["RS256", "ES256"]
userinfo = true
timeout = 5
clock_skew = 30
"""


def load(tmp_path: Path, text: str, **env: str) -> Settings:
    config = tmp_path / "idhub.toml"
    config.write_text(text, encoding="utf-8")
    return load_settings(config, env={"IDHUB_SECRET_KEY": "k" * 32, **env}, cwd=tmp_path)


def failure(tmp_path: Path, text: str, **env: str) -> ConfigError:
    with pytest.raises(ConfigError) as failed:
        load(tmp_path, text, **env)
    return failed.value


def test_a_full_table_is_read(tmp_path: Path) -> None:
    settings = load(tmp_path, GOOD, PARENT_SECRET="s3cret")
    parent = settings.upstream_oidc["parent"]
    assert parent.issuer == "https://login.parent.example" and parent.client_id == "subsidiary"
    assert parent.client_secret == Secret("s3cret") and "s3cret" not in repr(parent)
    assert parent.scopes == ("openid", "email") and parent.allowed_algs == ("RS256", "ES256")
    assert (parent.match, parent.claim) == ("employee_number", "employee_id")
    assert parent.require_email_verified and parent.userinfo
    assert (parent.timeout, parent.clock_skew, parent.label) == (5.0, 30.0, "Parent company")


def test_defaults_and_a_secret_file(tmp_path: Path) -> None:
    (tmp_path / "parent.secret").write_text("from-a-file\n", encoding="utf-8")
    settings = load(
        tmp_path,
        '[upstream.azure]\nissuer = "https://login.microsoftonline.com/t/v2.0"\n'
        'client_id = "c"\nclient_secret_file = "parent.secret"\n',
    )
    azure = settings.upstream_oidc["azure"]
    assert azure.client_secret == Secret("from-a-file") and azure.label == "azure"
    assert (azure.match, azure.claim, azure.allowed_algs) == ("email", "email", ("RS256",))
    assert not azure.require_email_verified and azure.scopes == ("openid", "email", "profile")


def test_no_upstream_and_other_kinds_left_to_their_reader(tmp_path: Path) -> None:
    assert load(tmp_path, "").upstream_oidc == {}
    other = load(tmp_path, '[upstream.dd]\nkind = "dingtalk"\nsource = "corp"\n')
    assert other.upstream_oidc == {}


BAD = [
    ('client_secret = "inline"\n', 9, "must not be written in the config file"),
    ('colour = "blue"\n', 9, "unknown setting [upstream.parent] colour (known: "),
    ('allowed_algs = ["none"]\n', 9, "none is never accepted"),
    ('allowed_algs = ["HS256"]\n', 9, "choose from RS256"),
    ('match = "phone"\n', 9, "match must be one of email, username, employee_number"),
    ('scopes = ["email"]\n', 9, "scopes must include openid"),
    ('token_auth_method = "private_key_jwt"\n', 9, "token_auth_method must be"),
    ("timeout = 0\n", 9, "timeout must be positive"),
    ('timeout = "soon"\n', 9, "must be a number"),
    ("clock_skew = -1\n", 9, "clock_skew must not be negative"),
    ('userinfo = "perhaps"\n', 9, "must be true or false"),
    ('kind = "saml"\n', 9, "kind must be one of oidc, dingtalk, wecom"),
    ('claim = " "\n', 9, "claim must name an upstream claim"),
    ('ca_file = "no-such-ca.pem"\n', 9, "no-such-ca.pem does not exist"),
]


@pytest.mark.parametrize(("extra", "line", "message"), BAD)
def test_mistakes_name_the_file_and_line(
    tmp_path: Path, extra: str, line: int, message: str
) -> None:
    text = (
        "[upstream.parent]\n"
        'issuer = "https://login.parent.example"\n'
        'client_id = "subsidiary"\n'
        'client_secret_env = "PARENT_SECRET"\n'
        "\n"
        "# more settings\n"
        "\n"
        "\n" + extra
    )
    failed = failure(tmp_path, text, PARENT_SECRET="s")
    assert message in failed.message, failed.message
    assert failed.file == str(tmp_path / "idhub.toml") and failed.line == line


def test_issuer_and_table_mistakes(tmp_path: Path) -> None:
    head = '[upstream.parent]\nclient_id = "c"\nclient_secret_env = "S"\n'
    failed = failure(tmp_path, head + 'issuer = "login.parent.example"\n', S="s")
    assert "issuer must be an https://" in failed.message and failed.line == 4
    failed = failure(tmp_path, head + 'issuer = "https://p.example/?tenant=1"\n', S="s")
    assert failed.line == 4
    failed = failure(tmp_path, head, S="s")
    assert "needs issuer" in failed.message and failed.line == 1
    failed = failure(tmp_path, '# parent\n[upstream."bad.name"]\nissuer = "https://p"\n')
    assert "may use letters, digits" in failed.message and failed.line == 2
    failed = failure(tmp_path, "upstream = 3\n")
    assert "[upstream] must be a table" in failed.message


def test_secret_mistakes(tmp_path: Path) -> None:
    head = '[upstream.parent]\nissuer = "https://p.example"\nclient_id = "c"\n'
    failed = failure(tmp_path, head)
    assert "needs client_secret_env or client_secret_file" in failed.message
    assert failed.line == 1
    failed = failure(tmp_path, head + 'client_secret_env = "NOT_SET"\n')
    assert "'NOT_SET', which is not set" in failed.message and failed.line == 4
    failed = failure(tmp_path, head + 'client_secret_file = "missing.secret"\n')
    assert "cannot read client_secret_file" in failed.message and failed.line == 4
    (tmp_path / "empty.secret").write_text("\n", encoding="utf-8")
    failed = failure(tmp_path, head + 'client_secret_file = "empty.secret"\n')
    assert "is empty" in failed.message and failed.line == 4
    both = head + 'client_secret_env = "S"\nclient_secret_file = "empty.secret"\n'
    failed = failure(tmp_path, both, S="s")
    assert "not both" in failed.message and failed.line == 5


def test_production_mode_needs_an_https_upstream(tmp_path: Path) -> None:
    env = {
        "IDHUB_ISSUER": "https://sso.example.com",
        "IDHUB_SECRET_KEY": "Zq3vX9kLm2Pw8Rt5Yb7Nc4Hd6Jf1Gs0Ae-Ui_Ko",
        "IDHUB_ENV": "production",
        "S": "s",
    }
    table = '[upstream.parent]\nissuer = "{}"\nclient_id = "c"\nclient_secret_env = "S"\n'
    config = tmp_path / "idhub.toml"
    for issuer, refused in (
        ("http://login.parent.example", True),
        ("http://127.0.0.1:9000", False),
        ("https://login.parent.example", False),
    ):
        config.write_text(table.format(issuer), encoding="utf-8")
        problem = production_problem(load_settings(config, env=env, cwd=tmp_path))
        assert (
            problem == "production mode needs an https:// issuer in [upstream.parent]"
        ) is refused
