"""Change marks: how far an incremental directory search has read.

OpenLDAP's `modifyTimestamp` is GeneralizedTime with one-second resolution; Active
Directory's `uSNChanged` is a per-server counter that only grows.
"""

from __future__ import annotations

import calendar
import re
import time
from typing import Literal

ChangeMark = Literal["timestamp", "usn"]


def later_mark(a: str | None, b: str | None, kind: ChangeMark) -> str | None:
    """The later of two change marks (GeneralizedTime strings or AD USNs)."""
    if a is None:
        return b
    if b is None:
        return a
    if kind == "usn":
        try:
            return a if int(a) >= int(b) else b
        except ValueError:
            return a
    # GeneralizedTime from one server has one format; compare without the zone suffix.
    return a if a.rstrip("Z") >= b.rstrip("Z") else b


def settled_mark(mark: str | None, kind: ChangeMark, *, now: float, skew: float) -> str | None:
    """The lower bound (inclusive) the next incremental search may use.

    A GeneralizedTime mark has one-second resolution, so entries changed later in the same
    second as the newest one seen would be missed by a strict "after". The mark therefore
    moves past a second only once that second lies `skew` seconds in the past by our clock
    (so it is certainly over on the directory's clock too); until then the boundary second is
    read again, which is harmless because applying an unchanged entry is a no-op.
    USNs are strictly increasing counters and need none of this.
    """
    if mark is None or kind == "usn":
        return mark
    found = re.match(r"^(\d{14})", mark)
    if not found:
        return mark
    try:
        moment = calendar.timegm(time.strptime(found.group(1), "%Y%m%d%H%M%S"))
    except ValueError:
        return mark
    if moment + 1 + skew > now:
        return mark
    return time.strftime("%Y%m%d%H%M%SZ", time.gmtime(moment + 1))
