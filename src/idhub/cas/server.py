"""The CAS server's decisions for the validation and proxy endpoints, and service tickets for
`/cas/login` once the sign-in core has answered `SignedIn`.

Validation (`/validate`, `/serviceValidate`, `/proxyValidate` and their `p3/` forms):

1. the ticket is consumed first, so it is spent whatever the outcome;
2. it must be unexpired, of a kind the endpoint accepts (service tickets only on
   `serviceValidate`), for the very service URL it was issued to (normalized, see
   `services.py`), from a fresh sign-in when `renew=true`, and its session still alive;
3. a `pgtUrl` is honoured only for a service registered with matching proxy callbacks, over
   https (http to a loopback address when idhub itself runs on loopback http, i.e. in
   development), and only if the callback answers 200 to `?pgtId=...&pgtIou=...`.

Every issued and validated ticket, and every refusal, is audited, never the ticket itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from idhub.cas.attributes import AttributeRelease, Attributes
from idhub.cas.responses import Failure, ProxyGranted, Validated
from idhub.cas.services import CasServiceRegistry, check_proxy_callback, parse_service_url
from idhub.cas.tickets import CasTickets, Redeemed, TicketKind, TicketRecord, ticket_kind
from idhub.core.audit import Actor, Auditor, EventType, PendingEvent, RequestContext
from idhub.core.cas import CasService
from idhub.core.clock import Clock
from idhub.core.crypto import new_token
from idhub.core.failure_audit import FailureAudit, FailureWrite
from idhub.core.identity import User
from idhub.core.request_budget import CAS_REJECTED
from idhub.core.sessions import SsoSession

PROTOCOL = "cas"


class UserById(Protocol):
    def get_user(self, user_id: int) -> User | None: ...


class SessionLookup(Protocol):
    def get(self, sid: str) -> SsoSession | None: ...


class ProxyCallback(Protocol):
    def deliver(self, url: str, *, pgt_id: str, pgt_iou: str) -> bool:
        """GETs `url?pgtId=...&pgtIou=...`; True when it answered 200."""
        ...


@dataclass(frozen=True)
class ValidationRequest:
    ticket: str | None
    service: str | None
    renew: bool = False
    pgt_url: str | None = None
    # proxyValidate accepts proxy tickets as well; serviceValidate and validate do not.
    proxy_tickets: bool = False
    # Protocol 3.0 (`/p3/...`) releases attributes.
    attributes: bool = False


class _Refused(Exception):
    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.failure = Failure(code, description)


def check_loopback_http(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _PerBatch:
    """The attribute release for one batch of validations: each person's groups read once."""

    def __init__(self, release: AttributeRelease) -> None:
        self._release = release
        self._groups: dict[int, list[str]] = {}

    def release(
        self, user: User, service: CasService, *, auth_time: float, from_new_login: bool
    ) -> Attributes:
        return self._release.release(
            user, service, auth_time=auth_time, from_new_login=from_new_login, groups=self._read
        )

    def _read(self, user_id: int) -> list[str]:
        if user_id not in self._groups:
            self._groups[user_id] = self._release.groups(user_id)
        return list(self._groups[user_id])


