"""`idhub saml sp add|list|remove` and `idhub saml metadata` through the CLI entry point, and the
IdP metadata's certificates following key rotation."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from idhub.saml.keys import make_certificate, pem_body
from idhub.saml.metadata_idp import render_idp_metadata
from tests.conftest import CliResult, LiveServer, serve_asgi
from tests.saml_sp import SamlSp, keypair


def sp_metadata(port: int = 9100, path: str = "/metadata") -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(keypair("idp")[0].encode(), password=None)
    cert = make_certificate(key, kid="k", cn="idp", now=1.8e9, days=30)  # type: ignore[arg-type]
    sp = SamlSp(idp_url="http://127.0.0.1:1", port=port, entity_path=path)
    sp.idp_metadata = render_idp_metadata(
        entity_id="http://127.0.0.1:1/saml/metadata",
        certificates=[cert],
        sso="http://127.0.0.1:1/saml/sso",
        slo="http://127.0.0.1:1/saml/slo",
        want_signed=False,
    )
    return sp.metadata()


def test_add_list_remove(
    run_cli: Callable[..., CliResult], cli_config: Path, tmp_path: Path
) -> None:
    assert run_cli("init", config=cli_config).code == 0
    file = tmp_path / "erp-sp.xml"
    file.write_text(sp_metadata(), encoding="utf-8")
    added = run_cli(
        "saml", "sp", "add", "erp", "--metadata", str(file), "--domain", "erp",
        "--name-id", "email", "--attribute", "uid", "--attribute", "roles", "--json",
        config=cli_config,
    )  # fmt: skip
    assert added.code == 0, added.err
    data = json.loads(added.out)
    assert data["entity_id"] == "http://127.0.0.1:9100/metadata"
    assert data["acs"] == ["http://127.0.0.1:9100/acs"]
    assert data["name_id_format"] == "email" and data["attributes"] == ["uid", "roles"]
    again = run_cli(
        "saml", "sp", "add", "erp", "--metadata", str(file), "--domain", "erp", config=cli_config
    )
    assert again.code != 0 and "exists" in again.err
    listed = json.loads(run_cli("saml", "sp", "list", "--json", config=cli_config).out)
    assert [sp["name"] for sp in listed] == ["erp"]
    metadata = run_cli("saml", "metadata", config=cli_config)
    assert metadata.code == 0 and "IDPSSODescriptor" in metadata.out
    assert run_cli("saml", "sp", "remove", "erp", config=cli_config).code == 0
    assert run_cli("saml", "sp", "remove", "erp", config=cli_config).code != 0
    bad = tmp_path / "bad.xml"
    bad.write_text("<not-metadata/>", encoding="utf-8")
    refused = run_cli(
        "saml", "sp", "add", "x", "--metadata", str(bad), "--domain", "erp", config=cli_config
    )
    assert refused.code != 0 and "EntityDescriptor" in refused.err


def test_add_from_a_metadata_url(run_cli: Callable[..., CliResult], cli_config: Path) -> None:
    assert run_cli("init", config=cli_config).code == 0
    xml = sp_metadata(9200, "/sp")

    async def metadata(request: Request) -> Response:
        return Response(xml, media_type="application/samlmetadata+xml")

    with serve_asgi(Starlette(routes=[Route("/md", metadata)])) as url:
        added = run_cli(
            "saml", "sp", "add", "oa-sp", "--metadata", url + "/md", "--domain", "oa",
            config=cli_config,
        )  # fmt: skip
    assert added.code == 0, added.err
    assert "http://127.0.0.1:9200/sp" in added.out


def test_metadata_lists_the_new_and_the_retired_key_after_rotation(server: LiveServer) -> None:
    import httpx

    services = server.services
    before = httpx.get(server.url + "/saml/metadata")
    assert before.status_code == 200
    assert before.headers["content-type"].startswith("application/samlmetadata+xml")
    old = services.saml_keys.current()
    assert pem_body(old.certificate_pem) in before.text
    services.keys.rotate(("RS256",))
    after = httpx.get(server.url + "/saml/metadata").text
    new = services.saml_keys.current()
    assert new.kid != old.kid
    assert pem_body(new.certificate_pem) in after and pem_body(old.certificate_pem) in after
    assert after.index(pem_body(new.certificate_pem)) < after.index(pem_body(old.certificate_pem))


def test_require_mfa_and_encryption_are_listed(
    run_cli: Callable[..., CliResult], cli_config: Path, tmp_path: Path
) -> None:
    assert run_cli("init", config=cli_config).code == 0
    file = tmp_path / "erp-sp.xml"
    file.write_text(sp_metadata(), encoding="utf-8")
    added = run_cli(
        "saml", "sp", "add", "erp", "--metadata", str(file), "--domain", "erp",
        "--require-mfa", "--json", config=cli_config,
    )  # fmt: skip
    assert added.code == 0, added.err
    data = json.loads(added.out)
    # The test SP's metadata marks no key use="encryption": its assertions go signed only.
    assert data["require_mfa"] is True and data["encrypted_assertions"] is False
    listed = json.loads(run_cli("saml", "sp", "list", "--json", config=cli_config).out)
    assert listed[0]["require_mfa"] is True
