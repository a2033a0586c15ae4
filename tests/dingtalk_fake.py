"""A local DingTalk server-API fake for the contacts sync tests and the bench.

It answers the calls idhub makes (gettoken, topapi/v2/department/get, /listsub,
topapi/v2/user/list) in the shapes of DingTalk's published API: errors as `errcode` in HTTP
200 bodies, gateway errors as errcode 88 with a sub_code, cursor paging with has_more and
next_cursor. Tests script its realities: `fake.script(path, [...])` queues answers that the
next calls to `path` get first (an errcode, a gateway sub_code, an HTTP status), `fake.expire`
invalidates issued tokens early, `fake.page_cap` serves fewer members than asked for,
`fake.fail_always` makes a path fail on every call. `fake.calls` counts requests per path.

Sign-in with DingTalk (its new API's shapes): the login page `oauth2/auth` "scans" for
`fake.scan_as` (a userid; any string, a member or not) by redirecting back to `redirect_uri`
with a fresh `authCode` and the `state`, or with no code when `scan_as` is None (the person
cancelled); codes are single use and live `code_ttl` seconds. `v1.0/oauth2/userAccessToken`
answers `accessToken` (errors as HTTP 400 `{"code", "message"}`), `v1.0/contact/users/me`
the person's `unionId` ("u" + the userid reversed, as `user/list` gives it).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

APP_KEY = "dingidhubtestkey"
APP_SECRET = "dingtalk-test-secret-5f2c9a"


@dataclass(frozen=True)
class Redirect:
    """An answer that sends the browser on (a login page's)."""

    location: str


def union_id(userid: str) -> str:
    return "u" + userid[::-1]


@dataclass
class Dept:
    id: int
    name: str
    parent: int | None
    order: int = 0


@dataclass
class Member:
    userid: str
    name: str
    depts: list[int]
    mobile: str | None = None
    email: str | None = None
    job_number: str | None = None
    title: str = ""
    leader_in: set[int] = field(default_factory=set)
    active: bool = True
    admin: bool = False

    def as_json(self, listed_in: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "userid": self.userid,
            "unionid": union_id(self.userid),
            "name": self.name,
            "title": self.title,
            "dept_id_list": list(self.depts),
            "leader": listed_in in self.leader_in,
            "active": self.active,
            "admin": self.admin,
            "job_number": self.job_number or "",
        }
        if self.mobile:
            out["mobile"] = self.mobile
        if self.email:
            out["email"] = self.email
        return out


@dataclass
class Org:
    depts: dict[int, Dept]
    members: dict[str, Member]


def company(users: int = 30, departments: int = 6) -> Org:
    """/示例集团 with `departments - 1` departments below it (the first two have children),
    and `users` members spread over them; each department's first member leads it."""
    depts = {1: Dept(1, "示例集团", None)}
    for i in range(2, departments + 1):
        parent = 1 if i <= 3 or departments <= 3 else 2 + (i % 2)
        depts[i] = Dept(i, f"部门{i:04d}", parent, order=i)
    members: dict[str, Member] = {}
    ids = sorted(depts)
    for n in range(users):
        dept = ids[n % len(ids)]
        userid = f"dt{n:06d}"
        members[userid] = Member(
            userid=userid,
            name=f"员工{n:06d}",
            depts=[dept],
            mobile=f"138{n:08d}",
            email=f"{userid}@example.com",
            job_number=f"E{n:06d}",
            leader_in={dept} if n < len(ids) else set(),
        )
    return Org(depts, members)


class DingTalkFake:
    # Login pages a browser is sent to (no token needed).
    login_pages: tuple[str, ...] = ("oauth2/auth",)

    def __init__(self, org: Org) -> None:
        self.scan_as: str | None = None
        self.code_ttl = 300.0
        self._codes: dict[str, tuple[str, float]] = {}
        self._user_tokens: dict[str, str] = {}
        self.logins: list[dict[str, str]] = []  # the query of each login page visit
        self.issued: list[str] = []  # codes and user tokens handed out (never to be logged)
        self.org = org
        self.calls: Counter[str] = Counter()
        self.page_cap: int | None = None
        self.fail_always: dict[str, dict[str, Any]] = {}
        self._scripts: dict[str, list[Any]] = {}
        self._tokens: set[str] = set()
        self._issued = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        # serve_forever looks for a shutdown request between polls: at its default 0.5 s,
        # every stop waited ~0.5 s (two fakes in each upstream test).
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> DingTalkFake:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def script(self, path: str, answers: list[Any]) -> None:
        """Queue answers for the next calls to `path`: an int errcode, ("sub", code) for a
        gateway 88 with that sub_code, ("http", status), or ("raw", bytes) for a non-JSON body."""
        with self._lock:
            self._scripts.setdefault(path, []).extend(answers)

    def expire(self) -> None:
        """Every token issued so far stops working (DingTalk may do this before 7200 s)."""
        with self._lock:
            self._tokens.clear()

    # ------------------------------------------------------------ the API

    def answer(
        self,
        path: str,
        query: dict[str, str],
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        if path in self.login_pages:
            with self._lock:
                self.calls[path] += 1
                self.logins.append(dict(query))
            return self.login_page(path, query)
        with self._lock:
            self.calls[path] += 1
            queued = self._scripts.get(path)
            scripted = queued.pop(0) if queued else None
        if path in self.fail_always:
            return 200, self.fail_always[path]
        if isinstance(scripted, tuple) and scripted[0] == "raw":
            return 200, scripted[1]  # a body that is not JSON (a captive portal, a proxy page)
        if isinstance(scripted, tuple) and scripted[0] == "http":
            return int(scripted[1]), {"message": "bad gateway"}
        if isinstance(scripted, tuple) and scripted[0] == "sub":
            return 200, {
                "errcode": 88,
                "errmsg": "gateway",
                "sub_code": str(scripted[1]),
                "sub_msg": "gateway says " + str(scripted[1]),
            }
        if isinstance(scripted, int):
            return 200, {"errcode": scripted, "errmsg": f"scripted {scripted}"}
        if path.startswith("v1.0/"):
            return self.new_api(path, body, headers or {})
        return self.api(path, query, body)

    # ------------------------------------------------------------ sign-in

    def issue_code(self, userid: str) -> str:
        code = secrets.token_hex(16)
        with self._lock:
            self._codes[code] = (userid, time.monotonic())
            self.issued.append(code)
        return code

    def take_code(self, code: str) -> str | None:
        """The userid a code was issued for, once; None when unknown, used or expired."""
        with self._lock:
            found = self._codes.pop(code, None)
        if found is None or time.monotonic() - found[1] > self.code_ttl:
            return None
        return found[0]

    def login_page(self, path: str, query: dict[str, str]) -> tuple[int, Any]:
        if (
            query.get("client_id") != APP_KEY
            or query.get("response_type") != "code"
            or query.get("scope") != "openid"
            or not query.get("redirect_uri")
        ):
            return 400, {"code": "invalidParameter", "message": "参数错误"}
        back = {"state": query.get("state", "")}
        if self.scan_as is not None:
            back["authCode"] = self.issue_code(self.scan_as)
        return 302, Redirect(f"{query['redirect_uri']}?{urlencode(back)}")

    def new_api(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
        """api.dingtalk.com: errors as HTTP 4xx with code and message."""
        if path == "v1.0/oauth2/userAccessToken":
            if body.get("clientId") != APP_KEY or body.get("clientSecret") != APP_SECRET:
                return 400, {"code": "InvalidClient", "message": "clientId 或 clientSecret 错误"}
            if body.get("grantType") != "authorization_code":
                return 400, {"code": "InvalidGrantType", "message": "grantType 错误"}
            userid = self.take_code(str(body.get("code") or ""))
            if userid is None:
                return 400, {"code": "InvalidAuthCode", "message": "authCode 无效或已过期"}
            token = secrets.token_hex(16)
            with self._lock:
                self._user_tokens[token] = userid
                self.issued.append(token)
            return 200, {
                "accessToken": token,
                "refreshToken": secrets.token_hex(16),
                "expireIn": 7200,
                "corpId": "dingidhubcorp",
            }
        if path == "v1.0/contact/users/me":
            lowered = {k.lower(): v for k, v in headers.items()}
            with self._lock:
                userid = self._user_tokens.get(lowered.get("x-acs-dingtalk-access-token", ""))
            if userid is None:
                return 401, {"code": "InvalidAuthentication", "message": "不合法的access_token"}
            member = self.org.members.get(userid)
            return 200, {
                "nick": member.name if member else userid,
                "unionId": union_id(userid),
                "openId": "o" + userid,
                "stateCode": "86",
                **({"mobile": member.mobile} if member and member.mobile else {}),
            }
        return 404, {"code": "NotFound", "message": "no such api"}

    def issue_token(self) -> str:
        with self._lock:
            self._issued += 1
            token = f"token-{self._issued}"
            self._tokens.add(token)
        return token

    def token_valid(self, query: dict[str, str]) -> bool:
        with self._lock:
            return query.get("access_token") in self._tokens

    def api(self, path: str, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        if path == "gettoken":
            if query.get("appkey") != APP_KEY or query.get("appsecret") != APP_SECRET:
                return 200, {"errcode": 40089, "errmsg": "invalid appkey or appsecret"}
            token = self.issue_token()
            return 200, {"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200}
        if not self.token_valid(query):
            return 200, {"errcode": 40014, "errmsg": "不合法的access_token"}
        if path == "topapi/v2/department/get":
            dept = self.org.depts.get(int(body.get("dept_id", 0)))
            if dept is None:
                return 200, {"errcode": 60003, "errmsg": "部门不存在"}
            result = {
                "dept_id": dept.id,
                "name": dept.name,
                "order": dept.order,
                "dept_manager_userid_list": sorted(
                    m.userid for m in self.org.members.values() if dept.id in m.leader_in
                ),
            }
            if dept.parent is not None:
                result["parent_id"] = dept.parent
            return 200, {"errcode": 0, "errmsg": "ok", "result": result}
        if path == "topapi/v2/department/listsub":
            parent = int(body.get("dept_id", 0))
            if parent not in self.org.depts:
                return 200, {"errcode": 60003, "errmsg": "部门不存在"}
            children = [
                {"dept_id": d.id, "name": d.name, "parent_id": d.parent}
                for d in self.org.depts.values()
                if d.parent == parent
            ]
            return 200, {"errcode": 0, "errmsg": "ok", "result": children}
        if path == "topapi/v2/user/list":
            return 200, self._user_list(body)
        return 404, {"errcode": 404, "errmsg": "no such api"}

    def _user_list(self, body: dict[str, Any]) -> dict[str, Any]:
        dept = int(body.get("dept_id", 0))
        size = int(body.get("size", 0))
        cursor = int(body.get("cursor", 0))
        if dept not in self.org.depts:
            return {"errcode": 60003, "errmsg": "部门不存在"}
        if not 1 <= size <= 100:
            return {"errcode": 40035, "errmsg": "size 不合法"}
        if self.page_cap is not None:
            size = min(size, self.page_cap)
        members = sorted(
            (m for m in self.org.members.values() if dept in m.depts), key=lambda m: m.userid
        )
        page = members[cursor : cursor + size]
        result: dict[str, Any] = {
            "has_more": cursor + size < len(members),
            "list": [m.as_json(dept) for m in page],
        }
        if result["has_more"]:
            result["next_cursor"] = cursor + size
        return {"errcode": 0, "errmsg": "ok", "result": result, "request_id": "fake"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real servers do
            disable_nagle_algorithm = True  # headers and body go out at once

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {}
                status, data = fake.answer(
                    parts.path.lstrip("/"), query, body, dict(self.headers.items())
                )
                if isinstance(data, Redirect):
                    self.send_response(302)
                    self.send_header("Location", data.location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if isinstance(data, bytes):
                    out = data
                else:
                    out = json.dumps(data, ensure_ascii=False).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = _serve
            do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def running(org: Org) -> Iterator[DingTalkFake]:
    fake = DingTalkFake(org).start()
    try:
        yield fake
    finally:
        fake.stop()
