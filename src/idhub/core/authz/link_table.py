"""Role links as columns of numbers, the form the policy lines already have (`rule_table`).

An engine at 100,000 policy lines holds ~113,000 links (static ones and those derived from
the assignment rules, `*` expanded to every domain). As `Link` tuples, with a list of them per
(domain, member), they were ~20 MB of a worker's memory; as six integer columns into one table
of the distinct texts (members, roles, domains, anchors, origins) and one of the sources, and a
next-link column instead of the lists, ~11 MB less (tracemalloc of one load and warm-up).
A `Link` is made only when one is asked for (an explanation's chains, `policy diff`, the
pycasbin comparison)."""

from __future__ import annotations

from array import array
from collections.abc import Iterator

from idhub.core.authz.model import Link, Source

_NONE = -1  # an anchor of None: the member's own department


class LinkTable:
    """Link number -> member, role, domain, source, anchor and origin, each a number into
    `texts` (or `sources`); links keep the order they were added in."""

    __slots__ = (
        "_ids",
        "_source_ids",
        "anchor",
        "domain",
        "member",
        "origin",
        "role",
        "source",
        "sources",
        "texts",
    )

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.sources: list[Source] = []
        self._ids: dict[str, int] = {}
        self._source_ids: dict[Source, int] = {}
        self.member = array("i")
        self.role = array("i")
        self.domain = array("i")
        self.source = array("i")
        self.anchor = array("i")
        self.origin = array("i")

    def text_id(self, text: str) -> int:
        found = self._ids.get(text)
        if found is None:
            found = self._ids[text] = len(self.texts)
            self.texts.append(text)
        return found

    def add(
        self,
        member: str,
        role: str,
        domain: str,
        source: Source,
        anchor: str | None,
        origin: str,
    ) -> None:
        text_id = self.text_id
        source_id = self._source_ids.get(source)
        if source_id is None:
            source_id = self._source_ids[source] = len(self.sources)
            self.sources.append(source)
        self.member.append(text_id(member))
        self.role.append(text_id(role))
        self.domain.append(text_id(domain))
        self.source.append(source_id)
        self.anchor.append(_NONE if anchor is None else text_id(anchor))
        self.origin.append(text_id(origin))

    def done(self) -> None:
        """Drops what only adding needed (the lookups from text and source to number)."""
        self._ids = {}
        self._source_ids = {}

    def role_of(self, i: int) -> str:
        return self.texts[self.role[i]]

    def anchor_of(self, i: int) -> str | None:
        a = self.anchor[i]
        return None if a == _NONE else self.texts[a]

    def __len__(self) -> int:
        return len(self.member)

    def __getitem__(self, i: int) -> Link:
        texts = self.texts
        return Link(
            texts[self.member[i]],
            texts[self.role[i]],
            texts[self.domain[i]],
            self.sources[self.source[i]],
            self.anchor_of(i),
            texts[self.origin[i]],
        )

    def __iter__(self) -> Iterator[Link]:
        for i in range(len(self.member)):
            yield self[i]

    def __eq__(self, other: object) -> bool:
        """The same links in the same order (their numbering may differ)."""
        if not isinstance(other, LinkTable):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # compared by content, and it is built in place
