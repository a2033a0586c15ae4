"""What keeps a server worker's memory down (issue 15): the parts it may never use are imported
when first used, the role graph holds one string per user, the warm-up gives the same roles as
computing them on demand, and a reload leaves the old engine to be freed."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest

from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.core.authz.engine import Engine
from idhub.core.authz.model import (
    AssignmentRule,
    Catalog,
    DirectorySnapshot,
    DirectoryUser,
    Link,
    PolicySet,
    Rule,
    Source,
    parse_scope,
    user_subject,
)
from idhub.core.heap import give_back_freed_memory
from tests.conftest import REPO

SRC_DIR = Path(__file__).resolve().parents[1] / "src"
# What a worker that never answers SAML nor migrates must not have imported at start.
LAZY = ("saml2", "xmlschema", "xmlsec", "lxml", "alembic")
# Nor, one that is never provisioned by SCIM, never sees a passkey nor draws an authenticator
# app's QR code, and runs on SQLite.
LAZY_TOO = ("scim2_models", "pydantic", "webauthn", "cbor2", "psycopg", "segno")

# Nor, one that never sends a back-channel message, nor signs anyone in through another
# provider, nor syncs an OA platform: httpx (with its command line's rich, click and Pygments)
# and authlib's client on httpx2.
LAZY_HTTP = ("httpx", "httpx2", "rich", "click", "pygments", "authlib.integrations.httpx_client")

WORKER = """
import json, os, sys
from idhub.web import asgi
app = asgi.create()
services = app.state.services
services.authz.load_for_serving()
before = [m for m in {lazy!r} if m in sys.modules]
before_too = [m for m in {lazy_too!r} if m in sys.modules]
before_http = [m for m in {lazy_http!r} if m in sys.modules]
# First use: SCIM discovery and a SCIM document, a passkey ceremony.
from idhub.core.scim import discovery, resources
schemas = [d["id"] for d in discovery.schemas("http://x/scim/v2")]
user_doc = resources.normalise("User", {{"userName": "Zoe", "active": "True"}})
ceremony = services.passkeys.begin_authentication(None)
# First use: an authenticator app's QR code.
from idhub.web.account import qr_svg
qr = qr_svg("otpauth://totp/idhub:zoe?secret=JBSWY3DPEHPK3PXP&issuer=idhub")
# First use: the pysaml2 server and the IdP metadata.
idp = services.saml_idp
server = idp.server()
metadata = idp.metadata_xml()
print(json.dumps({{
    "before": before,
    "after": [m for m in {lazy!r} if m in sys.modules],
    "server": type(server).__name__,
    "metadata": metadata.startswith("<") and "IDPSSODescriptor" in metadata,
    "allowed": services.authz.engine.check("user:alice", "oa", "notice", "read", "", "").allowed,
    "before_too": before_too,
    "after_too": [m for m in {lazy_too!r} if m in sys.modules],
    "schemas": schemas,
    "active": user_doc["active"],
    "challenge": bool(ceremony.options.get("challenge")),
    "qr": qr.startswith("<svg") and "<path" in qr,
    "before_http": before_http,
    **first_http_uses(),
    "after_http": [m for m in {lazy_http!r} if m in sys.modules],
}}))
"""

# The first use of each HTTP client a worker may hold, against a small server on 127.0.0.1.
HTTP_USES = """
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Answers(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, document):
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        base = "http://127.0.0.1:%d" % self.server.server_port
        if self.path.startswith("/.well-known/openid-configuration"):
            return self.answer(200, {{
                "issuer": base, "authorization_endpoint": base + "/authorize",
                "token_endpoint": base + "/token", "jwks_uri": base + "/jwks",
            }})
        self.answer(200, {{"errcode": 0, "path": self.path.split("?")[0]}})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/token":
            return self.answer(400, {{"error": "invalid_grant"}})
        if self.path == "/v1.0/oauth2/userAccessToken":
            return self.answer(400, {{"code": "invalidAuthCode"}})
        self.answer(200, {{}})


def refused(call):
    from idhub.core.upstream import UpstreamFailed

    try:
        call()
    except UpstreamFailed as exc:
        return exc.code
    return None


