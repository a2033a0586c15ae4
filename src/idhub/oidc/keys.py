"""idhub's signing keys: generation, sealing at rest, rotation and the published JWKS.

One active key per algorithm (RS256 for ID tokens, ES256 and EdDSA for access tokens as
clients choose). Rotation adds a new active key and retires the old one, which stays in the
JWKS until every token it signed has expired. Keys are cached per process and reloaded when
the database's key counter moves (checked at most every `recheck` seconds, and at once when a
token names a kid this process has not seen).
"""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from joserfc import jwk

from idhub.core.audit import Actor, Auditor, EventType
from idhub.core.clock import Clock
from idhub.core.crypto import Sealer
from idhub.core.signing_keys import SigningKeyRecord, SigningKeyStorage
from idhub.core.transactions import UnitOfWork
from idhub.errors import ConfigError, InvalidInput, StorageError

ALGS = ("RS256", "ES256", "EdDSA")


def _generate(alg: str) -> jwk.RSAKey | jwk.ECKey | jwk.OKPKey:
    if alg == "RS256":
        return jwk.generate_key("RSA", 2048, auto_kid=True)
    if alg == "ES256":
        return jwk.generate_key("EC", "P-256", auto_kid=True)
    if alg == "EdDSA":
        return jwk.generate_key("OKP", "Ed25519", auto_kid=True)
    raise InvalidInput(f"unknown signing algorithm {alg!r}; use one of {', '.join(ALGS)}")


@dataclass(frozen=True)
class KeyInfo:
    kid: str
    alg: str
    created_at: float
    retired_at: float | None
    expires_at: float | None

    @property
    def status(self) -> str:
        if self.retired_at is None:
            return "active"
        return "retired"


@dataclass(frozen=True)
class _Loaded:
    info: KeyInfo
    public_jwk: dict[str, Any]
    public_key: Any
    private_key: Any


