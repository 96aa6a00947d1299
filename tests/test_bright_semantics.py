"""BRIGHT's excluded ids, honoured as BRIGHT's own scripts do: dropped from every candidate
list before it is cut to top k (first stage, synthesis pools, reranking) and again at evaluation.

The fixture is a BRIGHT-schema folder (tests/hub_folders.py) in which two documents a query
excludes (the same problem, restated) are among BM25's ten best for it."""
from __future__ import annotations

from dataclasses import replace

import pytest
from hub_folders import bright_example, write_bright

from grouprank_mini import get_preset, synthesis
from grouprank_mini.data import load_collection
from grouprank_mini.evaluate import evaluate, remove_excluded
from grouprank_mini.rerank import RankResult, Reranker
from grouprank_mini.retrieval import BM25, bm25_run, first_stage_runs

PRESET = get_preset("smoke")
EXCLUDED = {"x1", "x2"}
QUERY = "two sum: indices of two numbers in an array that add up to a target, with a hash map"
DOCS = [
    {"id": "x1", "content": "Two sum. Return the indices of the two numbers in the array that add up to target."},
    {"id": "x2", "content": "Two sum, hash map solution: indices of two numbers adding up to a target."},
    {"id": "g1", "content": "A hash map answers membership queries in constant time, so one pass over the array "
                            "finds a complement."},
] + [{"id": f"f{i:02d}", "content": f"note {i}: " + " ".join(["array"] * (1 + i % 4) + ["numbers"] * (i % 3)
                                                              + ["target"] * (i % 2) + ["filler"] * i)}
     for i in range(1, 25)]


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bright") / "BRIGHT"
    tables = {("examples", "leetcode"): [bright_example("0", QUERY, ["g1"], [], sorted(EXCLUDED)),
                                         bright_example("1", "array numbers", ["f03"], [], ["N/A"])],
              ("documents", "leetcode"): DOCS}
    return load_collection(f"bright:leetcode@{write_bright(folder, tables)}")


def test_excluded_documents_are_in_bm25s_top_ten_without_the_exclusion(collection):
    ignoring = BM25(replace(collection, excluded={})).search({"0": QUERY}, k=10)["0"]
    assert EXCLUDED <= set(ignoring)  # the fixture puts them where they would take slots


def test_first_stage_drops_excluded_before_top_k(collection):
    everything = list(BM25(replace(collection, excluded={})).search({"0": QUERY}, k=len(DOCS))["0"])
    run = bm25_run(collection, PRESET, ["0", "1"], k=10)
    assert len(run["0"]) == 10 and not EXCLUDED & set(run["0"])
    assert list(run["0"]) == [d for d in everything if d not in EXCLUDED][:10]  # the 11th and 12th move up
    assert len(run["1"]) == 10  # a query without exclusions is cut as before


def test_dense_and_hybrid_drop_excluded_before_top_k(collection):
    runs = first_stage_runs(collection, PRESET, ["0"], k=10)
    for name, run in runs.items():
        assert len(run["0"]) == 10 and not EXCLUDED & set(run["0"]), name


def test_synthesis_pools_hold_no_excluded_document(collection):
    retrievers = synthesis.build_retrievers(collection, PRESET)
    pools = synthesis.candidate_pools(synthesis.hybrid_run(collection, ["0"], PRESET, retrievers), PRESET)
    assert len(pools["0"]) == PRESET.pool_top_k + PRESET.pool_random_m and not EXCLUDED & set(pools["0"])


class Recorder(Reranker):
    """A reranker that keeps the first-stage order and records what it was asked to rank."""

    name = "recorder"

    def __init__(self, preset):
        super().__init__(backend=None, preset=preset)
        self.asked: list[list[str]] = []

    def rank_many(self, requests):
        self.asked += [list(docs) for _, docs, _ in requests]
        return [RankResult(dict(first_stage)) for _, _, first_stage in requests]


def test_reranking_never_spends_a_slot_on_an_excluded_document(collection):
    # a first-stage run from elsewhere (a file, another retriever) may still hold excluded ids
    ignoring = BM25(replace(collection, excluded={})).search({"0": QUERY}, k=20)
    reranker = Recorder(PRESET)
    reranked = reranker.rerank_run(collection, ignoring, depth=10)
    assert len(reranker.asked[0]) == 10 and not EXCLUDED & set(reranker.asked[0])
    assert not EXCLUDED & set(reranked.run["0"])
    top10 = sorted(reranked.run["0"], key=reranked.run["0"].get, reverse=True)[:10]
    assert set(top10) == set(reranker.asked[0])  # every evaluated top-10 document was reranked


def test_evaluation_still_drops_excluded_ids(collection):
    run = {"0": {"x1": 3.0, "g1": 2.0, "f01": 1.0}}
    assert remove_excluded(run, collection) == {"0": {"g1": 2.0, "f01": 1.0}}
    assert evaluate(run, collection, qids=["0"])["nDCG@10"] == pytest.approx(1.0)
