"""Reading a DingTalk (钉钉) organisation's contacts through its server API.

The department tree is walked from the root department (1) with `topapi/v2/department/listsub`
(children only, one level per call) and `topapi/v2/department/get` (name, order, managers);
each department's members are read with
`topapi/v2/user/list` by cursor, as long as the answer says `has_more` (pages may be shorter
than asked for, so their length says nothing). A person in several departments is listed by
each and kept once. DingTalk lists only current members: a person who left is simply absent,
and the sync's reconcile and brake take it from there. A member flagged `leader` in a
department becomes that department's manager.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from idhub.adapters.oa_api import ApiRules, OaApi, OaApiError
from idhub.adapters.oa_directory import OaDirectory, UserPage, text
from idhub.config import OaSourceSettings
from idhub.core.directory.dn import MappingProblem
from idhub.core.directory.mapping import SourceDepartment, SourceUser
from idhub.core.directory.oa_mapping import OaDepartment, department_paths, member_dn

RULES = ApiRules(
    platform="dingtalk",
    # 40014 invalid access_token, 42001 access_token expired (also as a gateway sub_code).
    token_codes=frozenset({"40014", "42001", "40001"}),
    # 90018: the corporation's calls per second; 90002: this app's calls per minute.
    rate_codes=frozenset({"90018", "90002", "90006"}),
    busy_codes=frozenset({"-1"}),
)


class DingTalkDirectory(OaDirectory):
    """One configured DingTalk source (a DirectorySource for core/directory/sync.py)."""

    platform = "dingtalk"
    rules = RULES
    credentials_call = "gettoken"
    credential_names = ("appkey", "appsecret")

    def __init__(self, settings: OaSourceSettings, *, api: OaApi | None = None) -> None:
        super().__init__(settings, api=api)
        self._departments: dict[int, OaDepartment] | None = None
        self._paths: dict[int, str] = {}
        self._leaders: dict[int, str] = {}  # from members' `leader` flags
        self._named_leaders: dict[int, str] = {}  # from department/get's manager list

    # ------------------------------------------------------------ departments

    def _tree(self) -> dict[int, OaDepartment]:
        if self._departments is not None:
            return self._departments
        root_id = self.settings.root_department
        found = {root_id: self._detail(root_id, None)}
        queue = [root_id]
        while queue:
            parent = queue.pop(0)
            data = self.api.call("POST", "topapi/v2/department/listsub", body={"dept_id": parent})
            for raw in data.get("result") or []:
                try:
                    dept_id = int(raw["dept_id"])
                except (KeyError, TypeError, ValueError):
                    raise OaApiError(
                        "dingtalk department/listsub: an entry without dept_id"
                    ) from None
                if dept_id in found:
                    continue  # a cycle or a repeat: each department is walked once
                found[dept_id] = self._detail(dept_id, parent)
                queue.append(dept_id)
        self._departments = found
        self._paths = department_paths(found)
        return found

    def _detail(self, dept_id: int, parent: int | None) -> OaDepartment:
        """department/get: the name, the order among siblings and the named managers (listsub
        gives neither of the last two)."""
        data = self.api.call("POST", "topapi/v2/department/get", body={"dept_id": dept_id})
        result = data.get("result") or {}
        managers = sorted(str(u) for u in result.get("dept_manager_userid_list") or [] if u)
        if managers:
            self._named_leaders[dept_id] = managers[0]
        try:
            order = int(result.get("order") or 0)
        except (TypeError, ValueError):
            order = 0
        return OaDepartment(dept_id, str(result.get("name") or dept_id), parent, order)

    def departments(self, since: str | None = None) -> list[SourceDepartment]:
        tree = self._tree()
        return [
            SourceDepartment(
                external_id=str(dept_id),
                dn=f"dept={dept_id},o=dingtalk",
                path=self._paths[dept_id],
                manager_dn=_manager(self._leaders.get(dept_id) or self._named_leaders.get(dept_id)),
                order=department.order,
            )
            for dept_id, department in tree.items()
        ]

    # ------------------------------------------------------------ users

    def user_pages(self, since: str | None = None) -> Iterator[UserPage]:
        tree = self._tree()
        seen: set[str] = set()
        for dept_id in tree:
            cursor: int = 0
            while True:
                data = self.api.call(
                    "POST",
                    "topapi/v2/user/list",
                    body={"dept_id": dept_id, "cursor": cursor, "size": self.settings.page_size},
                )
                result = data.get("result") or {}
                page = UserPage(users=[])
                for raw in result.get("list") or []:
                    userid = str(raw.get("userid") or "")
                    if not userid:
                        page.problems.append(f"department {dept_id}: a member without userid")
                        continue
                    if raw.get("leader") is True:
                        # Several leaders: the smallest userid heads it, the same every run.
                        current = self._leaders.get(dept_id)
                        if current is None or userid < current:
                            self._leaders[dept_id] = userid
                    if userid in seen:
                        continue
                    seen.add(userid)
                    try:
                        page.users.append(self._map_user(raw, dept_id))
                    except MappingProblem as exc:
                        page.problems.append(str(exc))
                yield page
                if not result.get("has_more"):
                    break
                next_cursor = result.get("next_cursor")
                if not isinstance(next_cursor, int) or next_cursor <= cursor:
                    raise OaApiError(
                        f"dingtalk user/list: department {dept_id} says has_more "
                        "without a next_cursor past the last one"
                    )
                cursor = next_cursor

    def _map_user(self, raw: dict[str, Any], listed_in: int) -> SourceUser:
        userid = str(raw["userid"])
        departments = [d for d in _ints(raw.get("dept_id_list")) if d in self._paths]
        home = departments[0] if departments else listed_in
        return SourceUser(
            external_id=userid,
            dn=member_dn("dingtalk", userid),
            username=userid,
            display_name=text(raw.get("name")) or userid,
            email=text(raw.get("email")) or text(raw.get("org_email")),
            phone=text(raw.get("mobile")),
            employee_id=text(raw.get("job_number")),
            department=self._paths.get(home),
            # DingTalk lists only people in the organisation; `active` false means "has not
            # activated the app yet", who is still an employee.
            disabled=False,
            modified=None,
            # Sign-in with DingTalk finds the person by unionid (adapters/upstream_dingtalk.py).
            attributes=tuple(
                (key, value)
                for key, value in (
                    ("unionid", text(raw.get("unionid"))),
                    ("title", text(raw.get("title"))),
                )
                if value is not None
            ),
        )


def _manager(userid: str | None) -> str | None:
    return member_dn("dingtalk", userid) if userid else None


def _ints(values: Any) -> list[int]:
    out = []
    for value in values or []:
        try:
            out.append(int(value))
        except (TypeError, ValueError):
            continue
    return out
