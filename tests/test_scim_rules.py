"""The SCIM rules without HTTP: filter parsing and evaluation, PATCH application, preconditions
and the per-source token check."""

from __future__ import annotations

from typing import Any

import pytest

from idhub.core.scim.errors import ScimError
from idhub.core.scim.filter import ENTERPRISE, matches, parse_filter, parse_patch_path
from idhub.core.scim.patch import apply_patch
from idhub.core.scim.service import (
    ScimService,
    check_if_match,
    check_not_modified,
    token_digest,
)

DOC: dict[str, Any] = {
    "id": "u1",
    "userName": "Zhang.Wei",
    "active": True,
    "name": {"givenName": "Wei", "familyName": "Zhang"},
    "emails": [
        {"value": "wei@corp.cn", "type": "work", "primary": True},
        {"value": "wei@home.cn", "type": "home"},
    ],
    "meta": {"created": "2026-03-01T08:00:00.000+00:00"},
    ENTERPRISE: {"employeeNumber": "1001", "department": "财务部"},
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('userName eq "zhang.wei"', True),
        ('USERNAME Eq "ZHANG.WEI"', True),
        ('userName ne "zhang.wei"', False),
        ('userName co "g.w"', True),
        ('userName sw "zhang"', True),
        ('userName ew "wei"', True),
        ("title pr", False),
        ("name.givenName pr", True),
        ("active eq true", True),
        ("active eq false", False),
        ('emails co "home.cn"', True),
        ('emails.type eq "home"', True),
        ('emails[type eq "work" and value ew "corp.cn"]', True),
        ('emails[type eq "work" and value ew "home.cn"]', False),
        ('meta.created gt "2026-01-01T00:00:00Z"', True),
        ('meta.created le "2025-12-31T00:00:00Z"', False),
        (f'{ENTERPRISE}:department eq "财务部"', True),
        ('urn:ietf:params:scim:schemas:core:2.0:User:userName eq "zhang.wei"', True),
        ('not (userName eq "x") and (active eq true or title pr)', True),
        ('userName eq "x" or userName eq "y" or name.familyName eq "zhang"', True),
        ('userName eq "x" and userName eq "zhang.wei" or active eq false', False),
    ],
)
def test_filters(text: str, expected: bool) -> None:
    assert matches(parse_filter(text), DOC) is expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "userName",
        'userName eq "a" and',
        'userName xx "a"',
        "userName eq bare",
        '(userName eq "a"',
        'emails[type eq "work"',
        'urn:unknown:schema:attr eq "a"',
        'user$name eq "a"',
        "x" * 3000,
    ],
)
def test_bad_filters_are_invalid_filter_errors(text: str) -> None:
    with pytest.raises(ScimError) as caught:
        parse_filter(text)
    assert caught.value.status == 400
    assert caught.value.scim_type in ("invalidFilter", "invalidPath")


def _patch(*ops: dict[str, Any]) -> dict[str, Any]:
    return apply_patch(DOC, list(ops))


def test_patch_paths_and_values() -> None:
    out = _patch({"op": "replace", "path": 'emails[type eq "home"].value', "value": "w@h.cn"})
    assert out["emails"][1] == {"value": "w@h.cn", "type": "home"}
    assert DOC["emails"][1]["value"] == "wei@home.cn"  # the input is not changed
    out = _patch({"op": "add", "path": "emails", "value": [{"value": "x@y.cn", "type": "other"}]})
    assert [e["value"] for e in out["emails"]][-1] == "x@y.cn"
    out = _patch({"op": "remove", "path": 'emails[type eq "work"]'})
    assert [e["type"] for e in out["emails"]] == ["home"]
    out = _patch({"op": "remove", "path": 'emails[type eq "work"].primary'})
    assert "primary" not in out["emails"][0]
    out = _patch({"op": "add", "path": "name", "value": {"middleName": "Q"}})
    assert out["name"] == {"givenName": "Wei", "familyName": "Zhang", "middleName": "Q"}
    out = _patch({"op": "ADD", "path": f"{ENTERPRISE}:costCenter", "value": "4130"})
    assert out[ENTERPRISE]["costCenter"] == "4130"
    out = _patch({"op": "remove", "path": "name.givenName"})
    assert out["name"] == {"familyName": "Zhang"}
    # No path: a partial resource whose keys may be paths; id and schemas echoed are ignored.
    out = _patch(
        {
            "op": "replace",
            "value": {"id": "other", "displayName": "W", f"{ENTERPRISE}:department": "HR"},
        }
    )
    assert (out["id"], out["displayName"], out[ENTERPRISE]["department"]) == ("u1", "W", "HR")
    out = _patch({"op": "replace", "path": ENTERPRISE, "value": {"employeeNumber": "2"}})
    assert out[ENTERPRISE] == {"employeeNumber": "2", "department": "财务部"}


