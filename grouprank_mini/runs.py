"""Runs and rankings, the currency every stage trades in.

A *run* is ``{query id: {doc id: score}}``, higher is better: the dict-of-dicts ir-measures
reads directly. A *ranking* is a list of doc ids, best first. These helpers turn one into
the other, deterministically (ties never depend on dict order).
"""
from __future__ import annotations

Run = dict[str, dict[str, float]]


def ranked_ids(scores: dict[str, float]) -> list[str]:
    """Doc ids best first; ties broken by id so every ranking is deterministic."""
    return sorted(scores, key=lambda doc_id: (-scores[doc_id], doc_id))


def rank_by_scores(doc_ids: list[str], scores: list[float]) -> list[str]:
    """Ids by descending score; equal scores keep the given order (sorted() is stable)."""
    order = sorted(range(len(doc_ids)), key=lambda i: -scores[i])
    return [doc_ids[i] for i in order]


def top_k(run: Run, k: int) -> Run:
    return {qid: {d: scores[d] for d in ranked_ids(scores)[:k]} for qid, scores in run.items()}


def order_scores(order: list[str], start: float | None = None) -> dict[str, float]:
    """Scores for a ranking: `start`, start - 1, ... down the list (default start: its length),
    so the order survives any evaluation that sorts by score."""
    start = float(len(order)) if start is None else start
    return {doc_id: start - i for i, doc_id in enumerate(order)}


def from_orders(rankings: dict[str, list[str]]) -> Run:
    """Rankings of several queries as a run."""
    return {qid: order_scores(order) for qid, order in rankings.items()}


def minmax(scores: dict[str, float]) -> dict[str, float]:
    """Min-max normalise one query's scores to [0, 1] (all equal -> all 1)."""
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    span = high - low
    return {d: (s - low) / span if span else 1.0 for d, s in scores.items()}
