"""The local password policy: length, the shipped common-password list, no reuse of recent
passwords, and argon2id parameters from settings with rehash at sign-in."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from argon2 import extract_parameters

from idhub.adapters.password_list import common_passwords
from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.core.password_policy import PasswordPolicy
from idhub.errors import ConfigError, InvalidInput
from tests.conftest import REPO
from tests.sso_support import make_user


def test_the_shipped_list_is_plain_data_of_common_passwords() -> None:
    common = common_passwords()
    assert 5000 <= len(common) <= 20000
    for known in ("123456", "password", "qwerty123", "woaini1314", "1qaz2wsx", "iloveyou"):
        assert known in common
    text = (REPO / "src" / "idhub" / "data" / "common-passwords.txt").read_text("utf-8")
    assert all(line == line.strip() for line in text.splitlines())


def test_policy_refuses_short_common_decorated_and_username_passwords() -> None:
    policy = PasswordPolicy(min_length=10, common=common_passwords())
    for bad, why in (
        ("short-1", "at least 10 characters"),
        ("Password2024!", "common or breached"),
        ("ＰＡＳＳＷＯＲＤ１２３", "common or breached"),  # full-width, as an IME types it
        ("qwertyuiop", "common or breached"),
        ("1234567890", "common or breached"),
        ("aaaaaaaaaaaa", "one character repeated"),
        ("zhang.wei.cfo", "must not be the username"),
    ):
        with pytest.raises(InvalidInput, match=why):
            policy.require_acceptable(bad, username="Zhang.Wei.CFO")
    policy.require_acceptable("violet tram 42 lantern", username="zhang.wei.cfo")


def test_no_reuse_of_the_last_passwords(
    services: Services, run_cli: Callable[..., Any], tmp_path: Path, db_url: str
) -> None:
    from tests.sso_support import cli_config_for

    config = cli_config_for(tmp_path, db_url)
    (tmp_path / "idhub.toml").write_text(
        config.read_text(encoding="utf-8") + "\n[passwords]\nhistory = 3\n", encoding="utf-8"
    )
    config = tmp_path / "idhub.toml"

    def passwd(password: str) -> Any:
        return run_cli("user", "passwd", "lena", "--password-stdin", config=config, stdin=password)

    added = run_cli(
        "user", "add", "lena", "--password-stdin", config=config, stdin="first lantern 1"
    )
    assert added.code == 0, added.err
    assert (
        run_cli(
            "user", "add", "mo", "--password-stdin", config=config, stdin="Password123\n"
        ).err.count("common or breached")
        == 1
    )
    for password in ("second lantern 2", "third lantern 3"):
        assert passwd(password).code == 0
    for reused in ("first lantern 1", "second lantern 2", "third lantern 3"):
        refused = passwd(reused)
        assert refused.code == 2 and "differ from the last 3 passwords" in refused.err
    assert passwd("fourth lantern 4").code == 0
    # The oldest fell out of the last three.
    assert passwd("first lantern 1").code == 0
    user = services.identity.require_user("lena")
    assert len(services.identity.previous_password_hashes(user.id, limit=10)) == 3


def test_bad_password_settings_are_refused(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError, match="argon2_memory_kib"):
        make_settings("sqlite://", toml="[passwords]\nargon2_memory_kib = 1024\n")
    with pytest.raises(ConfigError, match="min_length"):
        make_settings("sqlite://", toml="[passwords]\nmin_length = 4\n")
    with pytest.raises(ConfigError, match="ip_free"):
        make_settings("sqlite://", toml="[throttle]\nip_free = 40\nip_limit = 30\n")


def test_sign_in_rehashes_with_the_configured_argon2_parameters(
    make_settings: Callable[..., Settings], make_services: Callable[..., Services], db_url: str
) -> None:
    old = make_services(make_settings(db_url))
    nina = make_user(old, "nina", "nina-password-1")
    before = extract_parameters(old.identity.password_hash(nina.id) or "")
    assert (before.time_cost, before.memory_cost) == (2, 19 * 1024)

    toml = "[passwords]\nargon2_time_cost = 3\nargon2_memory_kib = 12288\n"
    new = make_services(make_settings(db_url, toml=toml))
    new.authenticator.authenticate("nina", "nina-password-1", ctx=None)
    stored = new.identity.password_hash(nina.id) or ""
    after = extract_parameters(stored)
    assert (after.time_cost, after.memory_cost, after.parallelism) == (3, 12288, 1)
    # The next sign-in finds nothing to do, and the password still works.
    new.authenticator.authenticate("nina", "nina-password-1", ctx=None)
    assert new.identity.password_hash(nina.id) == stored