@pytest.mark.parametrize(
    ("ops", "scim_type"),
    [
        ([], "invalidSyntax"),
        ("nope", "invalidSyntax"),
        ([{"op": "move", "path": "userName", "value": "x"}], "invalidSyntax"),
        ([{"op": "remove"}], "noTarget"),
        ([{"op": "replace", "value": "not an object"}], "invalidValue"),
        ([{"op": "replace", "path": "userName"}], "invalidValue"),
        ([{"op": "remove", "path": "id"}], "mutability"),
        ([{"op": "add", "path": 'emails[type co "w"].value', "value": "x"}], None),
        ([{"op": "add", "path": "emails[type eq", "value": "x"}], "invalidPath"),
        ([{"op": "add", "path": 7, "value": "x"}], "invalidPath"),
    ],
)
def test_bad_patches(ops: Any, scim_type: str | None) -> None:
    if scim_type is None:  # matched an existing value: not an error
        apply_patch(DOC, ops)
        return
    with pytest.raises(ScimError) as caught:
        apply_patch(DOC, ops)
    assert caught.value.scim_type == scim_type


def test_patch_paths_parse() -> None:
    path = parse_patch_path('members[value eq "2819c223"].display')
    assert path.attr.names == ("members",) and path.sub == "display"
    assert path.value_filter is not None


def test_preconditions() -> None:
    tag = 'W/"abc"'
    check_if_match(None, tag)
    check_if_match("*", tag)
    check_if_match(f'W/"x", {tag}', tag)
    check_if_match('"abc"', tag)
    with pytest.raises(ScimError) as caught:
        check_if_match('W/"x"', tag)
    assert caught.value.status == 412
    assert check_not_modified(tag, tag) and not check_not_modified('W/"x"', tag)
    assert not check_not_modified(None, tag)


def test_tokens_name_their_source_and_nothing_else() -> None:
    service = ScimService(
        store=None,  # type: ignore[arg-type]
        uow=None,  # type: ignore[arg-type]
        tokens={"hr": token_digest("t-hr"), "crm": token_digest("t-crm")},
        new_id=str,
    )
    assert service.authenticate("t-hr") == "hr" and service.authenticate("t-crm") == "crm"
    for wrong in (None, "", "t-h", "T-HR", token_digest("t-hr")):
        with pytest.raises(ScimError) as caught:
            service.authenticate(wrong)
        assert caught.value.status == 401


def test_cli_token_lines_configure_a_source(
    run_cli: Any, cli_config: Any, make_settings: Any, sqlite_db_url: str, known_secrets: Any
) -> None:
    result = run_cli("scim", "token", "hr", config=cli_config)
    assert result.code == 0, result.err
    token = result.out.splitlines()[1].removeprefix("#").strip()
    known_secrets.add(token)
    toml = "\n".join(line for line in result.out.splitlines() if not line.startswith("#"))
    settings = make_settings(sqlite_db_url, toml=toml)
    assert settings.scim_sources["hr"].token_sha256 == token_digest(token)
    assert token not in toml
    bad = run_cli("scim", "token", "no spaces", config=cli_config)
    assert bad.code == 2 and len(bad.err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[directory.scim.hr]\ntoken_sha256 = "abc"\n', "64 lower-case hex"),
        ('[directory.scim.hr]\ntoken = "x"\n', "unknown key 'token'"),
        ('[directory.scim."h r"]\ntoken_sha256 = "' + "0" * 64 + '"\n', "letters, digits"),
        ("[directory]\nscim = 3\n", "table of named sources"),
    ],
)
def test_bad_source_config_names_file_and_line(
    make_settings: Any, sqlite_db_url: str, toml: str, message: str
) -> None:
    from idhub.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        make_settings(sqlite_db_url, toml=toml)
    assert message in str(caught.value) and "idhub.toml" in str(caught.value)
