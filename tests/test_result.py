"""Ranking (``Selection.rank``), the eval-column lookup and the Student-t interval, checked
against properties and closed forms rather than against their own output."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from jaxtune.engine.aggregate import t_interval
from jaxtune.engine.history import eval_column
from jaxtune.engine.selection import Selection

_VALUES = st.dictionaries(
    st.integers(0, 50),
    st.one_of(st.sampled_from([0.0, 1.0, math.nan, math.inf, -math.inf]), st.floats(-5, 5)),
    max_size=12,
)


@pytest.mark.parametrize("mode", ["max", "min"])
@given(values=_VALUES)
def test_rank_is_best_first_non_finite_last_ties_by_id(mode, values):
    order = Selection("valid.x", mode).rank(values)
    assert sorted(order) == sorted(values)
    finite = [i for i in order if math.isfinite(values[i])]
    assert order[: len(finite)] == finite  # every finite value before every non-finite one
    assert order[len(finite) :] == sorted(i for i in values if not math.isfinite(values[i]))
    for a, b in zip(finite, finite[1:], strict=False):
        va, vb = values[a], values[b]
        assert (va > vb if mode == "max" else va < vb) or (va == vb and a < b)


def test_rank_examples():
    assert Selection("valid.loss", "min").rank({3: 0.2, 1: 0.2, 0: math.nan, 2: 0.1}) == [
        2,
        1,
        3,
        0,
    ]
    assert Selection("valid.accuracy", "max").rank({}) == []
    assert not hasattr(Selection, "better")


def test_eval_column_finds_the_evaluation_and_names_the_steps_otherwise():
    history = {"eval_step": np.array([10, 20, 30], np.int32)}
    assert [eval_column(history, s) for s in (10, 20, 30)] == [0, 1, 2]
    with pytest.raises(ValueError, match=r"step = 25 was not evaluated.*\[10, 20, 30\]"):
        eval_column(history, 25)


def test_t_interval_matches_the_closed_form():
    v = np.array([0.31, 0.29, 0.35, 0.30])
    half = stats.t.ppf(0.975, 3) * np.std(v, ddof=1) / math.sqrt(4)
    np.testing.assert_allclose(t_interval(v), [v.mean(), v.mean() - half, v.mean() + half])
    half90 = stats.t.ppf(0.95, 3) * np.std(v, ddof=1) / math.sqrt(4)
    np.testing.assert_allclose(t_interval(v, 0.9)[2], v.mean() + half90)


def test_t_interval_edge_cases_are_quiet():
    mean, low, high = t_interval([0.5])
    assert mean == 0.5 and math.isnan(low) and math.isnan(high)
    assert t_interval([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    mean, low, high = t_interval([1.0, math.inf])
    assert mean == math.inf and math.isnan(low) and math.isnan(high)
