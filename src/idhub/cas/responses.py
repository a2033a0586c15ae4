"""The CAS answers: protocol 1.0 text, 2.0/3.0 XML (`cas:serviceResponse`) and the JSON form of
protocol 3.0 (`format=JSON`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from idhub.cas.attributes import Attributes

CAS_NS = "http://www.yale.edu/tp/cas"


@dataclass(frozen=True)
class Validated:
    user: str
    attributes: Attributes = field(default_factory=dict)
    pgt_iou: str | None = None
    proxies: tuple[str, ...] = ()


@dataclass(frozen=True)
class Failure:
    """A CAS error code (INVALID_REQUEST, INVALID_TICKET_SPEC, UNAUTHORIZED_SERVICE_PROXY,
    INVALID_PROXY_CALLBACK, INVALID_TICKET, INVALID_SERVICE, UNAUTHORIZED_SERVICE,
    INTERNAL_ERROR) and a sentence."""

    code: str
    description: str


@dataclass(frozen=True)
class ProxyGranted:
    proxy_ticket: str


def _wrap(body: str) -> str:
    return f'<cas:serviceResponse xmlns:cas="{CAS_NS}">\n{body}</cas:serviceResponse>\n'


def _failure_xml(tag: str, failure: Failure) -> str:
    return _wrap(
        f'  <cas:{tag} code="{escape(failure.code)}">{escape(failure.description)}</cas:{tag}>\n'
    )


def validation_text(result: Validated | Failure) -> str:
    """Protocol 1.0 `/validate`."""
    if isinstance(result, Validated):
        return f"yes\n{result.user}\n"
    return "no\n"


def validation_xml(result: Validated | Failure) -> str:
    if isinstance(result, Failure):
        return _failure_xml("authenticationFailure", result)
    lines = ["  <cas:authenticationSuccess>", f"    <cas:user>{escape(result.user)}</cas:user>"]
    if result.attributes:
        lines.append("    <cas:attributes>")
        for name, value in result.attributes.items():
            values: Sequence[str] = value if isinstance(value, list) else [value]
            lines.extend(f"      <cas:{name}>{escape(v)}</cas:{name}>" for v in values)
        lines.append("    </cas:attributes>")
    if result.pgt_iou:
        lines.append(f"    <cas:proxyGrantingTicket>{result.pgt_iou}</cas:proxyGrantingTicket>")
    if result.proxies:
        lines.append("    <cas:proxies>")
        lines.extend(f"      <cas:proxy>{escape(p)}</cas:proxy>" for p in result.proxies)
        lines.append("    </cas:proxies>")
    lines.append("  </cas:authenticationSuccess>\n")
    return _wrap("\n".join(lines))


def validation_json(result: Validated | Failure) -> str:
    if isinstance(result, Failure):
        body: dict[str, object] = {
            "authenticationFailure": {"code": result.code, "description": result.description}
        }
    else:
        success: dict[str, object] = {"user": result.user}
        if result.attributes:
            success["attributes"] = {
                k: v if isinstance(v, list) else [v] for k, v in result.attributes.items()
            }
        if result.pgt_iou:
            success["proxyGrantingTicket"] = result.pgt_iou
        if result.proxies:
            success["proxies"] = list(result.proxies)
        body = {"authenticationSuccess": success}
    return json.dumps({"serviceResponse": body}, ensure_ascii=False)


def proxy_xml(result: ProxyGranted | Failure) -> str:
    if isinstance(result, Failure):
        return _failure_xml("proxyFailure", result)
    return _wrap(
        "  <cas:proxySuccess>\n"
        f"    <cas:proxyTicket>{result.proxy_ticket}</cas:proxyTicket>\n"
        "  </cas:proxySuccess>\n"
    )


def proxy_json(result: ProxyGranted | Failure) -> str:
    if isinstance(result, Failure):
        body: dict[str, object] = {
            "proxyFailure": {"code": result.code, "description": result.description}
        }
    else:
        body = {"proxySuccess": {"proxyTicket": result.proxy_ticket}}
    return json.dumps({"serviceResponse": body}, ensure_ascii=False)
