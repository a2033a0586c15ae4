"""A plain pycasbin enforcer on the same model and effective policy as an `Engine`.

Not used to answer requests (it scans every line); it is the yardstick the differential tests
and the benchmark compare `Engine` with.
"""

from __future__ import annotations

import casbin
from casbin.persist.adapter import Adapter

from idhub.core.authz.engine import Engine
from idhub.core.authz.model import canonical_model_text


class _RowsAdapter(Adapter):  # type: ignore[misc]
    def __init__(self, p_rows: list[list[str]], g_rows: list[list[str]]) -> None:
        self._p = p_rows
        self._g = g_rows

    def load_policy(self, model: object) -> None:
        # Appended directly, as the file adapter does; add_policies would drop duplicates.
        model.model["p"]["p"].policy.extend(list(r) for r in self._p)  # type: ignore[attr-defined]
        model.model["g"]["g"].policy.extend(list(r) for r in self._g)  # type: ignore[attr-defined]


def reference_enforcer(engine: Engine) -> casbin.Enforcer:
    model = casbin.Enforcer.new_model(text=canonical_model_text())
    p_rows, g_rows = engine.casbin_rows()
    enforcer = casbin.Enforcer(model, _RowsAdapter(p_rows, g_rows))
    enforcer.add_function("scopeMatch", engine.scope_function())
    return enforcer
