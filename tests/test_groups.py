"""Grouping and merging (grouprank_mini.groups): the arithmetic is checked against numbers
worked out by hand, so a change in the merge shows up as a wrong number, not a vague drift."""
import math
from collections import Counter

import pytest

from grouprank_mini import groups


@pytest.mark.parametrize("n, c", [(40, 10), (23, 5), (10, 5), (3, 10), (7, 1), (0, 4)])
def test_groups_cover_every_item_exactly_once(n, c):
    cut = groups.make_groups(n, c, seed=0)
    assert sorted(i for group in cut for i in group) == list(range(n))
    assert len(cut) == math.ceil(n / c)
    assert all(len(group) == c for group in cut[:-1])  # only the last group may be short


@pytest.mark.parametrize("n, c, passes", [(40, 10, 4), (23, 5, 3), (10, 5, 1)])
def test_every_pass_scores_every_item_exactly_once(n, c, passes):
    plan = groups.multi_pass_groups(n, c, passes, seed=3)
    per_pass = math.ceil(n / c)
    assert len(plan) == per_pass * passes
    for p in range(passes):
        assert Counter(i for group in plan[p * per_pass:(p + 1) * per_pass] for i in group) == Counter(range(n))


def test_grouping_is_deterministic_under_a_seed():
    assert groups.make_groups(40, 10, seed=7) == groups.make_groups(40, 10, seed=7)
    assert groups.multi_pass_groups(40, 10, 3, seed=7) == groups.multi_pass_groups(40, 10, 3, seed=7)


def test_grouping_differs_across_seeds_and_passes():
    assert groups.make_groups(40, 10, seed=0) != groups.make_groups(40, 10, seed=1)
    assert groups.multi_pass_groups(40, 10, 2, seed=0) != groups.multi_pass_groups(40, 10, 2, seed=1)
    first, second = groups.multi_pass_groups(40, 10, 2, seed=0)[:4], groups.multi_pass_groups(40, 10, 2, seed=0)[4:]
    assert first != second  # test-time scaling needs a new shuffle in every pass


def test_groups_are_shuffled_not_rank_sorted():
    # The paper's random grouping: the top-ranked candidates must not all land in group one.
    assert groups.make_groups(40, 10, seed=0)[0] != list(range(10))


def test_group_size_below_one_is_refused():
    with pytest.raises(ValueError):
        groups.make_groups(5, 0, seed=0)


def test_mean_over_passes_by_hand():
    # Pass 1: {0, 1} and {2}; pass 2: {2, 0} and {1}.
    plan = [[0, 1], [2], [2, 0], [1]]
    scores = [[4, 8], [6], [2, 10], [0]]
    # item 0: (4 + 10) / 2 = 7; item 1: (8 + 0) / 2 = 4; item 2: (6 + 2) / 2 = 4
    assert groups.mean_over_passes(plan, scores, 3) == [7.0, 4.0, 4.0]


def test_item_never_scored_gets_zero():
    assert groups.mean_over_passes([[0]], [[9]], 2) == [9.0, 0.0]


def test_interpolation_by_hand():
    model = {"a": 8, "b": 4, "c": 0}
    retriever = {"a": 1.0, "b": 3.0, "c": 2.0}  # min-max: a 0, b 1, c 0.5
    final = groups.interpolate(model, retriever, retriever_weight=0.4)
    # a: 0.6·0.8 + 0.4·0 = 0.48;  b: 0.6·0.4 + 0.4·1 = 0.64;  c: 0.6·0 + 0.4·0.5 = 0.2
    assert final == pytest.approx({"a": 0.48, "b": 0.64, "c": 0.2})


def test_weight_zero_turns_interpolation_off():
    final = groups.interpolate({"a": 8, "b": 4, "c": 0}, {"a": 1.0, "b": 3.0, "c": 2.0}, retriever_weight=0)
    assert final == pytest.approx({"a": 0.8, "b": 0.4, "c": 0.0})


def test_document_missing_from_retriever_counts_as_its_minimum():
    final = groups.interpolate({"a": 5, "b": 5}, {"a": 2.0, "z": 1.0}, retriever_weight=0.4)
    assert final == pytest.approx({"a": 0.3 + 0.4, "b": 0.3})


def test_ties_are_broken_by_first_stage_order():
    retriever = {"x": 9.0, "y": 7.0, "z": 8.0}  # first-stage order: x, z, y
    tied = {"y": 0.5, "z": 0.5, "x": 0.5}  # dict order deliberately different
    broken = groups.tie_break(tied, retriever)
    assert sorted(broken, key=broken.get, reverse=True) == ["x", "z", "y"]
    assert all(abs(broken[d] - 0.5) < 1e-6 for d in broken)  # far below one score step


def test_tie_break_keeps_distinct_scores_in_order_and_is_deterministic():
    scores = {"a": 0.2, "b": 0.9, "c": 0.5, "d": 0.5, "e": 0.2 + 1e-12}
    retriever = {"a": 5.0, "b": 1.0, "c": 2.0, "d": 4.0, "e": 3.0}
    broken = groups.tie_break(scores, retriever)
    assert sorted(broken, key=broken.get, reverse=True) == ["b", "d", "c", "e", "a"]
    assert broken == groups.tie_break(dict(reversed(scores.items())), retriever)


def test_tie_break_without_retriever_falls_back_to_id_order():
    broken = groups.tie_break({"b": 1.0, "a": 1.0, "c": 1.0}, {})
    assert sorted(broken, key=broken.get, reverse=True) == ["a", "b", "c"]
