"""The list of common and breached passwords shipped in the package (`idhub/data`), read once
per process; nothing is fetched at run time."""

from __future__ import annotations

from functools import cache
from importlib import resources

from idhub.core.password_policy import canonical

LIST_NAME = "common-passwords.txt"


@cache
def common_passwords() -> frozenset[str]:
    text = (resources.files("idhub") / "data" / LIST_NAME).read_text(encoding="utf-8")
    return frozenset(
        canonical(line.strip())
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    )
