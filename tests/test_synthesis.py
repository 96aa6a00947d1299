"""Answer-free data synthesis (grouprank_mini.synthesis): hand-computed fusion, interval
sampling and targets, leak checks against the query split, and small builds on Cranfield.

The builds use the first 150 Cranfield documents (all 225 queries and their judgments, so
the split is Cranfield's own) and the offline teachers, to stay fast on two cores.
"""
import hashlib
import json
import math
import random
import shutil

import pytest
from datasets import load_from_disk

from grouprank_mini import get_preset, synthesis
from grouprank_mini.data import Collection, split_queries
from grouprank_mini.parsing import parse_group_scores
from grouprank_mini.synthesis import (fuse, fusion_scores, group_targets, interval_sample, sample_groups,
                                      sample_pool, target_score)

# Pin the teachers: these tests must not change when the presets' defaults do.
SMOKE = get_preset("smoke", pointwise_teacher="bm25", listwise_teacher="minilm")


# --- fusion ---------------------------------------------------------------------------------------

def test_fusion_scores_hand_computed():
    scores = fusion_scores(["a", "b", "c"], ["c", "a", "b"], beta=0.5)
    assert scores["a"] == pytest.approx(-0.5 * math.log(2))  # ranks (1, 2)
    assert scores["b"] == pytest.approx(-0.5 * math.log(2) - 0.5 * math.log(3))  # ranks (2, 3)
    assert scores["c"] == pytest.approx(-0.5 * math.log(3))  # ranks (3, 1)
    assert fuse(["a", "b", "c"], ["c", "a", "b"], 0.5) == ["a", "c", "b"]


def test_fusion_beta_extremes_follow_one_teacher():
    pointwise, listwise = ["a", "b", "c", "d"], ["d", "c", "b", "a"]
    assert fuse(pointwise, listwise, 1.0) == pointwise
    assert fuse(pointwise, listwise, 0.0) == listwise


def test_fusion_ties_go_to_the_listwise_rank():
    # a: ranks (1, 4), b: (2, 2), d: (4, 1) all have S = -ln 2; c: (3, 3) has S = -ln 3.
    pointwise, listwise = ["a", "b", "c", "d"], ["d", "b", "c", "a"]
    scores = fusion_scores(pointwise, listwise, 0.5)
    assert scores["a"] == pytest.approx(scores["b"]) == pytest.approx(scores["d"]) == pytest.approx(-math.log(2))
    assert fuse(pointwise, listwise, 0.5) == ["d", "b", "a", "c"]


def test_fusion_rejects_different_documents():
    with pytest.raises(ValueError):
        fuse(["a", "b"], ["a", "c"], 0.5)


# --- interval sampling, groups, targets ----------------------------------------------------------------

def test_interval_sample_hand_computed():
    assert interval_sample(10, 4, 0.5) == [1, 3, 6, 8]  # strata of width 2.5, offset 1.25
    assert interval_sample(50, 5, 0.0) == [0, 10, 20, 30, 40]
    assert interval_sample(10, 10, 0.99) == list(range(10))
    assert interval_sample(7, 1, 0.9) == [6]
    for bad in ((5, 6, 0.1), (5, 0, 0.1), (5, 2, 1.0)):
        with pytest.raises(ValueError):
            interval_sample(*bad)


def test_sample_groups_one_document_per_stratum_in_shuffled_order():
    fused = [f"d{i}" for i in range(20)]
    preset = get_preset("smoke", synth_group_sizes=(3, 8), synth_groups_per_pool=30)
    groups = sample_groups(fused, preset, "q1", "sft")
    assert len(groups) == 30 and {len(g) for g in groups} <= set(range(3, 9)) and len({len(g) for g in groups}) > 2
    for group in groups:
        positions = sorted(fused.index(d) for d in group)
        size = len(group)
        assert all(math.floor(j * 20 / size) <= p < (j + 1) * 20 / size for j, p in enumerate(positions))
    assert any([fused.index(d) for d in g] != sorted(fused.index(d) for d in g) for g in groups)
    assert sample_groups(fused, preset, "q1", "sft") == groups  # seeded
    assert sample_groups(fused, preset, "q1", "rl") != groups  # RL draws its own groups


def test_group_size_capped_by_pool():
    groups = sample_groups(["a", "b", "c"], get_preset("smoke", synth_group_sizes=(5, 20)), "q", "sft")
    assert all(sorted(g) == ["a", "b", "c"] for g in groups)


def test_target_scores_hand_computed():
    assert [target_score(r, 10) for r in range(1, 11)] == [10, 9, 8, 7, 6, 4, 3, 2, 1, 0]
    assert [target_score(r, 50) for r in (1, 2, 25, 26, 49, 50)] == [10, 10, 5, 5, 0, 0]
    assert [target_score(r, 3) for r in (1, 2, 3)] == [10, 5, 0]  # 5.0 exactly; half rounds up elsewhere
    assert target_score(1, 1) == 10
    assert all(target_score(r, 37) >= target_score(r + 1, 37) for r in range(1, 37))


