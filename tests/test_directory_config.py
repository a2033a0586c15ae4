"""`[directory.ldap.<name>]` settings: presets, passwords from env/file, errors with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from idhub.config import describe, load_settings
from idhub.errors import ConfigError

BASIC = """
[directory.ldap.corp]
url = "ldaps://ldap.example.com:636"
bind_dn = "cn=idhub,ou=services,dc=example,dc=com"
bind_password_env = "CORP_LDAP_PASSWORD"
user_base = "ou=people,dc=example,dc=com"
"""


def _load(tmp_path: Path, text: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    path = tmp_path / "idhub.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(path, env=env or {}, cwd=tmp_path)


def test_openldap_source_with_password_from_environment(tmp_path: Path) -> None:
    settings = _load(tmp_path, BASIC, {"CORP_LDAP_PASSWORD": "s3cret-bind"})
    corp = settings.ldap_sources["corp"]
    assert corp.source == "ldap:corp"
    assert corp.bind_password is not None and corp.bind_password.reveal() == "s3cret-bind"
    assert corp.attributes.username == "uid" and corp.attributes.external_id == "entryUUID"
    assert corp.change_mark == "timestamp" and corp.user_filter == "(objectClass=inetOrgPerson)"
    # Never printed: not in the repr, not in `idhub config check`.
    assert "s3cret-bind" not in repr(settings)
    assert "s3cret-bind" not in str(describe(settings))


def test_active_directory_preset_and_overrides_and_password_file(tmp_path: Path) -> None:
    (tmp_path / "bind.pw").write_text("from-a-file\n", encoding="utf-8")
    settings = _load(
        tmp_path,
        """
[directory.ldap.ad]
preset = "active_directory"
url = "ldap://dc1.corp.example.com"
start_tls = true
bind_dn = "CN=idhub,OU=Service,DC=corp,DC=example,DC=com"
bind_password_file = "bind.pw"
user_base = "DC=corp,DC=example,DC=com"
max_disable_ratio = 0.05

[directory.ldap.ad.attributes]
employee_id = "employeeNumber"
""",
    )
    ad = settings.ldap_sources["ad"]
    assert ad.bind_password is not None and ad.bind_password.reveal() == "from-a-file"
    assert ad.attributes.username == "sAMAccountName"
    assert ad.attributes.external_id == "objectGUID"
    assert ad.attributes.disabled == "userAccountControl"
    assert ad.attributes.employee_id == "employeeNumber"
    assert ad.change_mark == "usn" and ad.max_disable_ratio == 0.05 and ad.start_tls


@pytest.mark.parametrize(
    ("extra", "env", "message", "line"),
    [
        ('bind_password = "plain"', {}, "must not be written in the config file", 7),
        ("", {}, "CORP_LDAP_PASSWORD, which is not set", 5),
        ('page_size = "lots"', {"CORP_LDAP_PASSWORD": "x"}, "page_size must be a whole number", 7),
        ('preset = "novell"', {"CORP_LDAP_PASSWORD": "x"}, "preset must be one of", 7),
        ('colour = "blue"', {"CORP_LDAP_PASSWORD": "x"}, "unknown setting", 7),
        ("max_disable_ratio = 3", {"CORP_LDAP_PASSWORD": "x"}, "between 0 and 1", 7),
        ('membership = "owner"', {"CORP_LDAP_PASSWORD": "x"}, "membership must be one of", 7),
        ('ca_file = "nope.pem"', {"CORP_LDAP_PASSWORD": "x"}, "does not exist", 7),
    ],
)
def test_bad_source_settings_name_file_and_line(
    tmp_path: Path, extra: str, env: dict[str, str], message: str, line: int
) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, BASIC + extra + "\n", env)
    assert message in str(info.value)
    assert info.value.location == f"{tmp_path / 'idhub.toml'}:{line}"


def test_bad_url_and_mapping(tmp_path: Path) -> None:
    env = {"CORP_LDAP_PASSWORD": "x"}
    with pytest.raises(ConfigError, match="url must look like"):
        _load(tmp_path, BASIC.replace("ldaps://ldap.example.com:636", "http://x"), env)
    with pytest.raises(ConfigError, match="unknown attribute mapping 'shoe_size'") as info:
        _load(tmp_path, BASIC + '\n[directory.ldap.corp.attributes]\nshoe_size = "x"\n', env)
    assert str(info.value.line) == "9"
    with pytest.raises(ConfigError, match="needs user_base"):
        _load(tmp_path, '[directory.ldap.x]\nurl = "ldap://h"\n')