class KeyStore:
    def __init__(
        self,
        store: SigningKeyStorage,
        sealer: Sealer,
        audit: Auditor,
        *,
        clock: Clock,
        retire_for: float,
        recheck: float = 5.0,
        uow: UnitOfWork,
    ) -> None:
        self._uow = uow
        self._store = store
        self._sealer = sealer
        self._audit = audit
        self._clock = clock
        # How long a retired key must stay verifiable: the longest lifetime of anything signed.
        self._retire_for = retire_for
        self._recheck = recheck
        self._lock = threading.Lock()
        self._keys: dict[str, _Loaded] = {}
        self._active: dict[str, _Loaded] = {}
        self._jwks: dict[str, Any] = {"keys": []}
        self._version: int | None = None
        self._checked_at = 0.0
        self._forced_at = 0.0

    # ------------------------------------------------------------------ loading

    def _load(self) -> None:
        rows = self._store.all()
        keys: dict[str, _Loaded] = {}
        active: dict[str, _Loaded] = {}
        for row in rows:
            keys[row.kid] = self._open(row)
        for loaded in keys.values():
            if loaded.info.retired_at is None:
                current = active.get(loaded.info.alg)
                if current is None or loaded.info.created_at >= current.info.created_at:
                    active[loaded.info.alg] = loaded
        self._keys, self._active = keys, active
        self._jwks = self._build_jwks()

    def _open(self, row: SigningKeyRecord) -> _Loaded:
        pem = self._sealer.open(row.private_enc, aad=row.kid.encode())
        key_type = {"RS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}[row.alg]
        private = jwk.import_key(pem, key_type)  # type: ignore[call-overload]
        return _Loaded(
            info=KeyInfo(row.kid, row.alg, row.created_at, row.retired_at, row.expires_at),
            public_jwk=row.public_jwk,
            public_key=private.public_key,
            private_key=private.private_key,
        )

    def _build_jwks(self) -> dict[str, Any]:
        now = self._clock.now()
        published = [
            k.public_jwk
            for k in self._keys.values()
            if k.info.expires_at is None or k.info.expires_at > now
        ]
        return {"keys": published}

    def _fresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        stale = self._version is None or now - self._checked_at >= self._recheck
        if not stale and (not force or now - self._forced_at < 1.0):
            # Unknown kids from strangers must not turn into a database read each.
            return
        try:
            version = self._store.version()
        except StorageError:
            if not self._keys:
                raise
            # The database is away: keep serving the keys in memory (JWKS, verification)
            # and ask again after `recheck`, not on every request.
            self._checked_at = now
            return
        with self._lock:
            if version != self._version or not self._keys:
                self._load()
                self._version = version
            else:
                # Expiry of retired keys depends on the clock, not on the counter.
                self._jwks = self._build_jwks()
            self._checked_at = now
            if force:
                self._forced_at = now

    def invalidate(self) -> None:
        with self._lock:
            self._checked_at = 0.0
            self._version = None

    # ------------------------------------------------------------------ use

    def signer(self, alg: str) -> tuple[str, Any]:
        """(kid, native private key) of the active key for `alg`."""
        self._fresh()
        loaded = self._active.get(alg)
        if loaded is None:
            self._fresh(force=True)
            loaded = self._active.get(alg)
        if loaded is None:
            raise ConfigError(
                f"there is no active {alg} signing key",
                hint="run `idhub init` or `idhub keys rotate`",
            )
        return loaded.info.kid, loaded.private_key

    def verification_key(self, kid: str) -> tuple[str, Any] | None:
        """(alg, native public key) for a kid still published, or None."""
        self._fresh()
        loaded = self._keys.get(kid)
        if loaded is None:
            self._fresh(force=True)
            loaded = self._keys.get(kid)
        if loaded is None:
            return None
        expires = loaded.info.expires_at
        if expires is not None and expires <= self._clock.now():
            return None
        return loaded.info.alg, loaded.public_key

    def readiness(self) -> str:
        """`ok` when this process holds an active signing key (in memory is enough)."""
        try:
            self._fresh()
        except StorageError:
            return "signing keys cannot be loaded: the database cannot be reached"
        return "ok" if self._active else "no active signing key (run `idhub init`)"

    def jwks(self) -> dict[str, Any]:
        self._fresh()
        return self._jwks

    def list(self) -> builtins.list[KeyInfo]:
        self.invalidate()
        self._fresh()
        return sorted((k.info for k in self._keys.values()), key=lambda i: i.created_at)

    # ------------------------------------------------------------------ changes

    def _create(self, alg: str, *, actor: Actor) -> tuple[str, builtins.list[str]]:
        key = _generate(alg)
        kid = str(key.kid)
        now = self._clock.now()
        public = {**key.as_dict(private=False), "kid": kid, "alg": alg, "use": "sig"}
        sealed = self._sealer.seal(key.as_pem(private=True), aad=kid.encode())
        with self._uow.atomic() as tx:
            retired = self._store.add_active(
                SigningKeyRecord(kid, alg, public, sealed, now, now, None, None),
                retire_until=now + self._retire_for,
            )
            tx.record(
                EventType.KEY_ROTATED if retired else EventType.KEY_CREATED,
                actor=actor,
                target=kid,
                details={"alg": alg, "retired": retired, "retired_until": now + self._retire_for},
            )
        self.invalidate()
        return kid, retired

    def ensure_active(self, echo: Callable[[str], None]) -> None:
        """Creates an active key for each algorithm that has none (used by `idhub init`)."""
        self.invalidate()
        self._fresh()
        for alg in ALGS:
            if alg in self._active:
                echo(f"signing key {alg} present ({self._active[alg].info.kid})")
                continue
            kid, _ = self._create(alg, actor=Actor.system("init"))
            echo(f"created {alg} signing key {kid}")
        self.invalidate()

    def rotate(
        self, algs: tuple[str, ...] = ALGS, *, actor: Actor | None = None
    ) -> builtins.list[tuple[str, str, builtins.list[str]]]:
        """Adds a new active key per algorithm; returns (alg, new kid, retired kids)."""
        done = []
        for alg in algs:
            if alg not in ALGS:
                raise InvalidInput(
                    f"unknown signing algorithm {alg!r}; use one of {', '.join(ALGS)}"
                )
            kid, retired = self._create(alg, actor=actor or Actor("admin"))
            done.append((alg, kid, retired))
        return done
