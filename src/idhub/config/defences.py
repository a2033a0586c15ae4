"""Checks of the sign-in defence settings that one field's type cannot express: proxy
networks that parse, throttle limits that fit together, argon2id parameters that are not weak."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from idhub.config.settings import (
    DefencesSettings,
    PasswordSettings,
    ServerSettings,
    ThrottleSettings,
)
from idhub.errors import ConfigError

Fail = Callable[[str, str, str | None], ConfigError]

# OWASP's weakest listed argon2id setting uses 7 MiB; below that offline guessing gets cheap.
MIN_ARGON2_MEMORY_KIB = 7 * 1024
SCOPES = ("ip", "account", "client", "client_ip")


def check_defences(
    server: ServerSettings, throttle: ThrottleSettings, passwords: PasswordSettings, *, fail: Fail
) -> None:
    for value in server.trusted_proxies:
        try:
            ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise fail(
                f"[server] trusted_proxies: {value!r} is not an address or network (CIDR)",
                "server",
                "trusted_proxies",
            ) from None
    for scope in SCOPES:
        free = getattr(throttle, f"{scope}_free")
        limit = getattr(throttle, f"{scope}_limit")
        lock = getattr(throttle, f"{scope}_lock")
        if limit < 1 or free < 0 or free > limit:
            raise fail(
                f"[throttle] {scope}_free must be between 0 and {scope}_limit, "
                f"and {scope}_limit at least 1",
                "throttle",
                f"{scope}_free",
            )
        if lock < 1:
            raise fail(f"[throttle] {scope}_lock must be at least 1 second", "throttle", None)
    if throttle.window < 1 or throttle.delay_max < 0:
        raise fail(
            "[throttle] window must be positive and delay_max not negative", "throttle", None
        )
    if passwords.min_length < 8:
        raise fail("[passwords] min_length must be at least 8", "passwords", "min_length")
    if passwords.history < 0:
        raise fail("[passwords] history must not be negative", "passwords", "history")
    if passwords.argon2_memory_kib < MIN_ARGON2_MEMORY_KIB:
        raise fail(
            f"[passwords] argon2_memory_kib must be at least {MIN_ARGON2_MEMORY_KIB}",
            "passwords",
            "argon2_memory_kib",
        )
    if passwords.argon2_time_cost < 1 or not 1 <= passwords.argon2_parallelism <= 16:
        raise fail(
            "[passwords] argon2_time_cost must be at least 1 and argon2_parallelism 1 to 16",
            "passwords",
            None,
        )


def check_request_budget(defences: DefencesSettings, *, fail: Fail) -> None:
    """The anonymous-write budget (core/request_budget.py): every number at least 1, and an
    address table large enough that ordinary traffic does not push its own counters out."""
    least_of = {"anonymous_writes": 1, "anonymous_window": 1, "anonymous_sources": 100}
    for key, least in least_of.items():
        if getattr(defences, key) < least:
            raise fail(f"[defences] {key} must be at least {least}", "defences", key)