def first_http_uses():
    from idhub.adapters.cas_callback import HttpProxyCallback
    from idhub.adapters.oa_api import ApiRules, OaApi
    from idhub.adapters.saml_store import HttpSamlLogoutChannel
    from idhub.adapters.upstream_dingtalk import DingTalkSignIn
    from idhub.adapters.upstream_oidc import OidcUpstream
    from idhub.config import OaSourceSettings
    from idhub.config.settings import UpstreamOidcSettings
    from idhub.core.saml import BINDING_SOAP, Endpoint
    from idhub.core.secret import Secret

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = "http://127.0.0.1:%d" % server.server_port
    made = [
        HttpProxyCallback(), HttpSamlLogoutChannel(),
        OidcUpstream(UpstreamOidcSettings("up", base, "client", Secret("s"))),
        DingTalkSignIn(OaSourceSettings("dingtalk", "d", base, "key", Secret("s"), api_url=base)),
        OaApi(OaSourceSettings("wecom", "w", base, "corp", Secret("s")),
              ApiRules("wecom", frozenset(), frozenset(), frozenset()), lambda api: ("t", 7200.0)),
    ]
    built = [m for m in {lazy_http!r} if m in sys.modules]
    callback, channel, oidc, dingtalk, api = made
    try:
        return {{
            "http_built": built,
            "pgt_delivered": callback.deliver(base + "/pgt", pgt_id="PGT-1", pgt_iou="PGTIOU-1"),
            "saml_sent": channel.send(Endpoint(BINDING_SOAP, base + "/slo"), "<LogoutRequest/>"),
            "oidc_token_endpoint": oidc.discovery().token_endpoint == base + "/token",
            "oidc_code": refused(lambda: oidc.complete(
                redirect_uri=base + "/cb", params={{"code": "c"}}, nonce="n", code_verifier="v" * 43
            )),
            "dingtalk_code": refused(lambda: dingtalk.complete(
                redirect_uri=base + "/cb", params={{"authCode": "c"}}, nonce="", code_verifier=""
            )),
            "oa_answer": api.call("GET", "ping", authenticated=False)["path"],
        }}
    finally:
        for client in (callback, oidc, dingtalk, api):
            client.close()
        server.shutdown()
"""


def run_worker(tmp_path: Path) -> dict[str, object]:
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC_DIR),
        "IDHUB_DATABASE_URL": f"sqlite:///{tmp_path / 'idhub.db'}",
        "IDHUB_POLICY_DIR": str(REPO / "policies"),
        "IDHUB_SECRET_KEY": "worker-memory-test-key-0123456789abcdef0123",
        "IDHUB_VAR_DIR": str(tmp_path / "var"),
        "IDHUB_ISSUER": "http://127.0.0.1:26500",
    }
    subprocess.run(
        [sys.executable, "-m", "idhub", "init"],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=120,
    )
    names = {"lazy": LAZY, "lazy_too": LAZY_TOO, "lazy_http": LAZY_HTTP}
    # The helpers come first; they import nothing until called (after the worker's "before").
    script = HTTP_USES.format(**names) + WORKER.format(**names)
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One fresh worker process for the import tests (each run costs ~10 s here)."""
    return run_worker(tmp_path_factory.mktemp("worker"))


def test_a_worker_imports_pysaml2_lxml_xmlsec_and_alembic_only_when_used(
    worker: dict[str, object],
) -> None:
    result = worker
    assert result["before"] == [], "imported at worker start"
    # Used for the first time, they load and work.
    assert result["server"] == "Server"
    assert result["metadata"] is True
    assert "saml2" in result["after"]  # type: ignore[operator]


def test_a_worker_on_sqlite_imports_scim_models_webauthn_segno_and_psycopg_only_when_used(
    worker: dict[str, object],
) -> None:
    result = worker
    assert result["before_too"] == [], "imported at worker start"
    # Used for the first time, they load and work; psycopg is never needed on SQLite.
    assert result["after_too"] == ["scim2_models", "pydantic", "webauthn", "cbor2", "segno"]
    assert result["schemas"] == [
        "urn:ietf:params:scim:schemas:core:2.0:User",
        "urn:ietf:params:scim:schemas:core:2.0:Group",
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
    ]
    assert result["active"] is True
    assert result["challenge"] is True
    assert result["qr"] is True


def test_a_worker_imports_httpx_and_authlibs_client_only_when_first_used(
    worker: dict[str, object],
) -> None:
    result = worker
    assert result["before_http"] == [], "imported at worker start"
    # Building the clients does not import them either; the first call does, and works.
    assert result["http_built"] == []
    assert result["pgt_delivered"] is True
    assert result["saml_sent"] is None
    assert result["oidc_token_endpoint"] is True
    assert result["oidc_code"] == "code_refused"
    assert result["dingtalk_code"] == "code_refused"
    assert result["oa_answer"] == "/ping"
    after = result["after_http"]
    assert isinstance(after, list)
    assert {"httpx", "authlib.integrations.httpx_client"} <= set(after)


