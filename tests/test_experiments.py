"""Experiment helpers that decide what counts as a result: the paired bootstrap and the
dev-chosen retriever weight (grouprank_mini.experiments)."""
import pytest

from grouprank_mini import experiments, get_preset
from grouprank_mini.collection import Collection
from grouprank_mini.rerank import GroupwiseReranker, RankResult, RerankedRun


def test_bootstrap_interval_excludes_zero_only_for_a_consistent_gain():
    baseline = {str(q): 0.3 for q in range(40)}
    better = {q: v + 0.1 for q, v in baseline.items()}  # +0.1 on every query
    noisy = {q: v + (0.1 if int(q) % 2 else -0.1) for q, v in baseline.items()}  # +0.1 / -0.1 alternately
    gain = experiments.paired_bootstrap(better, baseline)
    assert gain["mean difference"] == pytest.approx(0.1) and gain["low"] > 0 and gain["wins"] == 40
    noise = experiments.paired_bootstrap(noisy, baseline)
    assert noise["mean difference"] == pytest.approx(0.0) and noise["low"] < 0 < noise["high"]
    assert (noise["wins"], noise["losses"]) == (20, 20)


def test_bootstrap_counts_a_missing_query_as_zero_and_rejects_empty():
    assert experiments.paired_bootstrap({}, {"q": 0.5})["mean difference"] == -0.5
    with pytest.raises(ValueError):
        experiments.paired_bootstrap({}, {})


def test_best_weight_is_chosen_from_the_model_scores_of_one_run():
    """q1: the model is right (d2 relevant), the retriever wrong: weight 0 wins; q2 is the same."""
    docs = {"d1": "a", "d2": "b"}
    collection = Collection("toy", docs, {"q1": "x", "q2": "y"}, {"q1": {"d2": 1}, "q2": {"d2": 1}})
    first_stage = {q: {"d1": 2.0, "d2": 1.0} for q in ("q1", "q2")}
    results = {q: RankResult({}, model_scores={"d1": 1.0, "d2": 9.0}) for q in ("q1", "q2")}
    reranker = GroupwiseReranker(None, get_preset("smoke"))
    weight, scores = experiments.best_weight(RerankedRun({}, results), reranker, first_stage, collection,
                                             weights=(0.0, 0.4, 0.95))
    assert weight == 0.0 and scores[0.0] == 1.0 and scores[0.95] < 1.0
