"""A tiny CAS service for the CAS tests: a Starlette app on a free port that receives the CAS
single-logout `logoutRequest` POSTs at its service URL and proxy-granting tickets at its
proxy callback, checking each logout request with the `python-cas` client library."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from cas import CASClientV3
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tests.conftest import serve_asgi


@dataclass
class CasService:
    url: str = ""
    # The ticket named by every valid logoutRequest received (its SessionIndex).
    logged_out: list[str] = field(default_factory=list)
    # pgtIou -> pgtId, as a CAS proxy keeps them until the validation answer names the IOU.
    pgts: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def service_url(self) -> str:
        return f"{self.url}/app/"

    @property
    def callback_url(self) -> str:
        return f"{self.url}/pgt"

    def session_index(self, xml: str) -> str | None:
        slos = CASClientV3.get_saml_slos(xml)
        return str(slos[0].text) if slos else None

    def app(self) -> Starlette:
        async def service(request: Request) -> Response:
            form = await request.form()
            xml = form.get("logoutRequest")
            if not isinstance(xml, str):
                return PlainTextResponse("no logoutRequest", status_code=400)
            index = self.session_index(xml)
            if index is None or not CASClientV3.verify_logout_request(xml, index):
                return PlainTextResponse("bad logoutRequest", status_code=400)
            with self._lock:
                self.logged_out.append(index)
            return PlainTextResponse("ok")

        async def page(request: Request) -> Response:
            return PlainTextResponse("the service's own page")

        async def pgt(request: Request) -> Response:
            iou, pgt_id = request.query_params.get("pgtIou"), request.query_params.get("pgtId")
            if iou and pgt_id:
                with self._lock:
                    self.pgts[iou] = pgt_id
            return PlainTextResponse("ok")

        return Starlette(
            routes=[
                Route("/app/", service, methods=["POST"]),
                Route("/app/", page, methods=["GET"]),
                Route("/pgt", pgt, methods=["GET"]),
            ]
        )


@contextlib.contextmanager
def running_cas_service() -> Iterator[CasService]:
    service = CasService()
    with serve_asgi(service.app()) as url:
        service.url = url
        yield service
