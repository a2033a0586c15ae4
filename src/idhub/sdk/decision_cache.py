"""A short memory of the decision API's answers, so a page that asks the same question for
every row (or every request of a page) asks idhub once.

An answer is served for `ttl` seconds at most, and only while it is of the newest policy
version seen: every answer carries `policy_version`, and an answer of another version empties
the cache (a policy reload or a directory change anywhere shows in the next answer). Answers
about somebody idhub does not know are not kept: that person may exist a moment later.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


# `resource` members and the request fields they stand for (the API takes either).
_RESOURCE_FIELDS = {"id": "resource_id", "owner": "owner", "dept": "dept"}


def cache_key(kind: str, request: Mapping[str, Any]) -> str:
    """One text per question: every field counts, in any order, and `resource.owner` is the
    same question as `owner` (what `check` sends and a `check_many` entry may say)."""
    flat = {k: v for k, v in request.items() if k != "resource"}
    resource = request.get("resource")
    if isinstance(resource, Mapping):
        for name, value in resource.items():
            flat[_RESOURCE_FIELDS.get(name, "resource." + str(name))] = value
    if "resource_id" in flat and type(flat["resource_id"]) is int:
        flat["resource_id"] = str(flat["resource_id"])  # idhub takes 7 and "7" alike
    return kind + json.dumps(flat, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


class DecisionCache(Generic[T]):
    def __init__(
        self, *, ttl: float, size: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self._size = size
        self._clock = clock
        self._entries: OrderedDict[str, tuple[T, float]] = OrderedDict()
        self.version = ""
        self._lock = threading.Lock()

    def get(self, key: str) -> T | None:
        entry = self._entries.get(key)
        if entry is None or entry[1] <= self._clock():
            return None
        return entry[0]

    def saw(self, version: str) -> None:
        """An answer of `version` arrived: forget every answer of another version."""
        if version != self.version:
            with self._lock:
                if version != self.version:
                    self._entries.clear()
                    self.version = version

    def put(self, key: str, value: T, version: str) -> None:
        self.saw(version)
        if self.ttl <= 0:
            return
        with self._lock:
            if version != self.version:
                return  # a newer version arrived meanwhile
            self._entries[key] = (value, self._clock() + self.ttl)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
