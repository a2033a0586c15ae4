"""`idhub cas service add|list|remove`: register the systems that sign in through CAS.

    idhub cas service add oa --url https://oa.example.com/ --domain oa --first-party

Each service is tied to a policy domain (its roles are released from there) and to one or more
service URL patterns (matching rules in docs/cas.md).
"""

from __future__ import annotations

import argparse
from typing import Any

from idhub.cli._context import CliContext
from idhub.cli._output import print_json, print_table
from idhub.core.audit import Actor
from idhub.core.cas import ATTRIBUTES


def register(sub: Any) -> None:
    cas = sub.add_parser("cas", help="the CAS server: registered services")
    cas_sub = cas.add_subparsers(dest="cas_command", metavar="GROUP", required=True)
    service = cas_sub.add_parser("service", help="registered CAS services")
    service_sub = service.add_subparsers(dest="service_command", metavar="ACTION", required=True)

    p = service_sub.add_parser("add", help="register a CAS service")
    p.add_argument("name", help="the service's id in sessions, consent and the audit trail")
    p.add_argument(
        "--url", action="append", required=True, dest="urls", metavar="PATTERN",
        help="service URL pattern (repeatable): same scheme, host and port; path equal or below",
    )  # fmt: skip
    p.add_argument("--domain", default=None, help="policy domain for roles (default: NAME)")
    p.add_argument("--display-name", default="")
    p.add_argument(
        "--attribute", action="append", default=None, dest="attributes", choices=ATTRIBUTES,
        help="attribute to release (repeatable; default: all)",
    )  # fmt: skip
    p.add_argument("--first-party", action="store_true", help="skip the consent page")
    p.add_argument(
        "--proxy-callback", action="append", default=[], dest="proxy_callbacks",
        metavar="PATTERN", help="pgtUrl pattern the service may use to act as a proxy",
    )  # fmt: skip
    p.add_argument(
        "--no-single-logout", action="store_false", dest="single_logout",
        help="do not send this service the CAS logoutRequest",
    )  # fmt: skip
    p.add_argument(
        "--require-mfa", action="store_true",
        help="everyone signing in to it presents a second factor",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_add)

    p = service_sub.add_parser("list", help="list CAS services")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = service_sub.add_parser("remove", help="delete a CAS service")
    p.add_argument("name")
    p.set_defaults(func=cmd_remove)


def cmd_add(args: argparse.Namespace, ctx: CliContext) -> int:
    service = ctx.services.cas_services.register(
        args.name,
        urls=args.urls,
        domain=args.domain,
        display_name=args.display_name,
        attributes=args.attributes,
        first_party=args.first_party,
        proxy_callbacks=args.proxy_callbacks,
        single_logout=args.single_logout,
        require_mfa=args.require_mfa,
        actor=Actor("admin", "cli"),
    )
    if args.json:
        print_json(service.describe())
    else:
        print(f"registered CAS service {service.name} (domain {service.domain})")
    return 0


def cmd_list(args: argparse.Namespace, ctx: CliContext) -> int:
    services = ctx.services.cas_services.list()
    if args.json:
        print_json([s.describe() for s in services])
        return 0
    rows = [
        (s.name, s.domain, " ".join(s.urls), "yes" if s.first_party else "no",
         "yes" if s.proxy_callbacks else "no", "yes" if s.single_logout else "no")
        for s in services
    ]  # fmt: skip
    print_table(("name", "domain", "urls", "first-party", "proxy", "single logout"), rows)
    return 0


def cmd_remove(args: argparse.Namespace, ctx: CliContext) -> int:
    ctx.services.cas_services.remove(args.name, actor=Actor("admin", "cli"))
    print(f"removed CAS service {args.name}")
    return 0
