"""SAML storage: registered service providers, the certificates around signing keys, message
ids seen once, and the HTTP channel that delivers back-channel LogoutRequests."""

from __future__ import annotations

import base64
import threading
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from idhub.adapters._storage_errors import storage_boundary
from idhub.adapters.db import saml_certificates, saml_message_ids, saml_service_providers
from idhub.adapters.unit_of_work import begin, connect
from idhub.core.logout import DeliveryFailed
from idhub.core.saml import BINDING_SOAP, Endpoint, SpRecord
from idhub.errors import Conflict

SOAP_ENVELOPE = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<soap11:Envelope xmlns:soap11="http://schemas.xmlsoap.org/soap/envelope/">'
    "<soap11:Body>{body}</soap11:Body></soap11:Envelope>"
)
PURGE_EVERY = 500


def _to_sp(row: Row[Any]) -> SpRecord:
    m = row._mapping
    return SpRecord(
        name=m["name"],
        domain=m["domain"],
        metadata_xml=m["metadata_xml"],
        entity_id=m["entity_id"],
        name_id_format=m["name_id_format"],
        legacy_sha1=bool(m["legacy_sha1"]),
        require_signed_requests=bool(m["require_signed_requests"]),
        first_party=bool(m["first_party"]),
        attributes=tuple(a for a in (m["attributes"] or "").split(",") if a),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        require_mfa=bool(m["require_mfa"]),
    )


def _values(sp: SpRecord) -> dict[str, Any]:
    return {
        "name": sp.name,
        "entity_id": sp.entity_id,
        "domain": sp.domain,
        "metadata_xml": sp.metadata_xml,
        "name_id_format": sp.name_id_format,
        "legacy_sha1": sp.legacy_sha1,
        "require_signed_requests": sp.require_signed_requests,
        "first_party": sp.first_party,
        "attributes": ",".join(sp.attributes),
        "created_at": sp.created_at,
        "updated_at": sp.updated_at,
        "require_mfa": sp.require_mfa,
    }


@storage_boundary
class SqlSpStore:
    """Rows of `saml_service_providers`, cached per registry version."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._cache: tuple[str, dict[str, SpRecord]] | None = None

    def insert(self, sp: SpRecord) -> None:
        try:
            with begin(self._engine) as conn:
                conn.execute(insert(saml_service_providers).values(**_values(sp)))
        except IntegrityError as exc:
            raise Conflict(f"an SP with the name or entity id of {sp.name!r} exists") from exc

    def replace(self, sp: SpRecord) -> None:
        try:
            with begin(self._engine) as conn:
                conn.execute(
                    update(saml_service_providers)
                    .where(saml_service_providers.c.name == sp.name)
                    .values(**_values(sp))
                )
        except IntegrityError as exc:
            raise Conflict(f"another SP has the entity id {sp.entity_id!r}") from exc

    def delete(self, name: str) -> bool:
        with begin(self._engine) as conn:
            gone = conn.execute(
                delete(saml_service_providers).where(saml_service_providers.c.name == name)
            ).rowcount
        return bool(gone)

    def version(self) -> str:
        with connect(self._engine) as conn:
            count, latest = conn.execute(
                select(func.count(), func.max(saml_service_providers.c.updated_at))
            ).one()
        return f"{count}:{latest}"

    def _all(self) -> dict[str, SpRecord]:
        version = self.version()
        cached = self._cache
        if cached is not None and cached[0] == version:
            return cached[1]
        with connect(self._engine) as conn:
            rows = conn.execute(
                select(saml_service_providers).order_by(saml_service_providers.c.name)
            ).all()
        sps = {sp.name: sp for sp in map(_to_sp, rows)}
        with self._lock:
            self._cache = (version, sps)
        return sps

    def get(self, name: str) -> SpRecord | None:
        return self._all().get(name)

    def by_entity_id(self, entity_id: str) -> SpRecord | None:
        return next((sp for sp in self._all().values() if sp.entity_id == entity_id), None)

    def all(self) -> list[SpRecord]:
        return list(self._all().values())


@storage_boundary
class SqlSamlCertificates:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def get(self, kid: str) -> str | None:
        with connect(self._engine) as conn:
            value = conn.execute(
                select(saml_certificates.c.certificate_pem).where(saml_certificates.c.kid == kid)
            ).scalar()
        return None if value is None else str(value)

    def put_if_absent(self, kid: str, certificate_pem: str, *, now: float) -> str:
        try:
            with begin(self._engine, savepoint=True) as conn:
                conn.execute(
                    insert(saml_certificates).values(
                        kid=kid, certificate_pem=certificate_pem, created_at=now
                    )
                )
        except IntegrityError:
            pass  # another replica made one first: everyone uses that one
        stored = self.get(kid)
        return stored if stored is not None else certificate_pem


@storage_boundary
class SqlMessageIds:
    """`saml_message_ids`: an id inserted twice is a replay (the primary key says so)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._count = 0

    def remember(self, message_id: str, *, kind: str, expires_at: float, now: float) -> bool:
        self._count += 1
        if self._count % PURGE_EVERY == 0:
            self.purge(now)
        try:
            with begin(self._engine, savepoint=True) as conn:
                conn.execute(
                    insert(saml_message_ids).values(
                        id=message_id[:300], kind=kind, expires_at=expires_at
                    )
                )
        except IntegrityError:
            return False
        return True

    def purge(self, now: float) -> int:
        with begin(self._engine) as conn:
            return int(
                conn.execute(
                    delete(saml_message_ids).where(saml_message_ids.c.expires_at < now)
                ).rowcount
            )


class HttpSamlLogoutChannel:
    """Posts a LogoutRequest to an SP: a SOAP envelope to a SOAP endpoint, otherwise the
    HTTP-POST binding's form (`SAMLRequest`, base64) sent server to server."""

    def __init__(self, *, timeout: float = 5.0) -> None:
        self._timeout = timeout

    def send(self, endpoint: Endpoint, logout_request_xml: str) -> None:
        # Imported on the first logout sent: httpx brings its command line (click, rich,
        # Pygments, ~10 MB), which a worker that never ends a SAML session should not carry.
        import httpx

        timeout = httpx.Timeout(self._timeout, connect=3.0)
        try:
            with httpx.Client(timeout=timeout, follow_redirects=False) as client:
                if endpoint.binding == BINDING_SOAP:
                    response = client.post(
                        endpoint.location,
                        content=SOAP_ENVELOPE.format(body=_strip_declaration(logout_request_xml)),
                        headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": ""},
                    )
                else:
                    encoded = base64.b64encode(logout_request_xml.encode()).decode()
                    response = client.post(endpoint.location, data={"SAMLRequest": encoded})
        except httpx.TimeoutException:
            raise DeliveryFailed("timed out") from None
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}"[:200]) from None
        if response.status_code not in (200, 204):
            raise DeliveryFailed(f"HTTP {response.status_code}")


def _strip_declaration(xml: str) -> str:
    return xml.split("?>", 1)[1] if xml.startswith("<?xml") else xml
