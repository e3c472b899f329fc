"""The session's state machine: the table of transitions, and `_enter` refusing the rest."""

from __future__ import annotations

import itertools

import pytest

from edge.state import TRANSITIONS, IllegalTransition, State, check_transition

ALLOWED = {
    (State.AUTHENTICATING, State.OPEN),
    (State.AUTHENTICATING, State.CLOSING),
    (State.AUTHENTICATING, State.CLOSED),
    (State.OPEN, State.CLOSING),
    (State.OPEN, State.CLOSED),
    (State.CLOSING, State.CLOSED),
}


@pytest.mark.parametrize(("current", "target"), list(itertools.product(State, State)))
def test_only_the_listed_transitions_are_allowed(current: State, target: State) -> None:
    if (current, target) in ALLOWED:
        check_transition(current, target)
    else:
        with pytest.raises(IllegalTransition):
            check_transition(current, target)


def test_the_table_is_the_diagram() -> None:
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == ALLOWED
    assert TRANSITIONS[State.CLOSED] == frozenset(), "CLOSED is final"
