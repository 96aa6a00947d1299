"""First-stage retrieval (BM25, dense with its embeddings cache, hybrid) and evaluation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from grouprank_mini.data import Collection
from grouprank_mini.evaluate import evaluate, remove_excluded
from grouprank_mini.retrieval import BM25, Dense, embeddings_cache_path, hybrid
from grouprank_mini.runs import minmax, ranked_ids, top_k

# BM25 nDCG@10 over all judged queries, as data/README.md lists them (bm25s, English stop words, top 100).
BM25_NDCG10 = {"cranfield": 0.336, "cisi": 0.349, "adi": 0.446, "vaswani": 0.353}


@pytest.mark.parametrize("name", sorted(BM25_NDCG10))
def test_bm25_matches_sanity_figures(name, collections):
    collection = collections[name]
    judged = {qid: collection.queries[qid] for qid in collection.judged_queries()}
    run = BM25(collection).search(judged, k=100)
    assert all(len(docs) == min(100, len(collection.docs)) for docs in run.values())  # ADI has only 82
    assert evaluate(run, collection)["nDCG@10"] == pytest.approx(BM25_NDCG10[name], abs=0.02)


# --- score fusion and ranking, by hand ----------------------------------------------------------

def test_minmax():
    assert minmax({"a": 2.0, "b": 4.0, "c": 3.0}) == {"a": 0.0, "b": 1.0, "c": 0.5}
    assert minmax({"a": 7.0, "b": 7.0}) == {"a": 1.0, "b": 1.0}
    assert minmax({}) == {}


def test_hybrid_by_hand():
    sparse = {"q": {"a": 10.0, "b": 5.0, "c": 0.0}}  # normalised: a 1, b 0.5, c 0
    dense = {"q": {"b": 0.9, "d": 0.5, "a": 0.1}}  # normalised: b 1, d 0.5, a 0
    fused = hybrid(sparse, dense, alpha=0.5)
    assert fused["q"] == pytest.approx({"b": 0.75, "a": 0.5, "d": 0.25, "c": 0.0})
    assert list(fused["q"]) == ["b", "a", "d", "c"]
    assert hybrid(sparse, dense, alpha=0.8)["q"] == pytest.approx({"a": 0.8, "b": 0.6, "d": 0.1, "c": 0.0})
    assert hybrid(sparse, dense, alpha=0.5, k=2)["q"] == pytest.approx({"b": 0.75, "a": 0.5})


def test_hybrid_keeps_queries_found_by_one_retriever_only():
    fused = hybrid({"q1": {"a": 1.0, "b": 0.0}}, {"q2": {"c": 3.0}}, alpha=0.25)
    assert fused == {"q1": {"a": 0.25, "b": 0.0}, "q2": {"c": 0.75}}


def test_ranked_ids_breaks_ties_by_id():
    assert ranked_ids({"b": 1.0, "a": 1.0, "c": 2.0, "10": 1.0}) == ["c", "10", "a", "b"]
    assert top_k({"q": {"b": 1.0, "a": 1.0, "c": 2.0}}, 2) == {"q": {"c": 2.0, "a": 1.0}}


# --- evaluation on the toy collection (conftest), by hand ------------------------------------

# q1 ranks d3 (gain 0), d1 (2), d5 (unjudged), d2 (1); q2 ranks its only relevant doc first.
TOY_RUN = {"q1": {"d3": 0.9, "d1": 0.8, "d5": 0.7, "d2": 0.6}, "q2": {"d4": 0.5, "d1": 0.4}, "q3": {"d5": 1.0}}
Q1_NDCG = (2 / math.log2(3) + 1 / math.log2(5)) / (2 + 1 / math.log2(3))  # linear gains, as trec_eval


def test_evaluate_by_hand(toy):
    scores = evaluate(TOY_RUN, toy)  # q3 has no relevant document: not part of the mean
    assert scores["nDCG@10"] == pytest.approx((Q1_NDCG + 1.0) / 2)
    assert scores["RR@10"] == pytest.approx((1 / 2 + 1) / 2)
    assert scores["R@10"] == pytest.approx(1.0)
    assert scores["AP"] == pytest.approx(((1 / 2 + 2 / 4) / 2 + 1) / 2)
    assert evaluate(TOY_RUN, toy, qids=["q1", "q3"])["nDCG@10"] == pytest.approx(Q1_NDCG)


def test_query_missing_from_run_counts_zero(toy):
    assert evaluate({"q1": TOY_RUN["q1"]}, toy)["nDCG@10"] == pytest.approx(Q1_NDCG / 2)


def test_excluded_ids_are_removed_before_scoring(toy):
    excluding = Collection("toy", toy.docs, toy.queries, toy.qrels, excluded={"q1": {"d3"}})
    assert "d3" not in remove_excluded(TOY_RUN, excluding)["q1"]
    assert remove_excluded(TOY_RUN, excluding)["q2"] == TOY_RUN["q2"]
    scores = evaluate(TOY_RUN, excluding, qids=["q1"])  # now d1, d5, d2
    assert scores["nDCG@10"] == pytest.approx((2 + 1 / math.log2(4)) / (2 + 1 / math.log2(3)))
    assert scores["RR@10"] == pytest.approx(1.0)
    assert scores["AP"] == pytest.approx((1 + 2 / 3) / 2)


# --- dense retrieval and its embeddings cache ----------------------------------------------------

@pytest.fixture(scope="module")
def cache_home(tmp_path_factory):
    """A fresh GROUPRANK_CACHE for this module, so cache hits and misses are known."""
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("grouprank-cache")
        patch.setenv("GROUPRANK_CACHE", str(home))
        yield home


@pytest.fixture(scope="module")
def adi_dense(adi, cache_home) -> Dense:
    return Dense(adi)


def test_dense_first_build_encodes_and_caches(adi_dense, cache_home):
    assert not adi_dense.from_cache
    assert adi_dense.cache_path.parent == cache_home / "embeddings"
    assert adi_dense.matrix.shape == (82, 384)
    assert np.linalg.norm(adi_dense.matrix, axis=1) == pytest.approx(np.ones(82), abs=1e-4)
    assert np.array_equal(np.load(adi_dense.cache_path), adi_dense.matrix)


def test_dense_finds_known_relevant_documents(adi_dense, adi):
    run = adi_dense.search(adi.queries, k=100)
    assert ranked_ids(run["2"])[0] == "71"  # ADI.REL: query 2 -> 12, 71
    assert {"3", "43", "45", "60"} <= set(ranked_ids(run["3"])[:10])  # query 3's four relevant docs
    assert evaluate(run, adi)["nDCG@10"] == pytest.approx(0.498, abs=0.02)  # README's MiniLM figure


def test_dense_second_build_reuses_cache(adi, adi_dense, monkeypatch):
    encoded = []
    original = Dense.encode

    def counting_encode(self, texts, *args, **kwargs):
        encoded.append(len(texts))
        return original(self, texts, *args, **kwargs)

    monkeypatch.setattr(Dense, "encode", counting_encode)
    again = Dense(adi)
    assert again.from_cache and encoded == []
    assert again.cache_path == adi_dense.cache_path
    assert np.array_equal(again.matrix, adi_dense.matrix)


def test_cache_key_follows_model_ids_and_texts():
    docs = {"d1": "shock waves", "d2": "heat"}
    key = embeddings_cache_path("model-a", docs)
    assert key == embeddings_cache_path("model-a", dict(docs))
    assert key != embeddings_cache_path("model-b", docs)
    assert key != embeddings_cache_path("model-a", {"d1": "shock waves", "d2": "heat!"})
    assert key != embeddings_cache_path("model-a", {"d1": "shock waves", "d3": "heat"})


TINY = Collection("tiny", {"a": "shock waves in tubes", "b": "heat conduction in slabs", "c": "library catalogues"},
                  {"q": "heat"}, {"q": {"b": 1}})


@pytest.mark.parametrize("damage", ["truncate", "wrong_shape", "garbage"])
def test_damaged_cache_is_recomputed(cache_home, damage):
    first = Dense(TINY)
    path = first.cache_path
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "wrong_shape":
        np.save(path, np.zeros((2, 384), dtype=np.float32))
    else:
        path.write_bytes(b"not an array")
    rebuilt = Dense(TINY)
    assert not rebuilt.from_cache
    assert np.allclose(rebuilt.matrix, first.matrix, atol=1e-5)
    assert np.allclose(np.load(path), first.matrix, atol=1e-5)  # rewritten whole
    assert ranked_ids(rebuilt.search(TINY.queries)["q"])[0] == "b"
    assert not list(path.parent.glob("*.tmp"))  # the temporary file was renamed, not left behind


def test_first_stage_run_follows_the_preset(adi, cache_home):
    from grouprank_mini import get_preset
    from grouprank_mini.retrieval import bm25_run, first_stage_run, first_stage_runs

    qids = list(adi.queries)[:3]
    hybrid_preset = get_preset("smoke", first_stage="hybrid")
    assert first_stage_run(adi, hybrid_preset, qids, 10) == first_stage_runs(adi, hybrid_preset, qids, 10)["hybrid"]
    assert first_stage_run(adi, get_preset("smoke"), qids, 10) == bm25_run(adi, get_preset("smoke"), qids, 10)
    with pytest.raises(ValueError, match="first_stage='splade'"):
        first_stage_run(adi, get_preset("smoke", first_stage="splade"), qids)
