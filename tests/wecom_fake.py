"""A local WeCom server-API fake (cgi-bin/gettoken, department/list, user/list) in the shapes
of WeCom's published API, with the same scripting as tests/dingtalk_fake.py (errcode in 200
bodies, HTTP statuses, tokens expired early, `fail_always`), sharing its HTTP plumbing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.dingtalk_fake import DingTalkFake, Org
from tests.dingtalk_fake import company as dingtalk_company

CORP_ID = "wwidhubtestcorp"
CORP_SECRET = "wecom-test-secret-91be07"


@dataclass
class WeComOrg(Org):
    # userid -> status (1 active, 2 disabled, 4 not activated, 5 resigned); default 1.
    status: dict[str, int] = field(default_factory=dict)
    # Since 2022 new apps get no mobile/email without consent: these members come without.
    hidden_contact: set[str] = field(default_factory=set)


def company(users: int = 30, departments: int = 6) -> WeComOrg:
    base = dingtalk_company(users, departments)
    return WeComOrg(base.depts, base.members)


class WeComFake(DingTalkFake):
    org: WeComOrg

    def api(self, path: str, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        if path == "cgi-bin/gettoken":
            if query.get("corpid") != CORP_ID or query.get("corpsecret") != CORP_SECRET:
                return 200, {"errcode": 40001, "errmsg": "invalid credential"}
            token = self.issue_token()
            return 200, {"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200}
        if not self.token_valid(query):
            return 200, {"errcode": 40014, "errmsg": "invalid access_token"}
        if path == "cgi-bin/department/list":
            root = int(query.get("id") or 1)
            wanted = self._below(root)
            return 200, {
                "errcode": 0,
                "errmsg": "ok",
                "department": [
                    {
                        "id": d.id,
                        "name": d.name,
                        "parentid": d.parent or 0,
                        "order": d.order,
                        "department_leader": sorted(
                            m.userid for m in self.org.members.values() if d.id in m.leader_in
                        ),
                    }
                    for d in self.org.depts.values()
                    if d.id in wanted
                ],
            }
        if path == "cgi-bin/user/list":
            dept = int(query.get("department_id") or 0)
            if dept not in self.org.depts:
                return 200, {"errcode": 60123, "errmsg": "invalid party id"}
            return 200, {
                "errcode": 0,
                "errmsg": "ok",
                "userlist": [self._user(m) for m in self.org.members.values() if dept in m.depts],
            }
        if path == "cgi-bin/user/list_id":
            return 200, self._list_id(body)
        if path == "cgi-bin/user/get":
            member = self.org.members.get(query.get("userid") or "")
            if member is None:
                return 200, {"errcode": 60111, "errmsg": "userid not found"}
            return 200, {"errcode": 0, "errmsg": "ok", **self._user(member)}
        return 404, {"errcode": 404, "errmsg": "no such api"}

    def _list_id(self, body: dict[str, Any]) -> dict[str, Any]:
        limit = int(body.get("limit") or 1000)
        if not 1 <= limit <= 10000:
            return {"errcode": 40058, "errmsg": "limit out of range"}
        if self.page_cap is not None:
            limit = min(limit, self.page_cap)
        pairs = [
            {"userid": m.userid, "department": d}
            for m in sorted(self.org.members.values(), key=lambda m: m.userid)
            for d in m.depts
        ]
        start = int(body.get("cursor") or "0")
        out: dict[str, Any] = {
            "errcode": 0,
            "errmsg": "ok",
            "dept_user": pairs[start : start + limit],
        }
        if start + limit < len(pairs):
            out["next_cursor"] = str(start + limit)
        return out

    def _below(self, root: int) -> set[int]:
        out = {root}
        grew = True
        while grew:
            more = {d.id for d in self.org.depts.values() if d.parent in out} - out
            out |= more
            grew = bool(more)
        return out

    def _user(self, member: Any) -> dict[str, Any]:
        out: dict[str, Any] = {
            "userid": member.userid,
            "name": member.name,
            "department": list(member.depts),
            "main_department": member.depts[0],
            "is_leader_in_dept": [1 if d in member.leader_in else 0 for d in member.depts],
            "position": member.title,
            "status": self.org.status.get(member.userid, 1),
        }
        if member.userid not in self.org.hidden_contact:
            if member.mobile:
                out["mobile"] = member.mobile
            if member.email:
                out["biz_mail"] = member.email
        return out
