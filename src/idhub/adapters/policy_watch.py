"""Which policy files changed since the last look: what `[policy] watch = true` runs on.

Uses watchfiles (inotify) and falls back to comparing modification times. Each `take` waits
at most a fraction of a second, so the job calling it stops promptly.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

# watchfiles: wait up to this long for a change, then let a burst of edits settle.
_WAIT_MS = 200
_DEBOUNCE_MS = 300


class PolicyDirChanges:
    def __init__(self, root: Path) -> None:
        self._root = root
        self._events: Generator[set[tuple[Any, str]], None, None] | None = None
        self._stamps: dict[str, float] | None = None

    def take(self) -> set[str]:
        """The paths changed since the previous call (the first call starts watching)."""
        try:
            from watchfiles import watch
        except ImportError:  # pragma: no cover - watchfiles ships with uvicorn[standard]
            return self._take_by_mtime()
        if self._events is None:
            self._events = watch(
                self._root,
                debounce=_DEBOUNCE_MS,
                rust_timeout=_WAIT_MS,
                yield_on_timeout=True,
                raise_interrupt=False,
            )
        return {path for _kind, path in next(self._events)}

    def _take_by_mtime(self) -> set[str]:
        now = {str(p): p.stat().st_mtime for p in self._root.rglob("*") if p.is_file()}
        before, self._stamps = self._stamps, now
        if before is None:
            return set()
        return {k for k in now.keys() | before.keys() if now.get(k) != before.get(k)}

    def close(self) -> None:
        events, self._events = self._events, None
        self._stamps = None
        if events is not None:
            try:
                events.close()
            except ValueError:  # still inside `take` on a thread that did not stop in time
                pass
