"""The champion gate's verdict and the audit trail's rollback target, on plain figures (fast)."""

import datetime
import math

import pytest

from orchestrator.errors import SearchError
from orchestrator.promotion.audit import Move, format_history, rollback_target
from orchestrator.promotion.gate import DEFAULT_MARGINS, Check, GateResult, parse_margins


def test_margins_default_and_override_by_objective():
    assert parse_margins([]) == DEFAULT_MARGINS == {"accuracy": -0.02, "shape_bias": -0.01}
    assert parse_margins(["shape_bias=0", "cue_decision_rate=-0.1"]) == {
        "accuracy": -0.02,
        "shape_bias": 0.0,
        "cue_decision_rate": -0.1,
    }
    for bad in ("loss=0.1", "shape_bias", "shape_bias=a lot", "accuracy=nan"):
        with pytest.raises(SearchError, match=f"bad --gate '{bad}'.*accuracy, shape_bias, cue_decision_rate"):
            parse_margins([bad])


def gate(*checks):
    return GateResult("3", tuple(Check(m, m + "_holdout", a, b, margin) for m, a, b, margin in checks))


def test_a_challenger_worse_beyond_a_margin_is_refused_with_the_evidence():
    worse = gate(("accuracy", 0.80, 0.79, -0.02), ("shape_bias", 0.40, 0.37, -0.01))
    assert not worse.passed
    assert [c.passed for c in worse.checks] == [True, False]
    refusal = worse.refusal()
    assert (
        "worse than version 3" in refusal and "shape_bias_holdout 0.3700 vs 0.4000 (-0.0300, margin -0.01)" in refusal
    )
    assert "accuracy" not in refusal.split("margin on")[1].split(";")[0]
    assert "WORSE" in worse.table() and "\n" not in refusal


def test_a_better_or_equal_challenger_passes_and_a_nan_never_does():
    better = gate(("accuracy", 0.80, 0.81, -0.02), ("shape_bias", 0.40, 0.40, 0.0))
    assert better.passed and better.summary().startswith("passed against version 3")
    assert not gate(("shape_bias", 0.40, math.nan, -1.0)).passed


def move(action, old, new, alias="production"):
    when = datetime.datetime(2026, 12, 5, tzinfo=datetime.UTC)
    return Move("m", alias, action, old, new, "why", "none", "ann", when, "r")


def test_rollback_goes_to_where_the_current_version_came_from():
    moves = [move("promote", "", "1"), move("promote", "1", "2"), move("promote", "2", "3")]
    assert rollback_target(moves, "3", "m", "production") == "2"
    # A rollback is itself a move: a second one undoes the first.
    assert rollback_target([*moves, move("rollback", "3", "2")], "2", "m", "production") == "3"
    with pytest.raises(SearchError, match="version 1 is the first version"):
        rollback_target(moves[:1], "1", "m", "production")
    with pytest.raises(SearchError, match="moved outside run_search.py.*--to VERSION"):
        rollback_target(moves, "7", "m", "production")
    with pytest.raises(SearchError, match="is not set"):
        rollback_target(moves, None, "m", "production")


def test_history_says_when_an_alias_was_moved_outside_the_commands():
    moves = [move("promote", "", "1"), move("promote", "1", "2")]
    assert "moved outside" not in format_history(moves, {"production": "2"})
    assert "alias 'production' is on version 1, but the last recorded move put it on 2" in format_history(
        moves, {"production": "1"}
    )
