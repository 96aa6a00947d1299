"""Cutting candidates into groups, and merging group scores into one ranking (docs/paper.md §1)."""
from __future__ import annotations

import random

from .runs import minmax, ranked_ids


def make_groups(n_items: int, group_size: int, seed: int) -> list[list[int]]:
    """Shuffle indices 0..n-1 with `seed` and cut them into disjoint groups of `group_size`.

    Random grouping beat rank-sorted grouping in the paper: each group mixes strong and
    weak candidates, so the model always has something to compare against.
    """
    if group_size < 1:
        raise ValueError("group_size must be at least 1")
    order = list(range(n_items))
    random.Random(seed).shuffle(order)
    return [order[i:i + group_size] for i in range(0, n_items, group_size)]


def multi_pass_groups(n_items: int, group_size: int, passes: int, seed: int) -> list[list[int]]:
    """Groups for `passes` test-time-scaling passes, each pass with its own shuffle.

    Every item appears exactly once in every pass.
    """
    return [group for p in range(passes) for group in make_groups(n_items, group_size, seed * 1000 + p)]


def window_starts(n: int, window: int, step: int) -> list[int]:
    """Start offsets of a back-to-front sliding window over n items (RankGPT's schedule):
    the best documents bubble up from the bottom of the list, one overlapping window at a time."""
    starts, start = [], max(n - window, 0)
    while True:
        starts.append(start)
        if start == 0:
            return starts
        start = max(start - step, 0)


def mean_over_passes(groups: list[list[int]], group_scores: list[list[float]], n_items: int) -> list[float]:
    """Each item's mean score over all the groups it appeared in."""
    totals, counts = [0.0] * n_items, [0] * n_items
    for group, scores in zip(groups, group_scores):
        for item, score in zip(group, scores):
            totals[item] += score
            counts[item] += 1
    return [t / c if c else 0.0 for t, c in zip(totals, counts)]


def interpolate(model_scores: dict[str, float], retriever_scores: dict[str, float], retriever_weight: float) -> dict[str, float]:
    """final = (1-w)·score/10 + w·norm(retriever), as the authors' code does (w = 0.4).

    With w = 0 this is just the model's 0-10 score scaled to [0, 1].
    """
    if not retriever_weight:
        return {d: s / 10 for d, s in model_scores.items()}
    norm = minmax(retriever_scores)
    return {d: (1 - retriever_weight) * s / 10 + retriever_weight * norm.get(d, 0.0) for d, s in model_scores.items()}


def tie_break(scores: dict[str, float], retriever_scores: dict[str, float]) -> dict[str, float]:
    """Break ties in `scores` by the first-stage order (then by id) with tiny decreasing offsets,
    so a ranking never depends on dict order. The offsets are far below one score step."""
    first_stage = {d: r for r, d in enumerate(ranked_ids(retriever_scores))} if retriever_scores else {}
    order = sorted(scores, key=lambda d: (-scores[d], first_stage.get(d, len(first_stage)), d))
    return {d: scores[d] - rank * 1e-9 for rank, d in enumerate(order)}
