"""`idhub saml sp add|list|remove` (register SAML service providers from their metadata) and
`idhub saml metadata` (print idhub's own IdP metadata)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import httpx

from idhub.cli._context import CliContext
from idhub.cli._output import print_json, print_table
from idhub.core.audit import Actor
from idhub.errors import InvalidInput
from idhub.saml.attributes import ATTRIBUTE_URIS
from idhub.saml.registry import NAME_ID_FORMATS, ServiceProvider

FETCH_TIMEOUT = 10.0


def register(sub: Any) -> None:
    saml = sub.add_parser("saml", help="the SAML 2.0 identity provider")
    saml_sub = saml.add_subparsers(dest="saml_command", metavar="ACTION", required=True)
    sp = saml_sub.add_parser("sp", help="registered service providers")
    sp_sub = sp.add_subparsers(dest="sp_command", metavar="ACTION", required=True)

    p = sp_sub.add_parser("add", help="register an SP from its metadata")
    p.add_argument("name", help="the SP's id in idhub (sessions, consent, audit)")
    p.add_argument("--metadata", required=True, help="the SP's metadata: a file or an URL")
    p.add_argument("--domain", required=True, help="the policy domain its roles come from")
    p.add_argument("--name-id", choices=sorted(NAME_ID_FORMATS), default=None)
    p.add_argument(
        "--attribute",
        action="append",
        default=[],
        dest="attributes",
        help=f"release only these (repeatable): {', '.join(ATTRIBUTE_URIS)}",
    )
    p.add_argument("--first-party", action="store_true", help="skip the consent page")
    p.add_argument("--legacy-sha1", action="store_true", help="accept and send RSA-SHA1")
    p.add_argument("--require-signed-requests", action="store_true")
    p.add_argument(
        "--require-mfa", action="store_true",
        help="everyone signing in to it presents a second factor",
    )  # fmt: skip
    p.add_argument("--replace", action="store_true", help="update an SP registered already")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_add)

    p = sp_sub.add_parser("list", help="list SPs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sp_sub.add_parser("remove", help="delete an SP")
    p.add_argument("name")
    p.set_defaults(func=cmd_remove)

    p = saml_sub.add_parser("metadata", help="print idhub's IdP metadata")
    p.set_defaults(func=cmd_metadata)


def read_metadata(source: str) -> str:
    if source.startswith(("https://", "http://")):
        try:
            response = httpx.get(source, timeout=FETCH_TIMEOUT, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise InvalidInput(f"cannot fetch {source}: {exc}") from None
        if response.status_code != 200:
            raise InvalidInput(f"cannot fetch {source}: HTTP {response.status_code}")
        return response.text
    try:
        return Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read {source}: {exc.strerror}") from None


def describe(sp: ServiceProvider) -> dict[str, Any]:
    return {
        "name": sp.name,
        "entity_id": sp.entity_id,
        "domain": sp.domain,
        "name_id_format": sp.name_id_format,
        "acs": [e.location for e in sp.metadata.acs],
        "slo": [e.location for e in sp.metadata.slo],
        "attributes": list(sp.attributes) or "all",
        "first_party": sp.first_party,
        "legacy_sha1": sp.legacy_sha1,
        "require_signed_requests": sp.require_signed_requests,
        "require_mfa": sp.require_mfa,
        "encrypted_assertions": sp.encrypter is not None,
    }


def cmd_add(args: argparse.Namespace, ctx: CliContext) -> int:
    sp = ctx.services.saml_sps.add(
        args.name,
        metadata_xml=read_metadata(args.metadata),
        domain=args.domain,
        name_id_format=args.name_id,
        attributes=tuple(args.attributes),
        first_party=args.first_party,
        legacy_sha1=args.legacy_sha1,
        require_signed_requests=args.require_signed_requests,
        require_mfa=args.require_mfa,
        replace=args.replace,
        actor=Actor("admin"),
    )
    if args.json:
        print_json(describe(sp))
        return 0
    print(f"registered SAML SP {sp.name} ({sp.entity_id})")
    print(f"  domain:   {sp.domain}")
    print(f"  NameID:   {sp.name_id_format}")
    print(f"  ACS:      {' '.join(e.location for e in sp.metadata.acs)}")
    return 0


def cmd_list(args: argparse.Namespace, ctx: CliContext) -> int:
    sps = ctx.services.saml_sps.list()
    if args.json:
        print_json([describe(sp) for sp in sps])
        return 0
    print_table(
        ["name", "entity id", "domain", "name id"],
        [[sp.name, sp.entity_id, sp.domain, sp.name_id_format] for sp in sps],
    )
    return 0


def cmd_remove(args: argparse.Namespace, ctx: CliContext) -> int:
    ctx.services.saml_sps.remove(args.name, actor=Actor("admin"))
    print(f"removed SAML SP {args.name}")
    return 0


def cmd_metadata(args: argparse.Namespace, ctx: CliContext) -> int:
    print(ctx.services.saml_idp.metadata_xml())
    return 0
