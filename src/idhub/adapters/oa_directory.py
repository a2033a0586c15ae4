"""What a DingTalk and a WeCom source share as a `DirectorySource`: the API client built from
the platform's rules, the access token fetched with the app's credentials, the page shape, and
the parts of the source protocol neither platform fills (no groups, no memberOf). The
platform modules (`dingtalk.py`, `wecom.py`) read and map their own listings."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from idhub.adapters.oa_api import ApiRules, OaApi, OaApiError
from idhub.config import OaSourceSettings
from idhub.core.directory.mapping import SourceGroup, SourceUser


@dataclass
class UserPage:
    users: list[SourceUser]
    problems: list[str] = field(default_factory=list)


class OaDirectory:
    # Set by each platform: its API rules, where the token comes from, and the names the
    # token call gives the app's id and secret.
    platform: ClassVar[str]
    rules: ClassVar[ApiRules]
    credentials_call: ClassVar[str]
    credential_names: ClassVar[tuple[str, str]]

    def __init__(self, settings: OaSourceSettings, *, api: OaApi | None = None) -> None:
        self.settings = settings
        self.api = api or OaApi(settings, self.rules, self._fetch_token)

    def _fetch_token(self, api: OaApi) -> tuple[str, float]:
        id_name, secret_name = self.credential_names
        data = api.call(
            "GET",
            self.credentials_call,
            params={
                id_name: self.settings.client_id,
                secret_name: self.settings.client_secret.reveal(),
            },
            authenticated=False,
        )
        token = data.get("access_token")
        if not isinstance(token, str) or not token:
            raise OaApiError(f"{self.platform} gettoken: no access_token in the answer")
        return token, float(data.get("expires_in") or 7200)

    def close(self) -> None:
        self.api.close()

    def user_pages(self, since: str | None = None) -> Iterator[UserPage]:
        raise NotImplementedError

    def user_id_pages(self) -> Iterator[list[str]]:
        for page in self.user_pages():
            yield [u.external_id for u in page.users]

    def groups(self, since: str | None = None) -> tuple[list[SourceGroup], list[str]]:
        return [], []

    def member_of(self) -> dict[str, tuple[str, ...]]:
        return {}


def text(value: Any) -> str | None:
    """A field's value as trimmed text; None when absent or empty."""
    if value is None:
        return None
    out = str(value).strip()
    return out or None
