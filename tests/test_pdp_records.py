"""Batched audit writes of decisions taken on the event loop (web/pdp_records.py)."""

from __future__ import annotations

from typing import Any, cast

from starlette.responses import Response

from idhub.core.authz.decisions import PolicyAnswers
from idhub.errors import AuditError
from idhub.web.pdp_records import ToRecord, record_all


class _Answers:
    """A policy snapshot whose writes the test sees (and fails on demand)."""

    def __init__(self, engine: object, fail_on: set[str] | None = None) -> None:
        self.engine = engine
        self.written: list[list[str]] = []
        self._fail_on = fail_on or set()

    def record_events(self, events: list[str]) -> None:
        if self._fail_on & set(events):
            raise AuditError("cannot write " + ",".join(sorted(self._fail_on & set(events))))
        self.written.append(list(events))


def _pending(answers: _Answers, *events: str) -> ToRecord:
    return ToRecord(
        answers=cast(PolicyAnswers, answers),
        events=cast(Any, list(events)),
        response=Response(",".join(events)),
    )


def test_checks_of_one_snapshot_are_written_together_in_order() -> None:
    engine = object()
    # One `PolicyAnswers` per request, all on the engine serving now.
    first, second, third = _Answers(engine), _Answers(engine), _Answers(engine)
    pending = [_pending(first, "a1", "a2"), _pending(second, "b"), _pending(third, "c")]
    assert record_all(pending) == [p.response for p in pending]
    assert first.written == [["a1", "a2", "b", "c"]]
    assert second.written == third.written == []


def test_engines_are_written_apart_and_a_failure_is_only_its_own_checks() -> None:
    old, new = _Answers(object()), _Answers(object(), fail_on={"bad"})
    pending = [_pending(old, "a"), _pending(new, "b"), _pending(new, "bad"), _pending(new, "d")]
    answered = record_all(pending)
    assert answered[0] is pending[0].response and answered[1] is pending[1].response
    assert isinstance(answered[2], AuditError)
    assert answered[3] is pending[3].response
    # The failed write rolled back as a whole; written again one by one, never twice.
    assert old.written == [["a"]]
    assert new.written == [["b"], ["d"]]
