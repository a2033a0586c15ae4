"""`idhub client add|list|show|rotate-secret|remove`: register the systems that use idhub.

A client secret is printed once, when it is created or rotated; idhub keeps only its HMAC.
`add` and `show` take `--json` so scripts can register clients and read the result.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from idhub.cli._context import CliContext
from idhub.cli._output import print_json, print_table, readable_times
from idhub.core.audit import Actor
from idhub.core.clients import AUTH_METHODS, GRANT_TYPES, SIGNING_ALGS, Client
from idhub.errors import InvalidInput

_GRANT_ALIASES = {"token_exchange": GRANT_TYPES[3], "token-exchange": GRANT_TYPES[3]}


def register(sub: Any) -> None:
    client = sub.add_parser("client", help="registered OAuth/OIDC clients")
    client_sub = client.add_subparsers(dest="client_command", metavar="ACTION", required=True)

    p = client_sub.add_parser("add", help="register a client (prints its secret once)")
    p.add_argument("client_id", help="the client id, also its audience and policy domain")
    p.add_argument("--name", default="")
    p.add_argument("--redirect-uri", action="append", default=[], dest="redirect_uris")
    p.add_argument(
        "--post-logout-redirect-uri", action="append", default=[], dest="post_logout_redirect_uris"
    )
    p.add_argument(
        "--grant",
        action="append",
        default=[],
        dest="grants",
        help=f"grant type (repeatable): {', '.join(GRANT_TYPES)} or token_exchange",
    )
    p.add_argument("--scope", default=None, help='allowed scopes, e.g. "openid profile email"')
    p.add_argument("--public", action="store_true", help="a public client (PKCE, no secret)")
    p.add_argument("--first-party", action="store_true", help="skip the consent page")
    p.add_argument("--auth-method", choices=AUTH_METHODS, default=None)
    p.add_argument("--jwks-file", type=Path, help="the client's public JWKS (private_key_jwt)")
    p.add_argument("--id-token-alg", choices=SIGNING_ALGS, default="RS256")
    p.add_argument("--access-token-alg", choices=SIGNING_ALGS, default=None)
    p.add_argument("--default-audience", default=None)
    p.add_argument("--allowed-audience", action="append", default=[], dest="allowed_audiences")
    p.add_argument("--backchannel-logout-uri", default=None)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_add)

    p = client_sub.add_parser("list", help="list clients")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = client_sub.add_parser("show", help="show one client")
    p.add_argument("client_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = client_sub.add_parser(
        "rotate-secret", help="issue a new secret (the old one stops working)"
    )
    p.add_argument("client_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rotate)

    p = client_sub.add_parser("remove", help="delete a client")
    p.add_argument("client_id")
    p.set_defaults(func=cmd_remove)


def _jwks(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path}:{exc.lineno}: not JSON: {exc.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise InvalidInput(f"{path}: a JWKS is an object with a 'keys' list")
    for key in data["keys"]:
        if isinstance(key, dict) and any(k in key for k in ("d", "p", "q")):
            raise InvalidInput(f"{path}: contains a private key; register the public keys only")
    return data


def _output(client: Client, secret: str | None) -> dict[str, Any]:
    out = client.describe()
    out["client_secret"] = secret
    return out


def cmd_add(args: argparse.Namespace, ctx: CliContext) -> int:
    grants = [_GRANT_ALIASES.get(g, g) for g in args.grants]
    if not grants:
        grants = (
            ["authorization_code", "refresh_token"]
            if args.redirect_uris
            else ["client_credentials"]
        )
    scope = args.scope
    if scope is None:
        scope = "openid profile email" if "authorization_code" in grants else ""
    client, secret = ctx.services.clients.register(
        args.client_id,
        name=args.name,
        redirect_uris=args.redirect_uris,
        post_logout_redirect_uris=args.post_logout_redirect_uris,
        grant_types=grants,
        scope=scope,
        public=args.public,
        first_party=args.first_party,
        token_endpoint_auth_method=args.auth_method,
        jwks=_jwks(args.jwks_file),
        id_token_alg=args.id_token_alg,
        access_token_alg=args.access_token_alg,
        default_audience=args.default_audience,
        allowed_audiences=args.allowed_audiences,
        backchannel_logout_uri=args.backchannel_logout_uri,
        actor=Actor("admin", "cli"),
    )
    if args.json:
        print_json(_output(client, secret))
        return 0
    print(f"registered client {client.client_id}")
    print(f"  auth method:   {client.token_endpoint_auth_method}")
    print(f"  grant types:   {' '.join(client.grant_types)}")
    print(f"  scope:         {' '.join(client.scopes)}")
    for uri in client.redirect_uris:
        print(f"  redirect URI:  {uri}")
    if secret:
        print(f"  client secret: {secret}")
        print("store the secret now: idhub keeps only its hash and cannot show it again")
    return 0


def cmd_list(args: argparse.Namespace, ctx: CliContext) -> int:
    clients = ctx.services.clients.list()
    if args.json:
        print_json([c.describe() for c in clients])
        return 0
    rows = [
        (
            c.client_id,
            c.name,
            c.token_endpoint_auth_method,
            " ".join(c.grant_types),
            c.audience,
            "disabled" if c.disabled else "",
        )
        for c in clients
    ]
    print_table(["client_id", "name", "auth", "grants", "audience", ""], rows)
    return 0


def cmd_show(args: argparse.Namespace, ctx: CliContext) -> int:
    client = ctx.services.clients.require(args.client_id)
    data = readable_times(client.describe())
    if args.json:
        print_json(data)
        return 0
    for key, value in data.items():
        if isinstance(value, list):
            value = " ".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = json.dumps(value)
        print(f"{key:36} {'' if value is None else value}")
    return 0


def cmd_rotate(args: argparse.Namespace, ctx: CliContext) -> int:
    client, secret = ctx.services.clients.rotate_secret(args.client_id, actor=Actor("admin", "cli"))
    if args.json:
        print_json({"client_id": client.client_id, "client_secret": secret})
        return 0
    print(f"new secret for {client.client_id}: {secret}")
    print("the previous secret no longer works; store this one now, it is not shown again")
    return 0


def cmd_remove(args: argparse.Namespace, ctx: CliContext) -> int:
    ctx.services.clients.remove(args.client_id, actor=Actor("admin", "cli"))
    print(f"removed client {args.client_id}")
    return 0