def test_group_targets_project_the_fused_ranking():
    fused = list("abcdefghij")
    assert group_targets(["e", "a", "j"], fused) == [6, 10, 0]


def test_sample_pool_top_k_plus_random_tail():
    ranking = [f"d{i}" for i in range(1, 101)]
    chosen = sample_pool(ranking, top_k=10, random_m=40, rank_max=60, rng=random.Random(3))
    assert chosen[:10] == ranking[:10] and len(chosen) == len(set(chosen)) == 50
    assert all(ranking.index(d) in range(10, 60) for d in chosen[10:])
    assert chosen[10:] == sorted(chosen[10:], key=ranking.index)  # kept in retriever order
    assert sample_pool(ranking[:15], 10, 40, 60, random.Random(3)) == ranking[:15]


# --- Cranfield: pools, leaks, builds -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def subset(cranfield) -> Collection:
    docs = dict(list(cranfield.docs.items())[:150])
    return Collection("cranfield", docs, cranfield.queries, cranfield.qrels)


@pytest.fixture(scope="module")
def retrievers(subset, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GROUPRANK_CACHE", str(tmp_path_factory.mktemp("embeddings")))
        return synthesis.build_retrievers(subset, SMOKE)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUPRANK_CACHE", str(tmp_path))
    return tmp_path


def test_synthesis_queries_are_train_split_only(cranfield):
    split = split_queries(cranfield, SMOKE.split_seed, SMOKE.test_fraction, SMOKE.dev_fraction)
    assert synthesis.synthesis_queries(cranfield, SMOKE) == split.train[:12]
    everything = synthesis.synthesis_queries(cranfield, get_preset(SMOKE, synth_queries=None))
    assert everything == split.train and not set(everything) & (set(split.test) | set(split.dev))


def test_pools_hybrid_and_never_held_out_queries(subset, retrievers):
    preset = get_preset(SMOKE, synth_queries=None)
    qids = synthesis.synthesis_queries(subset, preset)
    run = synthesis.hybrid_run(subset, qids, preset, retrievers)
    pools = synthesis.candidate_pools(run, preset)
    split = split_queries(subset, preset.split_seed, preset.test_fraction, preset.dev_fraction)
    assert list(pools) == qids and not set(pools) & (set(split.test) | set(split.dev))
    for qid, chosen in pools.items():
        order = list(run[qid])
        assert len(chosen) == 10 and chosen[:5] == order[:5] and all(order.index(d) < 50 for d in chosen)


def build(subset, retrievers, preset=SMOKE):
    return synthesis.build_datasets(preset, subset, retrievers, progress=False)


def content_hash(path) -> str:
    rows = load_from_disk(str(path)).to_list()
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def test_build_end_to_end(subset, retrievers, cache, cranfield):
    result = build(subset, retrievers)
    assert result["counts"] == {"queries": 12, "sft": 24, "rl": 24} and not result["reused"]
    assert result["dir"] == cache / "datasets" / "smoke-cranfield"
    sft, rl = load_from_disk(str(result["sft"])), load_from_disk(str(result["rl"]))
    assert sft.column_names == ["prompt", "completion", "qid", "doc_ids", "target_scores"]
    assert rl.column_names == ["prompt", "qid", "doc_ids", "target_scores", "gains", "relevant"]
    split = split_queries(cranfield, SMOKE.split_seed, SMOKE.test_fraction, SMOKE.dev_fraction)
    assert set(sft["qid"]) | set(rl["qid"]) <= set(split.train[:12])  # no test or dev query anywhere
    for row in sft:
        assert 3 <= len(row["doc_ids"]) <= 5 and row["prompt"][-1]["role"] == "user"
        parsed = parse_group_scores(row["completion"][0]["content"], len(row["doc_ids"]))
        assert parsed.ok and parsed.scores == row["target_scores"]
        assert "<reason>" not in row["completion"][0]["content"]  # no teacher wrote reasoning
    for row in rl:
        assert row["gains"] == [float(t) for t in row["target_scores"]]
        assert row["relevant"] == [int(t >= 6) for t in row["target_scores"]]  # fused top 5 of 10 = targets 10..6
    table = result["validation"]
    assert list(table.index) == ["hybrid retriever", "pointwise teacher: bm25", "listwise teacher: minilm",
                                 "fused (beta=0.5)", "human judgments (NOT answer-free)"]
    assert table["nDCG@10"].idxmax() == "human judgments (NOT answer-free)"  # the ceiling of every teacher
    assert ((table["nDCG@10"] > 0) & (table["nDCG@10"] <= 1)).all() and (table["queries"] == 12).all()
    card = result["card"].read_text()
    assert "SFT rows: 24; RL rows: 24" in card and "answer-free: yes" in card and "pointwise = bm25" in card
    assert result["figure"].read_bytes()[:4] == b"\x89PNG"


def test_rebuild_reuses_datasets_and_teacher_cache(subset, retrievers, cache, monkeypatch):
    first = build(subset, retrievers)
    assert build(subset, retrievers)["reused"]
    made = []
    original = synthesis.make_teachers
    monkeypatch.setattr(synthesis, "make_teachers", lambda *a, **k: made.extend(original(*a, **k)) or tuple(made))
    shutil.rmtree(first["dir"])  # drop the finished datasets, keep the teacher cache
    again = build(subset, retrievers)
    assert not again["reused"] and [(t.hits, t.misses) for t in made] == [(12, 0), (12, 0)]
    assert content_hash(again["sft"]) == content_hash(first["sft"])


def test_changed_settings_rebuild(subset, retrievers, cache):
    build(subset, retrievers)
    changed = build(subset, retrievers, get_preset(SMOKE, synth_groups_per_pool=1))
    assert not changed["reused"] and changed["counts"]["sft"] == 12


def test_same_seed_gives_byte_identical_datasets(subset, retrievers, tmp_path, monkeypatch):
    def build_in(folder, preset=SMOKE):
        monkeypatch.setenv("GROUPRANK_CACHE", str(tmp_path / folder))
        return build(subset, retrievers, preset)

    one, two = build_in("one"), build_in("two")  # fresh teacher caches: everything recomputed
    for kind in ("sft", "rl"):
        arrow = sorted(p.name for p in one[kind].glob("*.arrow"))
        assert arrow and all((one[kind] / n).read_bytes() == (two[kind] / n).read_bytes() for n in arrow)
    other = build_in("three", get_preset(SMOKE, seed=1))
    assert content_hash(other["sft"]) != content_hash(one["sft"])


class LengthBackend:
    """A deterministic chat backend: pointwise score = text length mod 11, listwise = reversed."""

    def __init__(self):
        self.calls = 0
        self.model_id = "length-oracle"

    def generate(self, prompts_, max_new_tokens=None):
        self.calls += len(prompts_)
        return [self.reply(messages[-1]["content"]) for messages in prompts_]

    @staticmethod
    def reply(content: str) -> str:
        docs = [line for line in content.splitlines() if line.startswith("[")]
        if content.startswith("Query") and "Order all" in content:
            return "<answer>" + " > ".join(f"[{i}]" for i in range(len(docs), 0, -1)) + "</answer>"
        return '<answer>{"[1]": %d}</answer>' % (len(docs[0]) % 11)


def test_build_with_llm_teachers_through_a_chat_backend(subset, retrievers, cache):
    backend = LengthBackend()
    preset = get_preset("smoke", pointwise_teacher="llm", listwise_teacher="llm")
    result = synthesis.build_datasets(preset, subset, retrievers, backend=backend, progress=False)
    assert result["teachers"] == {"pointwise": "llm-pointwise", "listwise": "llm-listwise"}
    assert backend.calls == 12 * 10 + 12  # one call per document, one window per pool of 10
    assert result["counts"] == {"queries": 12, "sft": 24, "rl": 24}


def test_fingerprint_follows_the_teacher_model_only_for_llm_teachers(subset):
    llm = get_preset("smoke", pointwise_teacher="llm", listwise_teacher="bm25")
    fingerprint = synthesis.synthesis_fingerprint
    assert fingerprint(llm, subset) != fingerprint(get_preset(llm, teacher_model="other/model"), subset)
    assert fingerprint(SMOKE, subset) == fingerprint(get_preset(SMOKE, teacher_model="other/model"), subset)
    assert fingerprint(SMOKE, subset) != fingerprint(get_preset(SMOKE, fusion_beta=0.7), subset)


def test_interrupted_build_resumes_from_the_teacher_cache(subset, retrievers, cache):
    class Crashing(LengthBackend):
        def generate(self, prompts_, max_new_tokens=None):
            if self.calls >= 40:  # one call of 10 prompts per pool: dies on the 5th pool
                raise KeyboardInterrupt
            return super().generate(prompts_, max_new_tokens)

    preset = get_preset("smoke", pointwise_teacher="llm", listwise_teacher="llm")
    with pytest.raises(KeyboardInterrupt):
        synthesis.build_datasets(preset, subset, retrievers, backend=Crashing(), progress=False)
    backend = LengthBackend()
    synthesis.build_datasets(preset, subset, retrievers, backend=backend, progress=False)
    assert backend.calls == 8 * 10 + 12  # the first four pools were kept
