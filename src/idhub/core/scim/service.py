"""The SCIM service provider's decisions: which source a bearer token is, what that source may
see and change (only what it owns), ETag preconditions, and the audit trail of every change
(a `sync.change` event with the source and the request id, as a directory sync writes).

A person is never hard-deleted by a source: DELETE disables the idhub user and hides it from
the source (404 afterwards); a later POST of the same userName by the same source revives it
under its old id."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from idhub.core.audit import Actor, EventType, PendingEvent, RequestContext
from idhub.core.directory.linking import (
    LinkRules,
    Match,
    canonical_keys,
    check_authoritative,
    match_person,
    resolve,
    value_hash,
)
from idhub.core.directory.ports import SessionTerminator
from idhub.core.identifiers import canonical_name
from idhub.core.identity import LOCAL_SOURCE
from idhub.core.scim.errors import (
    ScimError,
    invalid_syntax,
    invalid_value,
    not_found,
    precondition_failed,
    uniqueness,
)
from idhub.core.scim.filter import Compare, Logical, Node
from idhub.core.scim.patch import apply_patch
from idhub.core.scim.ports import LinkView, ScimRecord, ScimStore, UserColumns
from idhub.core.scim.query import ListQuery, project, select
from idhub.core.scim.resources import (
    DISPLAYS,
    LIST_SCHEMA,
    members_of,
    normalise,
    render,
    user_columns,
    version,
)
from idhub.core.transactions import Transaction, UnitOfWork

KINDS = ("User", "Group")


def token_digest(token: str) -> str:
    """How a source's bearer token is stored: SHA-256 hex. Tokens are long random values
    idhub generates, so a fast hash is enough (a slow KDF would cap provisioning)."""
    return hashlib.sha256(token.encode()).hexdigest()


def source_of(name: str) -> str:
    return f"scim:{name}"


@dataclass(frozen=True)
class Call:
    """Who is asking (a configured source) and where the answer's links point."""

    source: str  # the source's name in idhub.toml
    base: str  # .../scim/v2
    ctx: RequestContext | None = None

    @property
    def owner(self) -> str:
        return source_of(self.source)


def check_if_match(header: str | None, current: str) -> None:
    if header is None or header.strip() == "*":
        return
    wanted = {v.strip() for v in header.split(",")}
    # Weak comparison (RFC 9110 §8.8.3.2): a strong tag naming the same value matches too.
    if current not in wanted and current.removeprefix("W/") not in wanted:
        raise precondition_failed("the resource changed since that version (If-Match)")


def check_not_modified(header: str | None, current: str) -> bool:
    if header is None:
        return False
    wanted = {v.strip() for v in header.split(",")}
    return "*" in wanted or current in wanted or current.removeprefix("W/") in wanted


