"""Policy lines as columns of small integers into shared tables of names.

A million `p` lines as `Rule` tuples cost about 1 KB each once the strings, the `Source` and
the index entries are counted: most of it is per-line objects repeating a few thousand names.
Here a line is eight numbers in `array`s (about 25 bytes): indexes into the table of subjects,
the table of names (domains, types, actions), the scopes and the files, plus its line number.
`RuleTable` is a read-only `Sequence[Rule]`, so everything that walks the lines (checks, the
policy tests, `policy diff`, exports) still sees `Rule`s; they are made when asked for and
not kept. The engine reads the columns directly (`core/authz/engine.py`).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from typing import overload

from idhub.core.authz.model import Rule, Scope, Source

EFFECTS = ("allow", "deny")


class RuleTable(Sequence[Rule]):
    """Immutable once built; `RuleTableBuilder` (or `from_rules`) makes one."""

    __slots__ = (
        "act",
        "canonical",
        "deny",
        "domain",
        "file",
        "files",
        "line",
        "names",
        "obj",
        "scope",
        "scopes",
        "subject",
        "subjects",
    )

    def __init__(
        self,
        *,
        subjects: tuple[str, ...],
        names: tuple[str, ...],
        scopes: tuple[Scope, ...],
        files: tuple[str, ...],
        columns: tuple[array[int], ...],
        canonical: bool = False,
    ) -> None:
        self.subjects = subjects
        self.names = names
        self.scopes = scopes
        self.files = files
        (
            self.subject,
            self.domain,
            self.obj,
            self.act,
            self.scope,
            self.deny,
            self.file,
            self.line,
        ) = columns
        # True when every name and scope path is in canonical spelling already.
        self.canonical = canonical

    @classmethod
    def from_rules(cls, rules: Sequence[Rule], *, canonical: bool = False) -> RuleTable:
        if isinstance(rules, RuleTable):
            return rules
        builder = RuleTableBuilder()
        for rule in rules:
            builder.add(
                rule.subject,
                rule.domain,
                rule.obj,
                rule.act,
                rule.scope,
                rule.effect == "deny",
                rule.source.file,
                rule.source.line,
            )
        return builder.build(canonical=canonical)

    def columns(self) -> tuple[array[int], ...]:
        return (
            self.subject,
            self.domain,
            self.obj,
            self.act,
            self.scope,
            self.deny,
            self.file,
            self.line,
        )

    def with_tables(
        self,
        *,
        subjects: tuple[str, ...],
        names: tuple[str, ...],
        scopes: tuple[Scope, ...],
        canonical: bool,
    ) -> RuleTable:
        """The same lines with their names respelt (the columns are shared, not copied)."""
        return RuleTable(
            subjects=subjects,
            names=names,
            scopes=scopes,
            files=self.files,
            columns=self.columns(),
            canonical=canonical,
        )

    def __len__(self) -> int:
        return len(self.line)

    @overload
    def __getitem__(self, index: int) -> Rule: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Rule]: ...

    def __getitem__(self, index: int | slice) -> Rule | Sequence[Rule]:
        if isinstance(index, slice):
            return tuple(self.rule(i) for i in range(*index.indices(len(self))))
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("rule index out of range")
        return self.rule(index)

    def rule(self, i: int) -> Rule:
        names = self.names
        return Rule(
            self.subjects[self.subject[i]],
            names[self.domain[i]],
            names[self.obj[i]],
            names[self.act[i]],
            self.scopes[self.scope[i]],
            "deny" if self.deny[i] else "allow",
            Source(self.files[self.file[i]], self.line[i]),
        )

    def source(self, i: int) -> str:
        """`file:line` of line `i`, without making its `Rule`."""
        return f"{self.files[self.file[i]]}:{self.line[i]}"

    def __iter__(self) -> Iterator[Rule]:
        for i in range(len(self)):
            yield self.rule(i)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RuleTable) and other is self:
            return True
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RuleTable({len(self)} lines)"


class RuleTableBuilder:
    """Collects lines in file order, numbering each distinct name once."""

    def __init__(self) -> None:
        self._subjects: dict[str, int] = {}
        self._names: dict[str, int] = {}
        self._scopes: dict[Scope, int] = {}
        self._files: dict[str, int] = {}
        # subject, domain, type, action: up to 4 billion distinct names; scope and file
        # numbers up to 65,535; the effect as 0/1; line numbers as unsigned 32 bits.
        self._columns: tuple[array[int], ...] = (
            array("I"),
            array("I"),
            array("I"),
            array("I"),
            array("H"),
            array("B"),
            array("H"),
            array("I"),
        )

    def _number(self, table: dict[str, int], value: str) -> int:
        found = table.get(value)
        if found is None:
            found = table[value] = len(table)
        return found

    def add(
        self,
        subject: str,
        domain: str,
        obj: str,
        act: str,
        scope: Scope,
        deny: bool,
        file: str,
        line: int,
    ) -> None:
        self.add_numbers(
            self.subject_number(subject),
            self.name_number(domain),
            self.name_number(obj),
            self.name_number(act),
            self.scope_number(scope),
            deny,
            self.file_number(file),
            line,
        )

    # The numbers of names, so a reader that has seen a field before (the same text on
    # another line) adds the line without looking its names up again (`add_numbers`).

    def subject_number(self, subject: str) -> int:
        return self._number(self._subjects, subject)

    def name_number(self, name: str) -> int:
        """Of a domain, resource type or action (one table for the three)."""
        return self._number(self._names, name)

    def scope_number(self, scope: Scope) -> int:
        scope_id = self._scopes.get(scope)
        if scope_id is None:
            scope_id = self._scopes[scope] = len(self._scopes)
        return scope_id

    def file_number(self, file: str) -> int:
        return self._number(self._files, file)

    def add_numbers(
        self,
        subject: int,
        domain: int,
        obj: int,
        act: int,
        scope: int,
        deny: bool,
        file: int,
        line: int,
    ) -> None:
        """A line whose names are numbers this builder gave (`subject_number`, ...)."""
        c = self._columns
        c[0].append(subject)
        c[1].append(domain)
        c[2].append(obj)
        c[3].append(act)
        c[4].append(scope)
        c[5].append(1 if deny else 0)
        c[6].append(file)
        c[7].append(line)

    def last_line(self) -> tuple[int, ...]:
        """The numbers of the line added last (subject, domain, type, action, scope, deny,
        file, line)."""
        return tuple(column[-1] for column in self._columns)

    def build(self, *, canonical: bool = False) -> RuleTable:
        return RuleTable(
            subjects=tuple(self._subjects),
            names=tuple(self._names),
            scopes=tuple(self._scopes),
            files=tuple(self._files),
            columns=self._columns,
            canonical=canonical,
        )
