"""Reading a WeCom (企业微信) corporation's contacts through its server API.

`cgi-bin/department/list?id=<root>` answers the root and every department below it in one
call; `cgi-bin/user/list?department_id=<id>` each department's direct members. A person in
several departments is listed by each and kept once, placed in `main_department`.
`is_leader_in_dept` (aligned with `department`), or else the department's
`department_leader`, names the manager. Status 2 (disabled) and 5 (resigned) are disabled in
idhub; 1 (active) and 4 (not yet activated, still an employee) are enabled. Apps created
since 2022 see no mobile or email without the member's consent: those fields may be absent.
Where user/list is closed to the app, `member_listing = "list_id"` reads `user/list_id` by
cursor and each member with `user/get`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from idhub.adapters.oa_api import ApiRules, OaApi, OaApiError
from idhub.adapters.oa_directory import OaDirectory, UserPage, text
from idhub.config import OaSourceSettings
from idhub.core.directory.mapping import SourceDepartment, SourceUser
from idhub.core.directory.oa_mapping import OaDepartment, department_paths, member_dn

RULES = ApiRules(
    platform="wecom",
    # 40014 invalid access_token, 42001 access_token expired, 40082 invalid token type.
    token_codes=frozenset({"40014", "42001", "40082"}),
    # 45009: calls over the frequency limit; 45033: too many concurrent calls.
    rate_codes=frozenset({"45009", "45033"}),
    busy_codes=frozenset({"-1"}),
)
DISABLED_STATUSES = {2, 5}


class WeComDirectory(OaDirectory):
    """One configured WeCom source (a DirectorySource for core/directory/sync.py)."""

    platform = "wecom"
    rules = RULES
    credentials_call = "cgi-bin/gettoken"
    credential_names = ("corpid", "corpsecret")

    def __init__(self, settings: OaSourceSettings, *, api: OaApi | None = None) -> None:
        super().__init__(settings, api=api)
        self._tree: dict[int, OaDepartment] | None = None
        self._paths: dict[int, str] = {}
        self._named_leaders: dict[int, str] = {}
        self._leaders: dict[int, str] = {}

    def _departments(self) -> dict[int, OaDepartment]:
        if self._tree is not None:
            return self._tree
        root = self.settings.root_department
        data = self.api.call("GET", "cgi-bin/department/list", params={"id": root})
        found: dict[int, OaDepartment] = {}
        for raw in data.get("department") or []:
            try:
                dept_id = int(raw["id"])
                parent = int(raw.get("parentid") or 0)
            except (KeyError, TypeError, ValueError):
                raise OaApiError("wecom department/list: an entry without a numeric id") from None
            name = str(raw.get("name") or dept_id)
            found[dept_id] = OaDepartment(
                dept_id, name, None if dept_id == root else parent, int(raw.get("order") or 0)
            )
            leaders = sorted(str(u) for u in raw.get("department_leader") or [] if u)
            if leaders:
                self._named_leaders[dept_id] = leaders[0]
        if root not in found:
            raise OaApiError(f"wecom department/list: the root department {root} is missing")
        self._tree = found
        self._paths = department_paths(found)
        return found

    def departments(self, since: str | None = None) -> list[SourceDepartment]:
        tree = self._departments()
        out = []
        for dept_id in tree:
            leader = self._leaders.get(dept_id) or self._named_leaders.get(dept_id)
            out.append(
                SourceDepartment(
                    external_id=str(dept_id),
                    dn=f"dept={dept_id},o=wecom",
                    path=self._paths[dept_id],
                    manager_dn=member_dn("wecom", leader) if leader else None,
                    order=tree[dept_id].order,
                )
            )
        return out

    def user_pages(self, since: str | None = None) -> Iterator[UserPage]:
        if self.settings.member_listing == "list_id":
            yield from self._pages_by_id()
            return
        tree = self._departments()
        seen: set[str] = set()
        for dept_id in sorted(tree):
            data = self.api.call("GET", "cgi-bin/user/list", params={"department_id": dept_id})
            page = UserPage(users=[])
            for raw in data.get("userlist") or []:
                userid = str(raw.get("userid") or "")
                if not userid:
                    page.problems.append(f"department {dept_id}: a member without userid")
                    continue
                self._note_leader(raw, userid)
                if userid in seen:
                    continue
                seen.add(userid)
                page.users.append(self._map_user(raw, userid, dept_id))
            yield page

    def _pages_by_id(self) -> Iterator[UserPage]:
        """user/list_id pages (cursor; a page may hold fewer than `limit`), then user/get for
        each member in the synced tree: one call per member, the price of this listing."""
        tree = self._departments()
        seen: set[str] = set()
        cursor = ""
        while True:
            body: dict[str, Any] = {"limit": 10000}
            if cursor:
                body["cursor"] = cursor
            data = self.api.call("POST", "cgi-bin/user/list_id", body=body)
            wanted = []
            for pair in data.get("dept_user") or []:
                userid = str(pair.get("userid") or "")
                try:
                    in_tree = int(pair.get("department")) in tree
                except (TypeError, ValueError):
                    in_tree = False
                if userid and in_tree and userid not in seen:
                    seen.add(userid)
                    wanted.append(userid)
            page = UserPage(users=[])
            for userid in wanted:
                raw = self.api.call("GET", "cgi-bin/user/get", params={"userid": userid})
                self._note_leader(raw, userid)
                page.users.append(self._map_user(raw, userid, self.settings.root_department))
            yield page
            next_cursor = str(data.get("next_cursor") or "")
            if not next_cursor:
                return
            if next_cursor == cursor:
                raise OaApiError("wecom user/list_id: next_cursor did not move")
            cursor = next_cursor

    def _note_leader(self, raw: dict[str, Any], userid: str) -> None:
        departments = raw.get("department") or []
        flags = raw.get("is_leader_in_dept") or []
        for dept, flag in zip(departments, flags, strict=False):
            try:
                dept_id = int(dept)
            except (TypeError, ValueError):
                continue
            if flag == 1 and dept_id in self._paths:
                current = self._leaders.get(dept_id)
                if current is None or userid < current:
                    self._leaders[dept_id] = userid

    def _map_user(self, raw: dict[str, Any], userid: str, listed_in: int) -> SourceUser:
        try:
            main = int(raw.get("main_department") or listed_in)
        except (TypeError, ValueError):
            main = listed_in
        status = raw.get("status", 1)
        return SourceUser(
            external_id=userid,
            dn=member_dn("wecom", userid),
            username=userid,
            display_name=text(raw.get("name")) or userid,
            email=text(raw.get("email")) or text(raw.get("biz_mail")),
            phone=text(raw.get("mobile")),
            employee_id=None,
            department=self._paths.get(main) or self._paths.get(listed_in),
            disabled=status in DISABLED_STATUSES,
            modified=None,
        )
