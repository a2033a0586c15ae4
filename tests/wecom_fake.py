"""A local WeCom server-API fake (cgi-bin/gettoken, department/list, user/list) in the shapes
of WeCom's published API, with the same scripting as tests/dingtalk_fake.py (errcode in 200
bodies, HTTP statuses, tokens expired early, `fail_always`), sharing its HTTP plumbing.

Sign-in with WeCom: the QR code page `wwlogin/sso/login` (login_type CorpApp) and the in-app
page `connect/oauth2/authorize` (scope snsapi_base) redirect back with a single-use `code`
for `fake.scan_as`; `cgi-bin/auth/getuserinfo` answers its `userid`, or an `openid` for a
visitor listed in `fake.outsiders` (not a member), and errcode 40029 for a bad code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from tests.dingtalk_fake import DingTalkFake, Org, Redirect
from tests.dingtalk_fake import company as dingtalk_company

CORP_ID = "wwidhubtestcorp"
CORP_SECRET = "wecom-test-secret-91be07"
AGENT_ID = "1000002"


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
    login_pages = ("wwlogin/sso/login", "connect/oauth2/authorize")

    def __init__(self, org: Org) -> None:
        super().__init__(org)
        self.outsiders: set[str] = set()

    def login_page(self, path: str, query: dict[str, str]) -> tuple[int, Any]:
        if path == "wwlogin/sso/login":
            wanted = {"login_type": "CorpApp", "appid": CORP_ID, "agentid": AGENT_ID}
        else:
            wanted = {"appid": CORP_ID, "agentid": AGENT_ID, "scope": "snsapi_base"}
        if any(query.get(k) != v for k, v in wanted.items()) or not query.get("redirect_uri"):
            return 400, {"errcode": 40001, "errmsg": "invalid parameter"}
        back = {"state": query.get("state", "")}
        if self.scan_as is not None:
            back["code"] = self.issue_code(self.scan_as)
            back["appid"] = CORP_ID
        return 302, Redirect(f"{query['redirect_uri']}?{urlencode(back)}")

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
        if path == "cgi-bin/auth/getuserinfo":
            userid = self.take_code(query.get("code") or "")
            if userid is None:
                return 200, {"errcode": 40029, "errmsg": "invalid code"}
            if userid in self.outsiders:
                return 200, {"errcode": 0, "errmsg": "ok", "openid": "o" + userid}
            return 200, {"errcode": 0, "errmsg": "ok", "userid": userid, "user_ticket": "t"}
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