def _engine_with_groups(users: int = 30) -> Engine:
    source = Source("assignments.yaml", 1)
    policy = PolicySet(
        root="t",
        rules=(
            Rule("staff", "oa", "doc", "read", parse_scope("dept"), "allow", Source("p.csv", 1)),
            Rule("lead", "*", "doc", "approve", parse_scope("all"), "allow", Source("p.csv", 2)),
        ),
        links=(Link("lead", "staff", "oa", source),),
        assignments=(
            AssignmentRule("group", "staff", "oa", source, "g1"),
            AssignmentRule("group", "lead", "oa", source, "g2"),
            AssignmentRule("department", "staff", "reimburse", source, "/hq"),
            AssignmentRule("manager", "lead", "reimburse", source),
        ),
        catalog=Catalog(),
        file_hashes={"p.csv": "1"},
    )
    people = {
        f"u{i}": DirectoryUser(
            f"u{i}",
            f"s{i}",
            "/hq/a" if i % 2 else "/hq/b",
            False,
            tuple(g for g, on in (("g1", i % 3 != 0), ("g2", i % 5 == 0)) if on),
        )
        for i in range(users)
    }
    directory = DirectorySnapshot(
        users=people,
        departments={"/hq": "u0", "/hq/a": "u1", "/hq/b": None},
        groups=frozenset({"g1", "g2"}),
        version="t",
    )
    return Engine(policy, directory, ("oa", "reimburse"))


def test_derived_links_share_one_subject_string_per_user() -> None:
    engine = _engine_with_groups()
    by_user: dict[str, list[str]] = {}
    for link in engine.links:
        by_user.setdefault(link.member, []).append(link.member)
    # u15 is in g2 and in /hq/a (under /hq): two derived links, one string.
    members = by_user[user_subject("u15")]
    assert len(members) == 2
    assert all(m is members[0] for m in members)


def test_an_engine_keeps_its_links_as_numbers_and_makes_a_link_when_asked() -> None:
    engine = _engine_with_groups()
    first = engine.links[0]
    # The static line, as written; no `Link` is kept, each is made on demand.
    assert first == Link("lead", "staff", "oa", Source("assignments.yaml", 1))
    assert engine.links[0] is not first
    # u5 is in g1 and g2: its two links in oa, in the order the rules were written.
    assert [link for _, link in engine.links_from(user_subject("u5"), "oa")] == [
        Link(
            user_subject("u5"),
            "staff",
            "oa",
            Source("assignments.yaml", 1),
            None,
            "group g1 (assignments.yaml:1)",
        ),
        Link(
            user_subject("u5"),
            "lead",
            "oa",
            Source("assignments.yaml", 1),
            None,
            "group g2 (assignments.yaml:1)",
        ),
    ]


def test_warm_keeps_each_users_roles_as_one_flat_row() -> None:
    engine = _engine_with_groups()
    engine.warm()
    row = engine._subject_roles["oa"][user_subject("u15")]
    # role, anchors, role, anchors: ~100 bytes less than a dict per user and domain
    assert isinstance(row, tuple)
    assert dict(zip(row[::2], row[1::2], strict=True)) == {"staff": ("/hq/a",), "lead": ("/hq/a",)}
    assert sys.getsizeof(row) < sys.getsizeof(engine.roles_of(user_subject("u15"), "oa"))


def test_warm_gives_every_user_the_roles_computed_on_demand() -> None:
    warm, cold = _engine_with_groups(), _engine_with_groups()
    warm.warm()
    for username in cold.directory.users:
        for domain in ("oa", "reimburse", "elsewhere"):
            subject = user_subject(username)
            assert warm.roles_of(subject, domain) == cold.roles_of(subject, domain)
            assert warm.roles_for(username, domain) == cold.roles_for(username, domain)
    assert warm.roles_of(user_subject("u15"), "oa") == {"staff": ("/hq/a",), "lead": ("/hq/a",)}
    # A user met only after the warm-up (not in the directory) still gets theirs.
    assert warm.roles_of(user_subject("stranger"), "oa") == {}


def test_malloc_trim_is_available_here() -> None:
    # glibc on this box: the trim runs (elsewhere it would return False and do nothing).
    assert give_back_freed_memory() is True


def test_a_reload_leaves_the_old_engine_to_be_freed(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    tmp_path: Path,
) -> None:
    settings = make_settings(db_url, env={"IDHUB_POLICY_DIR": str(REPO / "policies")})
    services = make_services(settings)
    services.migrate()
    authz = services.authz
    old = weakref.ref(authz.engine)
    # A new directory version forces a new engine (same policy files).
    outcome = authz.reload(trigger="test")
    assert outcome.ok
    authz.warm_once()
    gc.collect()
    assert authz.engine is not None
    assert old() is None
