"""Remembered devices: "do not ask for my second factor on this browser for 30 days".

After a second factor, a person may tick the box: the browser gets a cookie naming a device
record and signed (HMAC) together with the person's id, so it counts only for that person and
cannot be forged or moved to another account. The record is what makes it revocable: from the
account page, by an admin's `idhub user mfa reset`, or by expiry. A remembered device satisfies
"this person must use a second factor", never a system's explicit step-up (`acr_values`).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Protocol

from idhub.core.audit import Actor, Auditor, EventType, RequestContext
from idhub.core.clock import Clock
from idhub.core.crypto import KeyedHasher, new_token
from idhub.core.identity import User
from idhub.core.transactions import UnitOfWork

DEVICE_COOKIE = "idhub_device"
MAX_COOKIE = 200


@dataclass(frozen=True)
class RememberedDevice:
    id: str
    user_id: int
    created_at: float
    expires_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None
    user_agent: str | None = None
    ip: str | None = None

    def is_valid(self, now: float) -> bool:
        return self.revoked_at is None and self.expires_at > now


class DeviceStore(Protocol):
    def add_device(self, device: RememberedDevice) -> None: ...
    def device(self, device_id: str) -> RememberedDevice | None: ...
    def devices(self, user_id: int, now: float) -> list[RememberedDevice]:
        """The person's unrevoked, unexpired devices, newest first."""
        ...

    def touch_device(self, device_id: str, now: float) -> None: ...
    def revoke_device(self, user_id: int, device_id: str, now: float) -> bool: ...


class RememberedDevices:
    def __init__(
        self,
        store: DeviceStore,
        *,
        signer: KeyedHasher,
        audit: Auditor,
        clock: Clock,
        ttl: float,
        uow: UnitOfWork,
    ) -> None:
        # A device remembered or revoked commits with its event (core/transactions.py).
        self._uow = uow
        self._store = store
        self._signer = signer
        self._audit = audit
        self._clock = clock
        self.ttl = ttl

    def remember(self, user: User, *, ctx: RequestContext | None) -> str:
        """Records a device for `user`; returns the cookie value to set."""
        now = self._clock.now()
        device = RememberedDevice(
            id=new_token(16),
            user_id=user.id,
            created_at=now,
            expires_at=now + self.ttl,
            user_agent=(ctx.user_agent or "")[:500] if ctx else None,
            ip=ctx.client_ip if ctx else None,
        )
        with self._uow.atomic() as tx:
            self._store.add_device(device)
            tx.record(
                EventType.MFA_DEVICE_REMEMBERED, actor=Actor("user", user.sub), target=user.sub,
                details={"device": device.id, "days": round(self.ttl / 86400, 1)}, ctx=ctx,
            )  # fmt: skip
        return f"{device.id}.{self._mac(device.id, user.id)}"

    def check(self, cookie: str | None, user_id: int) -> bool:
        """True if `cookie` is a valid remembered device of this very person."""
        if not cookie or len(cookie) > MAX_COOKIE or cookie.count(".") != 1:
            return False
        device_id, mac = cookie.split(".")
        if not hmac.compare_digest(self._mac(device_id, user_id), mac):
            return False
        device = self._store.device(device_id)
        now = self._clock.now()
        if device is None or device.user_id != user_id or not device.is_valid(now):
            return False
        self._store.touch_device(device_id, now)
        return True

    def devices(self, user: User) -> list[RememberedDevice]:
        return self._store.devices(user.id, self._clock.now())

    def revoke(
        self, user: User, device_id: str, *, actor: Actor, ctx: RequestContext | None
    ) -> bool:
        with self._uow.atomic() as tx:
            revoked = self._store.revoke_device(user.id, device_id, self._clock.now())
            if revoked:
                tx.record(
                    EventType.MFA_DEVICE_REVOKED, actor=actor, target=user.sub,
                    details={"device": device_id}, ctx=ctx,
                )  # fmt: skip
        return revoked

    def _mac(self, device_id: str, user_id: int) -> str:
        return self._signer.hash(f"{device_id}:{user_id}")[:43]
