"""The demo company behind `idhub demo` and `idhub init --demo`: a small but realistic one to try
idhub on.

Departments, five people with known passwords, groups, and the two demo systems `oa` and
`reimburse` registered as confidential first-party clients with redirect URIs on 127.0.0.1.
Running it again changes nothing that exists (passwords and client secrets are not reset).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from idhub.core.audit import Actor, EventType

if TYPE_CHECKING:
    from collections.abc import Callable

    from idhub.bootstrap import Services

DEPARTMENTS = (
    "/总部",
    "/总部/财务部",
    "/总部/财务部/费用核算组",
    "/总部/华东区",
    "/总部/华东区/销售一部",
    "/总部/信息技术部",
    "/总部/审计部",
    # The accounting archive's keepers (examples/reimburse files vouchers there).
    "/总部/行政部",
    "/总部/行政部/档案室",
)
ADMIN_GROUP = "系统管理员"


@dataclass(frozen=True)
class DemoUser:
    username: str
    name: str
    department: str
    password: str
    email: str
    phone: str
    employee_id: str
    groups: tuple[str, ...] = ()
    manages: str | None = None


USERS = (
    DemoUser(
        "alice",
        "王小丽",
        "/总部/华东区/销售一部",
        "alice-demo-1",
        "alice@example.com",
        "13800000001",
        "E1001",
    ),
    DemoUser(
        "bob",
        "李强",
        "/总部/华东区",
        "bob-demo-1",
        "bob@example.com",
        "13800000002",
        "E1002",
        manages="/总部/华东区",
    ),
    DemoUser(
        "carol",
        "陈静",
        "/总部/财务部/费用核算组",
        "carol-demo-1",
        "carol@example.com",
        "13800000003",
        "E1003",
        groups=("财务审核组",),
    ),
    DemoUser(
        "dave",
        "赵磊",
        "/总部/信息技术部",
        "dave-demo-1",
        "dave@example.com",
        "13800000004",
        "E1004",
        groups=(ADMIN_GROUP,),
    ),
    DemoUser(
        "grace",
        "周敏",
        "/总部/审计部",
        "grace-demo-1",
        "grace@example.com",
        "13800000005",
        "E1005",
        groups=("审计组",),
    ),
    DemoUser(
        "kate",
        "孙婷",
        "/总部/行政部/档案室",
        "kate-demo-1",
        "kate@example.com",
        "13800000006",
        "E1006",
        groups=("档案管理组",),
    ),
)


@dataclass(frozen=True)
class DemoClient:
    client_id: str
    name: str
    port: int
    allowed_audiences: tuple[str, ...] = ()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


CLIENTS = (
    # OA reserves budget in reimbursement on the approver's behalf (token exchange).
    DemoClient("oa", "OA 办公系统", 8001, allowed_audiences=("reimburse",)),
    # Reimbursement files paid reports in the accounting archive, so it asks about that domain.
    DemoClient("reimburse", "费用报销系统", 8002, allowed_audiences=("archive",)),
)
# `authz`: the examples ask the decision API with their own client-credentials token.
DEMO_SCOPE = "openid profile email phone groups offline_access authz"
ACTOR = Actor("admin", "demo")


def seed_demo(services: Services, echo: Callable[[str], None]) -> None:
    seed_demo_directory(services, echo)
    _seed_clients(services, echo)


def seed_demo_directory(services: Services, echo: Callable[[str], None]) -> None:
    """Departments, people and groups, without the demo clients (the examples' tests register
    those with `register_demo_client` on ports of their own)."""
    identity = services.identity
    for path in DEPARTMENTS:
        identity.ensure_department(path)
    echo("demo departments: " + ", ".join(DEPARTMENTS))
    for person in USERS:
        user = identity.get_user_by_username(person.username)
        if user is None:
            user = identity.create_user(
                username=person.username,
                display_name=person.name,
                email=person.email,
                phone=person.phone,
                employee_id=person.employee_id,
                department_path=person.department,
                password_hash=services.password_hasher.hash(person.password),
            )
            services.audit.record(
                EventType.USER_CREATED,
                actor=ACTOR,
                target=user.sub,
                details={"username": user.username, "source": user.source, "demo": True},
            )
            note = f"password {person.password}"
        else:
            note = "already present, password unchanged"
        for group_name in person.groups:
            group = identity.ensure_group(group_name)
            identity.add_group_member(group.id, user.id)
        if person.manages:
            identity.set_department_manager(person.manages, user.id)
        extra = f", groups {', '.join(person.groups)}" if person.groups else ""
        echo(f"demo user {person.username} ({person.name}, {person.department}{extra}): {note}")


def _seed_clients(services: Services, echo: Callable[[str], None]) -> None:
    registry = services.clients
    for demo in CLIENTS:
        if registry.get(demo.client_id) is not None:
            echo(
                f"demo client {demo.client_id}: already registered "
                f"(`idhub client rotate-secret {demo.client_id}` prints a new secret)"
            )
            continue
        secret = register_demo_client(services, demo, base=demo.base)
        echo(
            f"demo client {demo.client_id} ({demo.name}): client_id={demo.client_id} "
            f"client_secret={secret} redirect_uri={demo.base}/callback"
        )


def register_demo_client(services: Services, demo: DemoClient, *, base: str) -> str:
    """Registers one demo system served at `base` (the examples' tests serve them on free
    ports); returns its client secret."""
    from idhub.core.clients import TOKEN_EXCHANGE

    grants = ["authorization_code", "refresh_token", "client_credentials"]
    if demo.allowed_audiences:
        grants.append(TOKEN_EXCHANGE)
    _client, secret = services.clients.register(
        demo.client_id,
        name=demo.name,
        redirect_uris=[f"{base}/callback"],
        post_logout_redirect_uris=[f"{base}/logged-out"],
        backchannel_logout_uri=f"{base}/backchannel-logout",
        grant_types=grants,
        scope=DEMO_SCOPE,
        first_party=True,
        public=False,
        allowed_audiences=list(demo.allowed_audiences),
        actor=ACTOR,
    )
    if secret is None:  # a confidential client always gets one
        raise RuntimeError(f"demo client {demo.client_id} was registered without a secret")
    return secret