class CasServer:
    """`services.cas`."""

    def __init__(
        self,
        *,
        registry: CasServiceRegistry,
        tickets: CasTickets,
        users: UserById,
        sessions: SessionLookup,
        attributes: AttributeRelease,
        callback: ProxyCallback,
        audit: Auditor,
        clock: Clock,
        allow_http_loopback: bool = False,
        failures: FailureAudit | None = None,
    ) -> None:
        self.registry = registry
        self._tickets = tickets
        self._users = users
        self._sessions = sessions
        self._attributes = attributes
        self._callback = callback
        self._audit = audit
        self._clock = clock
        self._allow_http_loopback = allow_http_loopback
        # Anyone may present a made-up ticket: refusals are audited within the per-address
        # budget (core/failure_audit.py); the CAS answer is the same either way.
        self._failures = failures

    # ------------------------------------------------------------------ login and logout

    def service_for(self, url: str | None) -> CasService | None:
        return self.registry.find(url) if url else None

    def issue_service_ticket(
        self,
        service: CasService,
        url: str,
        *,
        session: SsoSession,
        user: User,
        from_new_login: bool,
        ctx: RequestContext | None,
    ) -> str:
        parsed = parse_service_url(url)
        assert parsed is not None, "service_for() matched it"
        ticket = self._tickets.issue(
            TicketKind.SERVICE,
            service_name=service.name,
            service_url=parsed.normalized,
            sid=session.sid,
            user_id=user.id,
            now=self._clock.now(),
            from_new_login=from_new_login,
        )
        self._audit.record(
            EventType.CAS_TICKET_ISSUED,
            actor=Actor("user", user.sub),
            target=service.name,
            details={"kind": "ST", "sid": session.sid, "from_new_login": from_new_login},
            ctx=ctx,
        )
        return ticket

    # ------------------------------------------------------------------ validation

    def validate(
        self, request: ValidationRequest, *, ctx: RequestContext | None = None
    ) -> Validated | Failure:
        outcome = self.validate_many([(request, ctx)])[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def validate_many(
        self, requests: Sequence[tuple[ValidationRequest, RequestContext | None]]
    ) -> list[Validated | Failure | Exception]:
        """Validations that arrived together (the web front hands over what queued while the
        last batch ran). Each is decided on its own, exactly as alone; what they share is
        the transaction: every ticket is spent, checked and its validation (or refusal)
        recorded in one, the decision made on what that transaction read. Attributes are
        gathered once it committed (its write lock is the narrow part), each person's groups
        read once per batch. One outcome per request, in order: its answer, or the error
        (storage, audit) that stopped it, with nothing of it kept."""
        results: dict[int, Validated | Failure | Exception] = {}
        refusals: dict[int, FailureWrite] = {}
        common: list[tuple[int, ValidationRequest, TicketKind, RequestContext | None]] = []
        for i, (request, ctx) in enumerate(requests):
            try:
                kind = self._precheck(request)
            except _Refused as refused:
                refusals[i] = self._rejections(request, refused.failure, ctx)
                results[i] = refused.failure
                continue
            if request.pgt_url:
                try:
                    results[i] = self._validate_with_callback(request, kind, ctx)
                except Exception as exc:  # this request's outcome, not its neighbours'
                    results[i] = exc
            else:
                common.append((i, request, kind, ctx))
        written = [event for write in refusals.values() for event in write.events]
        if written:
            try:
                self._audit.record_many(written)
            except Exception as exc:  # no refusal without its event
                results.update(dict.fromkeys(refusals, exc))
                for write in refusals.values():
                    self._not_written(write)
        if common:
            self._validate_common(common, results)
        return [results[i] for i in range(len(requests))]

    def _validate_common(
        self,
        common: list[tuple[int, ValidationRequest, TicketKind, RequestContext | None]],
        results: dict[int, Validated | Failure | Exception],
    ) -> None:
        # The store may run a `decide` again if its transaction rolled back and was retried:
        # the outcome kept is the one of the transaction that committed, i.e. the last. A
        # refusal keeps the budget's first answer (`refused`), so a retry neither spends the
        # address's budget twice nor drops the summaries the rolled-back attempt carried.
        decided: dict[int, Failure | tuple[TicketRecord, SsoSession, User, CasService]] = {}
        refused: dict[int, FailureWrite] = {}

        def decider(
            i: int, request: ValidationRequest, kind: TicketKind, ctx: RequestContext | None
        ) -> Callable[[Redeemed | None], list[PendingEvent]]:
            def decide(redeemed: Redeemed | None) -> list[PendingEvent]:
                try:
                    checked = self._check(request, kind, redeemed, self._clock.now())
                except _Refused as refusal:
                    decided[i] = refusal.failure
                    refused[i] = self._rejections(request, refusal.failure, ctx, refused.get(i))
                    return refused[i].events
                decided[i] = checked
                if i in refused:  # refused by an attempt that rolled back, granted by this one
                    self._not_written(refused.pop(i))
                record, _, user, service = checked
                return [self._validated(record, user, service, pgt_iou=None, ctx=ctx)]

            return decide

        items = [(r.ticket or "", decider(i, r, kind, ctx)) for i, r, kind, ctx in common]
        found = self._tickets.redeem_many(items, self._clock.now())
        groups = _PerBatch(self._attributes)
        for (i, request, _, _), stored in zip(common, found, strict=True):
            if isinstance(stored, Exception) and i in refused:
                self._not_written(refused[i])
            outcome = stored if isinstance(stored, Exception) else decided[i]
            if isinstance(outcome, Failure | Exception):
                results[i] = outcome
                continue
            try:
                results[i] = self._answer(request, *outcome, pgt_iou=None, release=groups)
            except Exception as exc:  # reading the attributes failed: as it would alone
                results[i] = exc

    def _validate_with_callback(
        self, request: ValidationRequest, kind: TicketKind, ctx: RequestContext | None
    ) -> Validated | Failure:
        """With `pgtUrl`: the proxy callback is an HTTPS request, never made inside a
        transaction, so the validation is recorded after it."""
        assert request.ticket is not None and request.pgt_url is not None
        now = self._clock.now()
        try:
            redeemed = self._tickets.redeem(request.ticket, now)
            record, session, user, service = self._check(request, kind, redeemed, now)
        except _Refused as refused:
            write = self._rejections(request, refused.failure, ctx)
            if write.events:
                try:
                    self._audit.record_many(write.events)
                except Exception:
                    self._not_written(write)
                    raise
            return refused.failure
        pgt_iou = self._grant_proxy(request.pgt_url, record, session, service)
        self._audit.record_many([self._validated(record, user, service, pgt_iou=pgt_iou, ctx=ctx)])
        return self._answer(request, record, session, user, service, pgt_iou=pgt_iou)

    def _answer(
        self,
        request: ValidationRequest,
        record: TicketRecord,
        session: SsoSession,
        user: User,
        service: CasService,
        *,
        pgt_iou: str | None,
        release: AttributeRelease | _PerBatch | None = None,
    ) -> Validated:
        attributes = {}
        if request.attributes:
            attributes = (release or self._attributes).release(
                user, service, auth_time=session.auth_time, from_new_login=record.from_new_login
            )
        return Validated(
            user=user.username, attributes=attributes, pgt_iou=pgt_iou, proxies=record.proxies
        )

    def _rejections(
        self,
        request: ValidationRequest,
        failure: Failure,
        ctx: RequestContext | None,
        earlier: FailureWrite | None = None,
    ) -> FailureWrite:
        """What to write for a refused validation: its `cas.ticket_rejected` within the
        budget, with any summary due; possibly nothing. `earlier` is the budget's answer to an
        attempt of the same validation that rolled back: kept, not asked again."""
        event = PendingEvent(
            EventType.CAS_TICKET_REJECTED,
            actor=Actor("system", PROTOCOL),
            target=request.service[:200] if request.service else None,
            outcome="failure",
            details={"error": failure.code, "reason": failure.description},
            ctx=ctx,
        )
        if earlier is not None:
            return earlier.again(event)
        if self._failures is None:
            return FailureWrite(event=event)
        return self._failures.admit(CAS_REJECTED, event)

    def _not_written(self, write: FailureWrite) -> None:
        if self._failures is not None:
            self._failures.not_written(write)

    @staticmethod
    def _validated(
        record: TicketRecord,
        user: User,
        service: CasService,
        *,
        pgt_iou: str | None,
        ctx: RequestContext | None,
    ) -> PendingEvent:
        return PendingEvent(
            EventType.CAS_TICKET_VALIDATED,
            actor=Actor("user", user.sub),
            target=service.name,
            details={
                "kind": record.kind.value,
                "sid": record.sid,
                "proxies": len(record.proxies),
                "proxy_granted": pgt_iou is not None,
            },
            ctx=ctx,
        )

    @staticmethod
    def _precheck(request: ValidationRequest) -> TicketKind:
        """What is refused without touching a ticket."""
        if not request.ticket or not request.service:
            raise _Refused("INVALID_REQUEST", "ticket and service are both required")
        kind = ticket_kind(request.ticket)
        if kind not in (TicketKind.SERVICE, TicketKind.PROXY):
            raise _Refused("INVALID_TICKET_SPEC", "not a service or proxy ticket")
        return kind

    def _check(
        self, request: ValidationRequest, kind: TicketKind, redeemed: Redeemed | None, now: float
    ) -> tuple[TicketRecord, SsoSession, User, CasService]:
        """Every check on a ticket just consumed (spent whatever the outcome)."""
        if redeemed is None:
            raise _Refused("INVALID_TICKET", "ticket not recognized, used or expired")
        record, session, user = redeemed.record, redeemed.session, redeemed.user
        if kind is TicketKind.PROXY and not request.proxy_tickets:
            raise _Refused("INVALID_TICKET", "a proxy ticket must be validated at proxyValidate")
        parsed = parse_service_url(request.service or "")
        if parsed is None or parsed.normalized != record.service_url:
            raise _Refused("INVALID_SERVICE", "the ticket was not issued for this service")
        if request.renew and not record.from_new_login:
            raise _Refused("INVALID_TICKET_SPEC", "renew: the ticket is not from a new sign-in")
        # The session and the person as they are now (read with the consume, not cached).
        if session is None or not session.is_active(now):
            raise _Refused("INVALID_TICKET", "the session the ticket came from has ended")
        if user is None or user.disabled:
            raise _Refused("INVALID_TICKET", "the account is no longer active")
        service = self.registry.named(record.service_name)
        if service is None:
            raise _Refused("INVALID_SERVICE", "the service is no longer registered")
        if request.pgt_url:
            self._require_callback(service, request.pgt_url)
        return record, session, user, service

    def _require_callback(self, service: CasService, url: str) -> None:
        if not service.proxy_callbacks:
            raise _Refused("UNAUTHORIZED_SERVICE_PROXY", "the service may not act as a proxy")
        secure = url.lower().startswith("https://")
        local = self._allow_http_loopback and check_loopback_http(url)
        if not (secure or local) or not check_proxy_callback(service, url):
            raise _Refused("INVALID_PROXY_CALLBACK", "the proxy callback is not acceptable")

    def _grant_proxy(
        self, url: str, record: TicketRecord, session: SsoSession, service: CasService
    ) -> str | None:
        parsed = parse_service_url(url)
        assert parsed is not None, "checked by _require_callback"
        pgt = self._tickets.issue(
            TicketKind.PROXY_GRANTING,
            service_name=service.name,
            service_url=parsed.normalized,
            sid=record.sid,
            user_id=record.user_id,
            now=self._clock.now(),
            expires_at=session.expires_at,
            parent_hash=record.ticket_hash,
            proxies=(url, *record.proxies),
        )
        iou = f"PGTIOU-{new_token(20)}"
        # CAS 3.0 §2.5.4: no PGT in the answer unless the callback took it.
        return iou if self._callback.deliver(url, pgt_id=pgt, pgt_iou=iou) else None

    # ------------------------------------------------------------------ proxy tickets

    def proxy(
        self, pgt: str | None, target: str | None, *, ctx: RequestContext | None = None
    ) -> ProxyGranted | Failure:
        if not pgt or not target:
            return Failure("INVALID_REQUEST", "pgt and targetService are both required")
        now = self._clock.now()
        record = (
            self._tickets.granting(pgt, now)
            if ticket_kind(pgt) is TicketKind.PROXY_GRANTING
            else None
        )
        session = self._sessions.get(record.sid) if record and record.sid else None
        if record is None or session is None or not session.is_active(now):
            return self._proxy_refused(Failure("INVALID_TICKET", "pgt not recognized"), ctx)
        service = self.service_for(target)
        if service is None:
            return self._proxy_refused(
                Failure("UNAUTHORIZED_SERVICE", "the target service is not registered"), ctx
            )
        parsed = parse_service_url(target)
        assert parsed is not None
        ticket = self._tickets.issue(
            TicketKind.PROXY,
            service_name=service.name,
            service_url=parsed.normalized,
            sid=record.sid,
            user_id=record.user_id,
            now=now,
            parent_hash=record.ticket_hash,
            proxies=record.proxies,
        )
        user = self._users.get_user(record.user_id)
        self._audit.record(
            EventType.CAS_TICKET_ISSUED,
            actor=Actor("user", user.sub if user else None),
            target=service.name,
            details={"kind": "PT", "sid": record.sid, "proxy_of": record.service_name},
            ctx=ctx,
        )
        return ProxyGranted(ticket)

    def _proxy_refused(self, failure: Failure, ctx: RequestContext | None) -> Failure:
        event = PendingEvent(
            EventType.CAS_TICKET_REJECTED,
            actor=Actor("system", PROTOCOL),
            outcome="failure",
            details={"error": failure.code, "reason": failure.description, "endpoint": "proxy"},
            ctx=ctx,
        )
        if self._failures is None:
            self._audit.record_many([event])
        else:
            self._failures.record(CAS_REJECTED, event)
        return failure
