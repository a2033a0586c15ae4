"""Policy lines as columns (core/authz/rule_table.py): the same lines as `Rule` tuples, the
same decisions, the same issues in the same order; a line's `Rule` is made only when asked."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from idhub.adapters.policy_files import load_policy_dir
from idhub.core.authz.checks import check_policy
from idhub.core.authz.engine import Decision, Engine, RuleIndex
from idhub.core.authz.model import (
    Catalog,
    DirectorySnapshot,
    DirectoryUser,
    PolicySet,
    Rule,
    Scope,
    Source,
)
from idhub.core.authz.rule_table import RuleTable

DOMAINS = ("oa",)


def _rules() -> tuple[Rule, ...]:
    return (
        Rule("clerk", "oa", "doc", "read", Scope("all"), "allow", Source("p.csv", 1)),
        Rule("clerk", "oa", "doc", "read", Scope("self"), "deny", Source("p.csv", 2)),
        Rule("clerk", "*", "*", "read", Scope("dept"), "allow", Source("q.csv", 7)),
        Rule("user:ann", "oa", "doc", "*", Scope("subtree", "/a"), "allow", Source("q.csv", 9)),
    )


def test_a_table_reads_back_the_lines_it_was_built_from() -> None:
    rules = _rules()
    table = RuleTable.from_rules(rules)
    assert len(table) == 4
    assert tuple(table) == rules and table == rules and list(table) == list(rules)
    assert table[-1] == rules[-1] and table[1:3] == rules[1:3]
    assert table.source(2) == "q.csv:7"
    # Names are stored once: two subjects, four names (oa, doc, read, *, with * shared).
    assert table.subjects == ("clerk", "user:ann")
    assert sorted(table.names) == ["*", "doc", "oa", "read"]
    with pytest.raises(IndexError):
        table[4]
    assert RuleTable.from_rules(table) is table


def test_the_index_chains_lines_of_one_bucket_in_file_order() -> None:
    index = RuleIndex(_rules())
    first = index.buckets[("oa", "clerk")][("doc", "read")]
    assert [r.source.line for r in index.rules_at(first)] == [1, 2]
    assert [
        r.source.line for r in index.rules_at(index.buckets[("*", "clerk")][("*", "read")])
    ] == [7]


def _policy(rules: tuple[Rule, ...] | RuleTable) -> PolicySet:
    from idhub.core.authz.model import Link

    return PolicySet(
        root="/x",
        rules=rules,
        links=(Link("user:bob", "clerk", "oa", Source("p.csv", 20)),),
        assignments=(),
        catalog=Catalog(roles={"clerk": ""}, resources={"oa": {"doc": frozenset({"read"})}}),
    )


def test_decisions_name_the_deciding_line_without_making_it() -> None:
    directory = DirectorySnapshot(
        users={"bob": DirectoryUser("bob", department="/a"), "ann": DirectoryUser("ann")}
    )
    engine = Engine(_policy(_rules()), directory, DOMAINS)
    own = engine.check("user:bob", "oa", "doc", "read", owner="bob")
    assert not own.allowed and own.reason == "denied by p.csv:2" and own.source == "p.csv:2"
    other = engine.check("user:bob", "oa", "doc", "read", owner="carl")
    assert other.allowed and other.reason == "allowed by p.csv:1"
    assert other.rule == _rules()[0]
    assert other == Decision(True, _rules()[0])
    nothing = engine.check("user:bob", "oa", "doc", "write")
    assert not nothing.allowed and nothing.rule is None and nothing.reason == "no rule matched"
    # The same answers from a tuple of Rules and from the loader's table.
    tabled = Engine(_policy(RuleTable.from_rules(_rules())), directory, DOMAINS)
    for args in (
        ("user:bob", "oa", "doc", "read", "bob"),
        ("user:ann", "oa", "doc", "x", "", "/a/b"),
    ):
        assert tabled.check(*args) == engine.check(*args)


def test_line_checks_report_each_line_in_file_order() -> None:
    rules = (
        Rule("clerk", "oa", "doc", "read", Scope("all"), "allow", Source("p.csv", 1)),
        Rule("ghost", "oa", "doc", "read", Scope("all"), "allow", Source("p.csv", 2)),
        Rule("clerk", "oa", "doc", "read", Scope("all"), "allow", Source("p.csv", 3)),
        Rule("clerk", "nowhere", "doc", "read", Scope("all"), "allow", Source("p.csv", 4)),
        Rule("clerk", "oa", "doc", "read", Scope("all"), "deny", Source("p.csv", 5)),
        Rule("clerk", "oa", "pdf", "read", Scope("all"), "allow", Source("p.csv", 6)),
        Rule("clerk", "oa", "doc", "fly", Scope("subtree", "/none"), "allow", Source("p.csv", 7)),
    )
    directory = DirectorySnapshot(users={"bob": DirectoryUser("bob")}, departments={"/a": None})
    for given in (rules, RuleTable.from_rules(rules)):
        issues = check_policy(_policy(given), DOMAINS, directory)
        assert [str(i) for i in issues] == [
            "p.csv:2: error: unknown role 'ghost' (declare it in catalog.yaml)",
            "p.csv:3: warning: duplicate of the line at p.csv:1",
            "p.csv:4: error: unknown domain 'nowhere' (configured: oa)",
            "p.csv:5: error: allow and deny on the same tuple (clerk, oa, doc, read, all): "
            "this line and p.csv:1 contradict each other",
            "p.csv:6: error: unknown resource type 'pdf' in domain 'oa'",
            "p.csv:7: error: unknown action 'fly' for 'doc' (known: read)",
            "p.csv:7: warning: department /none is not in the directory",
            "p.csv:2: warning: nobody can hold role 'ghost' in oa: this line can never match",
            "p.csv:4: warning: nobody can hold role 'clerk' in nowhere: this line can never match",
        ]


def test_the_loader_builds_a_canonical_table() -> None:
    root = Path(__file__).resolve().parents[1] / "policies"
    policy, _issues = load_policy_dir(root)
    assert isinstance(policy.rules, RuleTable) and policy.rules.canonical
    # Respelling a table shares its columns and changes only the name tables.
    respelt = dataclasses.replace(policy, canonical=False)
    from idhub.core.authz.canonical import canonical_policy

    assert canonical_policy(respelt).rules is policy.rules
