"""Second factors in the sign-in core, without HTTP, on SQLite and PostgreSQL: who must use one,
step-up with acr_values, TOTP drift and replay, recovery codes, remembered devices, admin reset,
and the mfa.yaml policy file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyotp
import pytest

from idhub.bootstrap import Services
from idhub.core.assurance import ACR_MFA, ACR_PASSWORD, ACR_REMEMBERED, plan_required_level
from idhub.core.audit import Actor, EventType
from idhub.core.clock import FrozenClock
from idhub.core.identity import User
from idhub.core.signin import (
    EnrolmentNeeded,
    LoginNeeded,
    PasswordSignIn,
    Refused,
    SecondFactorNeeded,
    SignedIn,
    SignInRequest,
)
from idhub.errors import AuthenticationFailed
from tests.audit_scan import KnownSecrets
from tests.conftest import REPO

NOW = 1_800_000_000.0
PASSWORD = "correct horse battery staple"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOW)


@pytest.fixture
def hub(
    make_settings: Callable[..., Any],
    make_services: Callable[..., Services],
    db_url: str,
    clock: FrozenClock,
) -> Services:
    return make_services(make_settings(db_url), clock=clock)


def _person(hub: Services, name: str, **fields: Any) -> User:
    return hub.identity.create_user(
        username=name, password_hash=hub.password_hasher.hash(PASSWORD), **fields
    )


def _ask(**changes: Any) -> SignInRequest:
    values: dict[str, Any] = {"client_id": "erp", "first_party": True, "scopes": ("openid",)}
    values.update(changes)
    return SignInRequest(**values)


def _events(hub: Services, event: EventType) -> list[Any]:
    return [e for e in hub.audit_log.search(limit=1000) if e.event_type == event.value]


def _enrol_totp(hub: Services, user: User, known: KnownSecrets) -> pyotp.TOTP:
    enrolment = hub.mfa.begin_totp(user)
    known.add(enrolment.secret)
    totp = pyotp.TOTP(enrolment.secret)
    assert hub.mfa.confirm_totp(user, totp.at(hub.clock.now()), ctx=None)
    return totp


def _next_step(clock: FrozenClock) -> None:
    clock.advance(30)


def test_required_level_rule() -> None:
    rule = plan_required_level
    assert rule(person_required=False, enrolled=False, system_requires=False, acr_values=()) == 0
    assert rule(person_required=True, enrolled=False, system_requires=False, acr_values=()) == 1
    assert rule(person_required=False, enrolled=True, system_requires=False, acr_values=()) == 1
    assert rule(person_required=False, enrolled=False, system_requires=True, acr_values=()) == 1
    assert rule(person_required=False, enrolled=False, system_requires=False,
                acr_values=(ACR_MFA,)) == 2  # fmt: skip
    # acr_values lists what the system accepts: the lowest known one counts, unknown ones not.
    assert rule(person_required=False, enrolled=False, system_requires=False,
                acr_values=(ACR_MFA, ACR_PASSWORD)) == 0  # fmt: skip
    assert rule(person_required=False, enrolled=False, system_requires=False,
                acr_values=("urn:other", ACR_REMEMBERED)) == 1  # fmt: skip


def test_nobody_required_signs_in_with_a_password_only(hub: Services) -> None:
    _person(hub, "alice")
    step = hub.signin.begin_password_sign_in("alice", PASSWORD, cookie=None, ctx=None)
    assert isinstance(step, PasswordSignIn)
    assert step.session.amr == ("pwd",) and step.session.acr == ACR_PASSWORD
    assert isinstance(hub.signin.evaluate(step.cookie, _ask()), SignedIn)


def test_enrolled_person_is_always_asked_and_then_signed_in_at_mfa_level(
    hub: Services, clock: FrozenClock, known_secrets: KnownSecrets
) -> None:
    alice = _person(hub, "alice")
    totp = _enrol_totp(hub, alice, known_secrets)
    _next_step(clock)
    step = hub.signin.begin_password_sign_in("alice", PASSWORD, cookie=None, ctx=None)
    assert isinstance(step, SecondFactorNeeded) and step.methods == ("totp",)
    code = totp.at(clock.now())
    known_secrets.add(code)
    done = hub.signin.complete_second_factor(
        step.pending, method="totp", answer=code, cookie=None, ctx=None
    )
    assert done.session.amr == ("pwd", "otp") and done.session.acr == ACR_MFA
    assert isinstance(hub.signin.evaluate(done.cookie, _ask(acr_values=(ACR_MFA,))), SignedIn)
    used = _events(hub, EventType.MFA_SUCCEEDED)
    assert used and used[0].details == {"method": "totp"}


def test_totp_allows_one_step_of_drift_and_refuses_replay(
    hub: Services, clock: FrozenClock, known_secrets: KnownSecrets
) -> None:
    alice = _person(hub, "alice")
    totp = _enrol_totp(hub, alice, known_secrets)
    clock.advance(300)
    now = clock.now()
    assert not hub.mfa.check_totp(alice, totp.at(now - 60), ctx=None)  # two steps late
    assert not hub.mfa.check_totp(alice, totp.at(now + 60), ctx=None)  # two steps early
    late = totp.at(now - 30)
    assert hub.mfa.check_totp(alice, late, ctx=None)  # one step late is fine
    assert not hub.mfa.check_totp(alice, late, ctx=None)  # but only once
    current = totp.at(now)
    assert hub.mfa.check_totp(alice, current, ctx=None)
    assert not hub.mfa.check_totp(alice, current, ctx=None)
    # Once a newer code was used, an older one still inside the window is refused too.
    assert not hub.mfa.check_totp(alice, late, ctx=None)
    reasons = [e.details["reason"] for e in _events(hub, EventType.MFA_FAILED)]
    assert reasons.count("code_reused") == 3 and reasons.count("bad_code") == 2
    known_secrets.add(late, current)


def test_recovery_codes_work_once_each(hub: Services, known_secrets: KnownSecrets) -> None:
    alice = _person(hub, "alice")
    _enrol_totp(hub, alice, known_secrets)
    codes = hub.mfa.new_recovery_codes(alice, ctx=None)
    known_secrets.add(*codes)
    assert len(codes) == 10 and len(set(codes)) == 10
    step = hub.signin.begin_password_sign_in("alice", PASSWORD, cookie=None, ctx=None)
    assert isinstance(step, SecondFactorNeeded)
    done = hub.signin.complete_second_factor(
        step.pending, method="recovery_code", answer=codes[0].upper(), cookie=None, ctx=None
    )
    assert done.session.acr == ACR_MFA
    with pytest.raises(AuthenticationFailed):
        hub.signin.complete_second_factor(
            step.pending, method="recovery_code", answer=codes[0], cookie=None, ctx=None
        )
    assert hub.mfa.status(alice).recovery_codes_left == 9
    used = _events(hub, EventType.MFA_RECOVERY_CODE_USED)
    assert len(used) == 1 and used[0].details == {"left": 9}
    # New codes replace the old ones.
    fresh = hub.mfa.new_recovery_codes(alice, ctx=None)
    known_secrets.add(*fresh)
    assert not hub.mfa.use_recovery_code(alice, codes[1], ctx=None)
    assert hub.mfa.use_recovery_code(alice, fresh[1], ctx=None)


def test_wrong_second_factors_block_it_for_a_while(
    hub: Services, clock: FrozenClock, known_secrets: KnownSecrets
) -> None:
    alice = _person(hub, "alice")
    totp = _enrol_totp(hub, alice, known_secrets)
    step = hub.signin.begin_password_sign_in("alice", PASSWORD, cookie=None, ctx=None)
    assert isinstance(step, SecondFactorNeeded)
    for _ in range(5):
        with pytest.raises(AuthenticationFailed):
            hub.signin.complete_second_factor(
                step.pending, method="totp", answer="000000", cookie=None, ctx=None
            )
    _next_step(clock)
    with pytest.raises(AuthenticationFailed):  # even the right code, while blocked
        hub.signin.complete_second_factor(
            step.pending, method="totp", answer=totp.at(clock.now()), cookie=None, ctx=None
        )
    assert any(
        e.details.get("reason") == "too_many_attempts" for e in _events(hub, EventType.MFA_FAILED)
    )
    clock.advance(900)
    again = hub.signin.begin_password_sign_in("alice", PASSWORD, cookie=None, ctx=None)
    assert isinstance(again, SecondFactorNeeded)
    code = totp.at(clock.now())
    known_secrets.add(code)
    done = hub.signin.complete_second_factor(
        again.pending, method="totp", answer=code, cookie=None, ctx=None
    )
    assert done.session.acr == ACR_MFA


def test_pending_login_expires_and_cannot_be_forged(
    hub: Services, clock: FrozenClock, known_secrets: KnownSecrets
) -> None:
    alice = _person(hub, "alice")
    totp = _enrol_totp(hub, alice, known_secrets)
    step = hub.signin.begin_password_sign_in("alice", PASSWORD, cookie=None, ctx=None)
    assert isinstance(step, SecondFactorNeeded)
    forged = step.pending[:-1] + ("0" if step.pending[-1] != "0" else "1")
    _next_step(clock)
    with pytest.raises(AuthenticationFailed) as failed:
        hub.signin.complete_second_factor(
            forged, method="totp", answer=totp.at(clock.now()), cookie=None, ctx=None
        )
    assert failed.value.reason == "pending_expired"
    clock.advance(301)
    with pytest.raises(AuthenticationFailed) as failed:
        hub.signin.complete_second_factor(
            step.pending, method="totp", answer=totp.at(clock.now()), cookie=None, ctx=None
        )
    assert failed.value.reason == "pending_expired"


def test_who_must_use_a_second_factor(
    make_settings: Callable[..., Any],
    make_services: Callable[..., Services],
    db_url: str,
    clock: FrozenClock,
) -> None:
    hub = make_services(make_settings(db_url), clock=clock)
    plain = _person(hub, "plain")
    flagged = _person(hub, "flagged")
    hub.mfa.apply_required(flagged, True, actor=Actor("admin", "test"))
    # Per person (an admin's flag): enrol first.
    step = hub.signin.begin_password_sign_in("flagged", PASSWORD, cookie=None, ctx=None)
    assert isinstance(step, EnrolmentNeeded) and step.sign_in is not None
    assert hub.signin.evaluate(step.sign_in.cookie, _ask()) == LoginNeeded("second_factor")
    passive = hub.signin.evaluate(step.sign_in.cookie, _ask(passive=True))
    assert isinstance(passive, Refused) and passive.error == "login_required"
    # Per system: only requests for that system.
    hub.clients.register("erp", redirect_uris=["http://127.0.0.1:9/cb"], first_party=True)
    hub.clients.update("erp", require_mfa=True)
    cookie = hub.signin.password_sign_in("plain", PASSWORD, cookie=None, ctx=None).cookie
    assert hub.signin.evaluate(cookie, _ask()) == LoginNeeded("second_factor")
    assert isinstance(hub.signin.evaluate(cookie, _ask(client_id="oa")), SignedIn)
    assert isinstance(
        hub.signin.login_page_step(cookie, client_id="erp", acr_values=()), EnrolmentNeeded
    )
    assert hub.signin.login_page_step(cookie, client_id="oa", acr_values=()) is None
    # For all.
    everyone = make_services(make_settings(db_url, toml='[mfa]\nrequired = "all"\n'), clock=clock)
    step = everyone.signin.begin_password_sign_in("plain", PASSWORD, cookie=None, ctx=None)
    assert isinstance(step, EnrolmentNeeded)
    # Off: the admin's flag no longer forces anyone.
    off = make_services(make_settings(db_url, toml='[mfa]\nrequired = "off"\n'), clock=clock)
    step = off.signin.begin_password_sign_in("flagged", PASSWORD, cookie=None, ctx=None)
    assert isinstance(step, PasswordSignIn)
    assert plain.id != flagged.id


def test_finance_roles_in_reimburse_must_use_a_second_factor(hub: Services) -> None:
    """policies/mfa.yaml: `finance*` in reimburse/archive; 财务部 members hold `finance`."""
    hub.identity.ensure_department("/总部/财务部")
    _person(hub, "cashier", department_path="/总部/财务部")
    _person(hub, "sales")
    hub.authz.reload(trigger="test")
    assert isinstance(
        hub.signin.begin_password_sign_in("cashier", PASSWORD, cookie=None, ctx=None),
        EnrolmentNeeded,
    )
    assert isinstance(
        hub.signin.begin_password_sign_in("sales", PASSWORD, cookie=None, ctx=None),
        PasswordSignIn,
    )


def test_step_up_with_acr_values_asks_even_a_remembered_browser(
    hub: Services, clock: FrozenClock, known_secrets: KnownSecrets
) -> None:
    alice = _person(hub, "alice")
    totp = _enrol_totp(hub, alice, known_secrets)
    _next_step(clock)
    step = hub.signin.begin_password_sign_in("alice", PASSWORD, cookie=None, ctx=None)
    assert isinstance(step, SecondFactorNeeded)
    done = hub.signin.complete_second_factor(
        step.pending, method="totp", answer=totp.at(clock.now()), remember=True,
        cookie=None, ctx=None,
    )  # fmt: skip
    assert done.device_cookie
    known_secrets.add(done.device_cookie)
    remembered = _events(hub, EventType.MFA_DEVICE_REMEMBERED)
    assert len(remembered) == 1 and remembered[0].details["days"] == 30
    # Next sign-in on this browser: no second factor, the remembered level.
    again = hub.signin.begin_password_sign_in(
        "alice", PASSWORD, cookie=None, ctx=None, device_cookie=done.device_cookie
    )
    assert isinstance(again, PasswordSignIn) and again.session.acr == ACR_REMEMBERED
    assert isinstance(hub.signin.evaluate(again.cookie, _ask()), SignedIn)
    # A system asking for MFA by acr_values gets the second factor asked again.
    assert hub.signin.evaluate(again.cookie, _ask(acr_values=(ACR_MFA,))) == LoginNeeded(
        "second_factor"
    )
    owed = hub.signin.login_page_step(again.cookie, client_id="erp", acr_values=(ACR_MFA,))
    assert isinstance(owed, SecondFactorNeeded)
    _next_step(clock)
    stepped = hub.signin.complete_second_factor(
        owed.pending, method="totp", answer=totp.at(clock.now()), cookie=again.cookie, ctx=None
    )
    assert stepped.session.sid == again.session.sid and stepped.session.acr == ACR_MFA
    assert isinstance(hub.signin.evaluate(stepped.cookie, _ask(acr_values=(ACR_MFA,))), SignedIn)
    # The same device cookie means nothing for another person.
    _person(hub, "bob")
    bob = hub.identity.get_user_by_username("bob")
    assert bob is not None and not hub.remembered_devices.check(done.device_cookie, bob.id)
    # Also with acr_values at the password step: asked despite the device.
    asked = hub.signin.begin_password_sign_in(
        "alice", PASSWORD, cookie=None, ctx=None, device_cookie=done.device_cookie,
        acr_values=(ACR_MFA,),
    )  # fmt: skip
    assert isinstance(asked, SecondFactorNeeded)


def test_remembered_device_expires_and_is_revocable(
    hub: Services, clock: FrozenClock, known_secrets: KnownSecrets
) -> None:
    alice = _person(hub, "alice")
    _enrol_totp(hub, alice, known_secrets)
    devices = hub.remembered_devices
    first = devices.remember(alice, ctx=None)
    second = devices.remember(alice, ctx=None)
    known_secrets.add(first, second)
    assert devices.check(first, alice.id) and devices.check(second, alice.id)
    assert not devices.check(first[:-2] + "xx", alice.id)
    assert len(devices.devices(alice)) == 2
    second_id = second.split(".")[0]
    assert devices.revoke(alice, second_id, actor=Actor("user", alice.sub), ctx=None)
    assert not devices.check(second, alice.id) and devices.check(first, alice.id)
    assert [d.id for d in devices.devices(alice)] == [first.split(".")[0]]
    assert _events(hub, EventType.MFA_DEVICE_REVOKED)[0].details == {"device": second_id}
    clock.advance(30 * 86400 + 1)
    assert not devices.check(first, alice.id)
    step = hub.signin.begin_password_sign_in(
        "alice", PASSWORD, cookie=None, ctx=None, device_cookie=first
    )
    assert isinstance(step, SecondFactorNeeded)


def test_admin_reset_removes_factors_and_remembered_devices(
    hub: Services, known_secrets: KnownSecrets
) -> None:
    alice = _person(hub, "alice")
    _enrol_totp(hub, alice, known_secrets)
    codes = hub.mfa.new_recovery_codes(alice, ctx=None)
    device = hub.remembered_devices.remember(alice, ctx=None)
    known_secrets.add(device, *codes)
    hub.mfa.reset(alice, actor=Actor("admin", "cli"))
    status = hub.mfa.status(alice)
    assert not status.enrolled and status.recovery_codes_left == 0
    assert not hub.remembered_devices.check(device, alice.id)
    assert isinstance(
        hub.signin.begin_password_sign_in("alice", PASSWORD, cookie=None, ctx=None),
        PasswordSignIn,
    )
    assert len(_events(hub, EventType.MFA_RESET)) == 1


def test_totp_secret_is_sealed_at_rest(hub: Services, known_secrets: KnownSecrets) -> None:
    alice = _person(hub, "alice")
    enrolment = hub.mfa.begin_totp(alice)
    known_secrets.add(enrolment.secret)
    account = hub.mfa_store.account(alice.id)
    assert account is not None and account.totp_secret_enc is not None
    assert enrolment.secret.encode() not in account.totp_secret_enc
    assert not hub.mfa.check_enrolled(alice.id)  # not until the first code


def test_mfa_policy_file_problems_name_file_and_line(tmp_path: Path) -> None:
    import shutil

    from idhub.adapters.policy_files import load_policy_dir

    policy = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policy)
    (policy / "mfa.yaml").write_text(
        "require:\n"
        "  - {role: finance*, domains: [reimburse]}\n"
        "  - {role: 'bad role', domain: oa}\n"
        "  - {role: admin, domains: ['no such/domain']}\n"
        "  - {role: admin, domain: '*', extra: 1}\n",
        encoding="utf-8",
    )
    loaded, issues = load_policy_dir(policy)
    assert [str(i).split(": error")[0] for i in issues] == [
        "mfa.yaml:3", "mfa.yaml:4", "mfa.yaml:5",
    ]  # fmt: skip
    assert [r.role for r in loaded.mfa_roles] == ["finance*"]