class ScimService:
    def __init__(
        self,
        store: ScimStore,
        uow: UnitOfWork,
        tokens: Mapping[str, str],
        *,
        new_id: Any,
        sessions: SessionTerminator | None = None,
        linking: LinkRules | None = None,
    ) -> None:
        self._rules = linking if linking is not None else LinkRules()
        self._sessions = sessions
        self._store = store
        self._uow = uow
        self._tokens = dict(tokens)  # source name -> token_digest
        self._new_id = new_id

    # ------------------------------------------------------------ who

    def authenticate(self, token: str | None) -> str:
        """The source whose token this is; every configured digest is compared (in constant
        time) so the answer's timing does not tell which source came close."""
        found = None
        digest = token_digest(token or "")
        for name, expected in self._tokens.items():
            if hmac.compare_digest(digest, expected) and token:
                found = name
        if found is None:
            raise ScimError("a valid SCIM source bearer token is required", status=401)
        return found

    # ------------------------------------------------------------ reading

    def _records(self, kind: str, call: Call) -> list[ScimRecord]:
        if kind == "User":
            return [r for r in self._store.list_users(call.owner) if not r.deleted]
        return self._store.list_groups(call.owner)

    def _record(self, kind: str, call: Call, scim_id: str) -> ScimRecord:
        if len(scim_id) > 200 or not scim_id.isprintable():
            raise not_found(f"{kind} not found")
        record = (
            self._store.get_user(call.owner, scim_id)
            if kind == "User"
            else self._store.get_group(call.owner, scim_id)
        )
        if record is None or record.deleted:
            raise not_found(f"{kind} {scim_id[:100]} not found")
        return record

    def _displays(self, call: Call, records: list[ScimRecord]) -> dict[str, str]:
        if not any(r.members for r in records):
            return {}
        return {
            u.scim_id: str(u.doc.get("displayName") or u.doc.get("userName") or "")
            for u in self._store.list_users(call.owner)
        }

    def _render(self, kind: str, call: Call, record: ScimRecord) -> dict[str, Any]:
        return render(kind, record, base=call.base, displays=self._displays(call, [record]))

    def list_resources(self, kind: str, call: Call, query: ListQuery) -> dict[str, Any]:
        """`kind` "User", "Group", or "*" for a search at the service root (both)."""
        docs: list[dict[str, Any]] = []
        for one in KINDS if kind == "*" else (kind,):
            narrowed = self._narrow(one, call, query.filter)
            records = self._records(one, call) if narrowed is None else narrowed
            displays = self._displays(call, records)
            docs.extend(render(one, r, base=call.base, displays=displays) for r in records)
        total, page = select(docs, query)
        return {
            "schemas": [LIST_SCHEMA],
            "totalResults": total,
            "startIndex": query.start_index,
            "itemsPerPage": len(page),
            "Resources": [project(d, query) for d in page],
        }

    def _narrow(self, kind: str, call: Call, node: Node | None) -> list[ScimRecord] | None:
        """The few candidates of a filter on `id` or `userName` equality (what clouds send
        before every create: `userName eq "..."`), found by index; None: every resource. The
        filter itself is still applied to them."""
        if isinstance(node, Logical) and node.op == "and":
            left = self._narrow(kind, call, node.left)
            return left if left is not None else self._narrow(kind, call, node.right)
        if not (
            isinstance(node, Compare)
            and node.op == "eq"
            and isinstance(node.value, str)
            and node.attr.schema is None
            and len(node.attr.names) == 1
        ):
            return None
        name = node.attr.names[0].lower()
        scim_id: str | None = None
        if name == "id":
            scim_id = node.value
        elif name == "username" and kind == "User":
            owner = self._store.username_owner(canonical_name(node.value))
            if owner is None or owner[0] != call.owner:
                # A person this source is linked to (someone another source created) goes by
                # the userName this source gave, kept on its link.
                found = self._store.linked_by_username(call.owner, node.value)
                return [r for i in found if (r := self._store.get_user(call.owner, i))]
            scim_id = owner[1]
        else:
            return None
        try:
            return [self._record(kind, call, scim_id or "")]
        except ScimError:
            return []

    def get(self, kind: str, call: Call, scim_id: str) -> dict[str, Any]:
        return self._render(kind, call, self._record(kind, call, scim_id))

    # ------------------------------------------------------------ users

    def create(self, kind: str, call: Call, payload: Any) -> dict[str, Any]:
        if kind == "Group":
            return self._save_group(call, None, payload)
        doc = normalise("User", payload)
        columns = user_columns(doc)
        owner = self._store.username_owner(columns.username)
        revived: ScimRecord | None = None
        if owner is not None:
            if owner[0] == call.owner and owner[1]:
                revived = self._store.get_user(call.owner, owner[1])
        if revived is None:
            reserved = self._store.reserved_id(call.owner, columns.username)
            if reserved is not None and reserved[1]:
                # An admin decided who this person is (idhub user link) after an ambiguous
                # POST: the client's retry fills the link idhub reserved for it.
                return self._fill_reserved(call, reserved[0], columns, doc)
            match = self._match(call, columns, reserved[0] if reserved else None)
            if match.outcome == "link":
                return self._link(call, match, columns, doc, taken=owner is not None)
        if owner is not None and (revived is None or not revived.deleted):
            raise uniqueness(f"userName {doc['userName'][:100]!r} is already taken")
        with self._uow.atomic() as tx:
            if revived is not None:
                scim_id = revived.scim_id
                self._store.update_user(call.owner, scim_id, columns, doc)
            else:
                scim_id = self._new_id()
                self._store.create_user(call.owner, scim_id, columns, doc)
            tx.record_many([self._user_event(call, scim_id, "create", None, columns)])
        return self.get("User", call, scim_id)

    # ------------------------------------------------------------ one identity per person

    def _fill_reserved(
        self, call: Call, scim_id: str, said: UserColumns, doc: dict[str, Any]
    ) -> dict[str, Any]:
        view = self._store.link_view(call.owner, scim_id)
        if view is None:
            raise not_found("the reserved link is gone; retry")
        columns = self._effective(call, view, said)
        with self._uow.atomic() as tx:
            self._store.update_linked(
                call.owner, scim_id, view.user_id, said=said, columns=columns, doc=doc
            )
            tx.record_many([self._user_event(call, scim_id, "link", _columns_of(view), columns)])
        return self.get("User", call, scim_id)

    def _match(self, call: Call, columns: UserColumns, reserved: str | None = None) -> Match:
        """Whether the person being created is someone idhub has already (by the link keys).
        An ambiguous match is recorded for an admin and refused (409): never a guess."""
        rules = self._rules
        if not rules.link_keys:
            return Match("none")
        keys = canonical_keys(
            email=columns.email,
            phone=columns.phone,
            employee_id=columns.employee_id,
            country_code=rules.country_code,
        )
        if not keys:
            return Match("none")
        index = self._store.link_candidates(keys, country_code=rules.country_code)
        match = match_person(keys, index, source=call.owner, order=rules.link_keys)
        if match.outcome == "conflict":
            # The SCIM id the person will have (the same for every retry): the client never
            # learns it until an admin's `idhub user link` names the person by it.
            scim_id = reserved or self._new_id()
            found = {
                "source": call.owner,
                "external_id": scim_id,
                "username": columns.username,
                "key": match.key,
                "candidates": list(match.candidates),
                "reason": match.reason,
            }
            with self._uow.atomic() as tx:
                self._store.record_conflict(found)
                tx.record_many(
                    [
                        PendingEvent(
                            EventType.IDENTITY_CONFLICT,
                            actor=Actor("system", call.owner),
                            target=f"user:{columns.username}",
                            outcome="denied",
                            details={
                                **found,
                                "request_id": call.ctx.request_id if call.ctx else None,
                            },
                            ctx=call.ctx,
                        )
                    ]
                )
            raise uniqueness(
                f"this person matches several idhub users ({match.reason}); an administrator "
                "must link them (idhub sync conflicts)"
            )
        return match

    def _link(
        self, call: Call, match: Match, said: UserColumns, doc: dict[str, Any], *, taken: bool
    ) -> dict[str, Any]:
        assert match.user_id is not None
        view = self._store.person_view(match.user_id)
        if view is None:
            raise not_found("the matching user is gone; retry")
        if taken and view.username != said.username:
            raise uniqueness(f"userName {doc['userName'][:100]!r} is already taken")
        scim_id = self._new_id()
        with self._uow.atomic() as tx:
            self._store.link_user(
                call.owner,
                scim_id,
                match.user_id,
                columns=said,
                doc=doc,
                key=match.key,
                value_hash=value_hash(match.value) if match.value else None,
            )
            linked = self._store.link_view(call.owner, scim_id)
            assert linked is not None
            columns = self._effective(call, linked, said)
            self._store.update_linked(
                call.owner, scim_id, match.user_id, said=said, columns=columns, doc=doc
            )
            tx.record_many(
                [
                    PendingEvent(
                        EventType.IDENTITY_LINKED,
                        actor=Actor("system", call.owner),
                        target=f"user:{view.username}",
                        details={
                            "user_id": match.user_id,
                            "source": call.owner,
                            "external_id": scim_id,
                            "key": match.key,
                            "linked_by": call.owner,
                            "request_id": call.ctx.request_id if call.ctx else None,
                        },
                        ctx=call.ctx,
                    ),
                    self._user_event(call, scim_id, "link", _columns_of(view), columns),
                ]
            )
        return self.get("User", call, scim_id)

    def _effective(self, call: Call, view: LinkView, said: UserColumns) -> UserColumns:
        """The row's columns once this source says `said`: precedence over every link; the
        username stays the creating source's; only an authoritative source disables."""
        mine = {
            "display_name": said.display_name,
            "email": said.email,
            "phone": said.phone,
            "employee_id": said.employee_id,
            "department": said.department,
        }
        words: dict[str, Mapping[str, Any]] = {
            src: (attrs or view.row) for src, attrs in view.others
        }
        if view.creator == LOCAL_SOURCE and LOCAL_SOURCE not in words:
            words[LOCAL_SOURCE] = view.row  # an admin-made account's word (link_plan.py)
        words[call.owner] = mine
        values = {
            name: resolve(
                self._rules, name, {s: w.get(name) for s, w in words.items()}, view.creator
            )
            for name in mine
        }
        reason = view.disabled_reason
        if self._authoritative(call, view):
            reason = said.disabled_reason
        return UserColumns(
            username=said.username if view.creator == call.owner else view.username,
            display_name=str(values["display_name"] or view.username),
            email=values["email"],
            phone=values["phone"],
            employee_id=values["employee_id"],
            department=values["department"],
            disabled_reason=reason,
        )

    def _authoritative(self, call: Call, view: LinkView) -> bool:
        linked = [call.owner, *(s for s, _ in view.others)]
        return check_authoritative(self._rules, call.owner, creator=view.creator, linked=linked)

    def replace(
        self, kind: str, call: Call, scim_id: str, payload: Any, *, if_match: str | None
    ) -> dict[str, Any]:
        record = self._record(kind, call, scim_id)
        check_if_match(if_match, version(record.doc, record.members))
        if kind == "Group":
            return self._save_group(call, record, payload)
        return self._save_user(call, record, normalise("User", payload))

    def patch(
        self, kind: str, call: Call, scim_id: str, body: Any, *, if_match: str | None
    ) -> dict[str, Any]:
        record = self._record(kind, call, scim_id)
        check_if_match(if_match, version(record.doc, record.members))
        if not isinstance(body, dict):
            raise invalid_syntax("the request body must be a PatchOp object")
        operations = next((v for k, v in body.items() if k.lower() == "operations"), None)
        current = dict(record.doc)
        if kind == "Group":
            shown = record.doc.get(DISPLAYS) or {}
            current.pop(DISPLAYS, None)
            current["members"] = [
                {"value": m, **({"display": shown[m]} if m in shown else {})}
                for m in record.members
            ]
        changed = apply_patch(current, operations if isinstance(operations, list) else [])
        if kind == "Group":
            changed.setdefault("members", [])  # removed by the patch: no members left
            return self._save_group(call, record, changed)
        return self._save_user(call, record, normalise("User", changed))

    def delete(self, kind: str, call: Call, scim_id: str, *, if_match: str | None) -> None:
        record = self._record(kind, call, scim_id)
        check_if_match(if_match, version(record.doc, record.members))
        view = self._store.link_view(call.owner, scim_id) if kind == "User" else None
        if view is not None:
            self._delete_linked(call, record, view)
            return
        with self._uow.atomic() as tx:
            if kind == "Group":
                self._store.delete_group(call.owner, scim_id)
                tx.record_many([self._group_event(call, scim_id, "delete", record.doc, ())])
                return
            columns = user_columns(record.doc, deleted=True)
            self._store.update_user(call.owner, scim_id, columns, record.doc, deleted=True)
            tx.record_many(
                [self._user_event(call, scim_id, "delete", user_columns(record.doc), columns)]
            )
            self._end_sessions(tx, call, record)

    def _delete_linked(self, call: Call, record: ScimRecord, view: LinkView) -> None:
        """DELETE of a person other sources describe too: disabled if this source is
        authoritative for them, else only this source's link is dropped."""
        before = _columns_of(view)
        with self._uow.atomic() as tx:
            if self._authoritative(call, view):
                said = user_columns(record.doc, deleted=True)
                columns = self._effective(call, view, said)
                self._store.update_linked(
                    call.owner,
                    record.scim_id,
                    view.user_id,
                    said=said,
                    columns=columns,
                    doc=record.doc,
                    deleted=True,
                )
                tx.record_many([self._user_event(call, record.scim_id, "delete", before, columns)])
                if before.disabled_reason is None:
                    self._end_sessions(tx, call, record)
                return
            self._store.drop_link(call.owner, record.scim_id)
            tx.record_many(
                [
                    PendingEvent(
                        EventType.IDENTITY_UNLINKED,
                        actor=Actor("system", call.owner),
                        target=f"user:{view.username}",
                        details={
                            "user_id": view.user_id,
                            "source": call.owner,
                            "external_id": record.scim_id,
                            "reason": "deleted by a source that is not authoritative",
                            "request_id": call.ctx.request_id if call.ctx else None,
                        },
                        ctx=call.ctx,
                    )
                ]
            )

    def _save_linked(
        self, call: Call, record: ScimRecord, view: LinkView, doc: dict[str, Any]
    ) -> dict[str, Any]:
        said = user_columns(doc)
        before = _columns_of(view)
        columns = self._effective(call, view, said)
        if columns.username != before.username:
            owner = self._store.username_owner(columns.username)
            if owner is not None:
                raise uniqueness(f"userName {doc['userName'][:100]!r} is already taken")
        with self._uow.atomic() as tx:
            self._store.update_linked(
                call.owner, record.scim_id, view.user_id, said=said, columns=columns, doc=doc
            )
            if doc != record.doc:
                kind = "update"
                if before.disabled_reason != columns.disabled_reason:
                    kind = "disable" if columns.disabled_reason else "enable"
                tx.record_many([self._user_event(call, record.scim_id, kind, before, columns)])
                if kind == "disable":
                    self._end_sessions(tx, call, record)
        return self.get("User", call, record.scim_id)

    def _save_user(self, call: Call, record: ScimRecord, doc: dict[str, Any]) -> dict[str, Any]:
        view = self._store.link_view(call.owner, record.scim_id)
        if view is not None:
            return self._save_linked(call, record, view, doc)
        before = user_columns(record.doc)
        columns = user_columns(doc)
        if columns.username != before.username:
            owner = self._store.username_owner(columns.username)
            if owner is not None:
                raise uniqueness(f"userName {doc['userName'][:100]!r} is already taken")
        with self._uow.atomic() as tx:
            self._store.update_user(call.owner, record.scim_id, columns, doc)
            if doc != record.doc:
                kind = "update"
                if before.disabled_reason != columns.disabled_reason:
                    kind = "disable" if columns.disabled_reason else "enable"
                tx.record_many([self._user_event(call, record.scim_id, kind, before, columns)])
                if kind == "disable":
                    self._end_sessions(tx, call, record)
        return self.get("User", call, record.scim_id)

    def _end_sessions(self, tx: Transaction, call: Call, record: ScimRecord) -> None:
        """A user the source disabled or deleted is signed out everywhere (sessions, refresh
        tokens, back-channel logout), once the change has committed, as LDAP sync does."""
        sessions = self._sessions
        if sessions is None:
            return
        user_id = record.internal_id
        actor = Actor("system", call.owner)

        def sign_out() -> None:
            sessions.logout_user_everywhere(
                user_id, reason="scim_deprovisioned", actor=actor, ctx=call.ctx
            )

        tx.after_commit(sign_out)

    # ------------------------------------------------------------ groups

    def _save_group(self, call: Call, record: ScimRecord | None, payload: Any) -> dict[str, Any]:
        named = members_of(payload)
        doc = normalise("Group", payload)
        if named is None:
            members = [] if record is None else list(record.members)
            given = dict((record.doc.get(DISPLAYS) or {}) if record else {})
        else:
            members, given = named
        shown = {m: given[m] for m in members if m in given}
        if shown:
            doc[DISPLAYS] = shown
        live = self._store.live_user_ids(call.owner, members)
        unknown = [m for m in members if m not in live]
        if unknown:
            raise invalid_value(f"member {unknown[0][:100]} is not a user of this source")
        name = str(doc["displayName"]).strip()
        if len(name) > 200:
            raise invalid_value("displayName is longer than 200 characters")
        scim_id = record.scim_id if record else self._new_id()
        if self._store.group_name_taken(name, except_id=record.scim_id if record else None):
            raise uniqueness(f"a group named {name[:100]!r} already exists")
        with self._uow.atomic() as tx:
            self._store.save_group(call.owner, scim_id, name, doc, members, create=record is None)
            if record is None or record.doc != doc or list(record.members) != members:
                change = "create" if record is None else "update"
                event = self._group_event(call, scim_id, change, doc, members)
                tx.record_many([event])
        return self.get("Group", call, scim_id)

    # ------------------------------------------------------------ audit

    def _event(self, call: Call, target: str, details: dict[str, Any]) -> PendingEvent:
        request_id = call.ctx.request_id if call.ctx else None
        return PendingEvent(
            EventType.SYNC_CHANGE,
            actor=Actor("system", call.owner),
            target=target,
            details={"source": call.owner, "request_id": request_id, "via": "scim", **details},
            ctx=call.ctx,
        )

    def _user_event(
        self, call: Call, scim_id: str, kind: str, before: UserColumns | None, after: UserColumns
    ) -> PendingEvent:
        fields = ("username", "display_name", "email", "phone", "employee_id", "department")
        details: dict[str, Any] = {"kind": kind, "external_id": scim_id}
        if before is None:
            details["after"] = {f: getattr(after, f) for f in fields}
        else:
            details["changes"] = {
                f: [getattr(before, f), getattr(after, f)]
                for f in (*fields, "disabled_reason")
                if getattr(before, f) != getattr(after, f)
            }
        return self._event(call, f"user:{after.username}", details)

    def _group_event(
        self, call: Call, scim_id: str, kind: str, doc: dict[str, Any], members: Any
    ) -> PendingEvent:
        details = {"kind": f"group.{kind}", "external_id": scim_id, "members": len(list(members))}
        return self._event(call, f"group:{doc.get('displayName')}", details)


def _columns_of(view: LinkView) -> UserColumns:
    row = view.row
    return UserColumns(
        username=view.username,
        display_name=str(row.get("display_name") or ""),
        email=row.get("email"),
        phone=row.get("phone"),
        employee_id=row.get("employee_id"),
        department=row.get("department"),
        disabled_reason=view.disabled_reason,
    )
