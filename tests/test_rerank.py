"""The rerankers end to end (grouprank_mini.rerank).

Three kinds of model drive the same code:
- a scripted stand-in that reads each prompt and answers as a perfect judge, so the
  expected ranking is known exactly (prompts, batching, parsing and merging all run for real);
- a 2-layer random Llama with the real tokenizer: fast, deterministic, never stops early;
- the embedded SmolLM2-135M on one Cranfield query over BM25's top 10.
The embedded model loads once per module and each paradigm runs on it once.
"""
import math
import re
from dataclasses import dataclass, replace

import pytest
import torch

from grouprank_mini import data, get_preset, groups, llm, prompts, retrieval, runs
from grouprank_mini.experiments import rerank_systems
from grouprank_mini.llm import LLM, GenerationStats
from grouprank_mini.parsing import STATUSES
from grouprank_mini.rerank import GroupwiseReranker, ListwiseReranker, PointwiseReranker

DEPTH = 10
PRESET = get_preset("smoke", retriever_weight=0.0)  # depth 10, groups of 5; scores straight from the model
PARADIGMS = {
    "groupwise": lambda lm, tok, p: GroupwiseReranker(LLM(lm, tok, p), p),
    "groupwise-logprob": lambda lm, tok, p: GroupwiseReranker(LLM(lm, tok, p), p, scoring="logprob"),
    "pointwise": lambda lm, tok, p: PointwiseReranker(LLM(lm, tok, p), p),
    "pointwise-logprob": lambda lm, tok, p: PointwiseReranker(LLM(lm, tok, p), p, scoring="logprob"),
    "listwise": lambda lm, tok, p: ListwiseReranker(LLM(lm, tok, p), p),
}
# Over 10 candidates: groups of 5 -> 2 calls; one call per document; one window of 20 covers all.
EXPECTED_CALLS = {"groupwise": 2, "groupwise-logprob": 2, "pointwise": 10, "pointwise-logprob": 10, "listwise": 1}
# New-token caps: ~8 tokens per document plus 12 for tags (capped by the preset), listwise 6 per id + 16.
BUDGET = {"groupwise": min(PRESET.max_new_tokens, 8 * PRESET.group_size + 12),
          "pointwise": min(PRESET.max_new_tokens, 8 * 1 + 12), "listwise": 6 * 20 + 16}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer():
    return llm.load_tokenizer()


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return llm.tiny_random_model(tokenizer)


@pytest.fixture(scope="module")
def embedded():
    return llm.load_model()


@pytest.fixture(scope="module")
def cranfield():
    """The collection, BM25's top 10 for three test queries, and those query ids."""
    collection = data.load_collection("cranfield")
    split = data.split_queries(collection, PRESET.split_seed, PRESET.test_fraction, PRESET.dev_fraction)
    qids = split.test[:3]
    run = retrieval.BM25(collection, PRESET.bm25_stopwords).search({q: collection.queries[q] for q in qids}, k=DEPTH)
    return collection, run, qids


# --- a scripted judge ------------------------------------------------------------------------

class ScriptedModel:
    """Stands in for a causal LM: reads the `[k]. text` lines of each prompt and answers with
    the grade written in each text, as JSON scores (groupwise) or as an order (listwise)."""

    device = torch.device("cpu")

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def generate(self, input_ids, attention_mask, pad_token_id, **_):
        answers = [self.answer(p) for p in self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)]
        ids = [self.tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
        width = max(map(len, ids))
        new = torch.tensor([row + [pad_token_id] * (width - len(row)) for row in ids])
        return torch.cat([input_ids, new], dim=1)

    @staticmethod
    def answer(prompt: str) -> str:
        grades = [int(g) for g in re.findall(r"^\[\d+\]\. passage \d+ grade (\d+)", prompt, re.M)]
        if "Order all" in prompt:
            best_first = sorted(range(len(grades)), key=lambda k: -grades[k])
            return "<answer>" + " > ".join(f"[{k + 1}]" for k in best_first) + "</answer>"
        return prompts.answer_text([min(g, 10) for g in grades])


def graded(grades: list[int]) -> tuple[dict[str, str], dict[str, float]]:
    """Candidates whose text carries their grade, with first-stage scores in list order."""
    docs = {f"d{i}": f"passage {i} grade {g}" for i, g in enumerate(grades)}
    return docs, {d: float(len(grades) - i) for i, d in enumerate(docs)}


TIED_GRADES = [5, 9, 5, 0, 9, 2, 7, 5, 1, 10, 3, 9]


@pytest.mark.parametrize("paradigm", ["groupwise", "pointwise"])
@pytest.mark.parametrize("passes", [1, 2])
def test_scripted_scores_give_the_expected_order(tokenizer, paradigm, passes):
    docs, first_stage = graded(TIED_GRADES)
    reranker = PARADIGMS[paradigm](ScriptedModel(tokenizer), tokenizer, replace(PRESET, passes=passes))
    result = reranker.rank("which passage?", docs, first_stage)
    # Best grade first; equal grades keep their first-stage order.
    assert [d for d, _ in result.ranking] == [f"d{i}" for i in sorted(range(len(TIED_GRADES)), key=lambda i: (-TIED_GRADES[i], i))]
    assert all(parsed.status == "ok" for _, parsed in result.outputs)
    assert result.model_scores == {d: float(min(g, 10)) for d, g in zip(docs, TIED_GRADES)}
    assert all(len(scores) == reranker.preset.passes for scores in result.pass_scores.values())


def test_scripted_scores_are_interpolated_with_the_retriever(tokenizer):
    docs, first_stage = graded(TIED_GRADES)
    reranker = PARADIGMS["groupwise"](ScriptedModel(tokenizer), tokenizer, replace(PRESET, retriever_weight=0.4))
    result = reranker.rank("which passage?", docs, first_stage)
    scores = result.scores
    # The one model run serves every weight: the preset's gives the same scores, 0 the model's alone.
    assert reranker.final_scores(result.model_scores, first_stage) == scores
    alone = reranker.final_scores(result.model_scores, first_stage, retriever_weight=0.0)
    assert [d for d in runs.ranked_ids(alone)] == [f"d{i}" for i in sorted(range(len(TIED_GRADES)), key=lambda i: (-TIED_GRADES[i], i))]
    low, high = min(first_stage.values()), max(first_stage.values())
    for i, d in enumerate(docs):
        expected = 0.6 * TIED_GRADES[i] / 10 + 0.4 * (first_stage[d] - low) / (high - low)
        assert scores[d] == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize("n, c, passes", [(12, 5, 1), (12, 5, 3), (10, 3, 2), (4, 10, 1)])
def test_groupwise_calls_are_groups_times_passes(tokenizer, n, c, passes):
    reranker = PARADIGMS["groupwise"](ScriptedModel(tokenizer), tokenizer, replace(PRESET, group_size=c, passes=passes))
    reranker.rank("which passage?", *graded(list(range(n))))
    assert reranker.stats.calls == math.ceil(n / c) * passes
    assert reranker.stats.batches == math.ceil(reranker.stats.calls / PRESET.batch_size)


def test_pointwise_calls_are_one_per_document_whatever_the_passes(tokenizer):
    reranker = PARADIGMS["pointwise"](ScriptedModel(tokenizer), tokenizer, replace(PRESET, passes=4))
    reranker.rank("which passage?", *graded(TIED_GRADES))
    assert reranker.stats.calls == len(TIED_GRADES)


@pytest.mark.parametrize("n, starts", [(40, [20, 10, 0]), (25, [5, 0]), (20, [0]), (10, [0]), (0, [0])])
def test_listwise_window_schedule(tokenizer, n, starts):
    assert ListwiseReranker(None, PRESET).window_starts(n) == starts


def test_listwise_bubbles_the_best_to_the_top_and_batches_queries(tokenizer):
    grades = [(7 * i) % 40 for i in range(40)]  # 40 distinct grades in a scrambled first-stage order
    docs, first_stage = graded(grades)
    reranker = PARADIGMS["listwise"](ScriptedModel(tokenizer), tokenizer, PRESET)
    results = reranker.rank_many([("q1", docs, first_stage), ("q2", docs, first_stage)])
    best_ten = [f"d{grades.index(g)}" for g in range(39, 29, -1)]
    assert all([d for d, _ in result.ranking[:10]] == best_ten for result in results)
    assert all(len(result.outputs) == 3 for result in results)  # each query's own windows
    # 3 windows per query, run stage by stage: both queries' windows share each batch.
    assert (reranker.stats.calls, reranker.stats.batches) == (6, 3)


def test_scripted_generation_is_counted(tokenizer):
    docs, first_stage = graded(TIED_GRADES)
    reranker = PARADIGMS["groupwise"](ScriptedModel(tokenizer), tokenizer, PRESET)
    answers = [text for text, _ in reranker.rank("which passage?", docs, first_stage).outputs]
    assert reranker.stats.generated_tokens == sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
    reranker.stats.reset()
    assert reranker.stats == GenerationStats()


def test_plain_list_of_texts_gets_positional_ids(tokenizer):
    reranker = PARADIGMS["groupwise"](ScriptedModel(tokenizer), tokenizer, PRESET)
    result = reranker.rank("which passage?", ["passage 0 grade 1", "passage 1 grade 8", "passage 2 grade 4"])
    assert [d for d, _ in result.ranking] == ["1", "2", "0"]


# --- real models on one Cranfield query -----------------------------------------------------

@dataclass
class Outcome:
    paradigm: str
    model_name: str
    reranker: object
    query: str
    candidates: dict[str, str]
    first_stage: dict[str, float]
    result: object  # the RankResult


@pytest.fixture(scope="module", params=[(m, p) for m in ("tiny", "embedded") for p in PARADIGMS], ids="-".join)
def outcome(request, tokenizer, cranfield):
    """One paradigm on one model over BM25's top 10 of the first test query (run once)."""
    model_name, paradigm = request.param
    collection, run, qids = cranfield
    first_stage = run[qids[0]]
    candidates = {d: collection.docs[d] for d in runs.ranked_ids(first_stage)}
    reranker = PARADIGMS[paradigm](request.getfixturevalue(model_name), tokenizer, PRESET)
    result = reranker.rank(collection.queries[qids[0]], candidates, first_stage)
    return Outcome(paradigm, model_name, reranker, collection.queries[qids[0]], candidates, first_stage, result)


def test_every_candidate_is_returned_exactly_once(outcome):
    ids = [d for d, _ in outcome.result.ranking]
    assert len(ids) == DEPTH and sorted(ids) == sorted(outcome.candidates)


def test_scores_are_floats_sorted_best_first(outcome):
    scores = [s for _, s in outcome.result.ranking]
    assert all(isinstance(s, float) and math.isfinite(s) for s in scores)
    assert all(a > b for a, b in zip(scores, scores[1:]))  # strictly: ties are always broken


def test_calls_and_batches_are_counted(outcome):
    stats = outcome.reranker.stats
    assert stats.calls == EXPECTED_CALLS[outcome.paradigm]
    assert stats.batches == math.ceil(stats.calls / PRESET.batch_size)
    assert 0 < stats.prefill_seconds <= stats.seconds


def test_prompt_tokens_are_counted_without_padding(outcome, tokenizer):
    engine = outcome.reranker.backend
    texts = [engine.chat_text(m) for m, _ in sent_prompts(outcome)]
    if outcome.paradigm.endswith("logprob"):  # the teacher-forced answer skeleton is part of the input
        lengths = [len(engine._skeleton(t, n)[0]) for t, (_, n) in zip(texts, sent_prompts(outcome))]
    else:
        lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert outcome.reranker.stats.prompt_tokens == sum(lengths)


def sent_prompts(outcome) -> list[tuple[list[dict], int]]:
    """The (messages, group size) the paradigm should have sent, rebuilt from the preset."""
    texts, p = list(outcome.candidates.values()), PRESET
    if outcome.paradigm.startswith("listwise"):
        return [(prompts.listwise_messages(outcome.query, texts, p.doc_max_chars), len(texts))]
    size = 1 if outcome.paradigm.startswith("pointwise") else p.group_size
    plan = groups.multi_pass_groups(len(texts), size, p.passes, p.seed)
    return [(prompts.groupwise_messages(outcome.query, [texts[i] for i in g], p.doc_max_chars, p.reasoning), len(g))
            for g in plan]


def test_generated_tokens_are_counted(outcome):
    stats, paradigm = outcome.reranker.stats, outcome.paradigm
    if paradigm.endswith("logprob"):
        assert stats.generated_tokens == 0
    elif outcome.model_name == "tiny":  # a random model never writes EOS or </answer>: every budget is spent
        assert stats.generated_tokens == stats.calls * BUDGET[paradigm]
    else:
        assert 0 < stats.generated_tokens <= stats.calls * BUDGET[paradigm]


def test_generated_answers_are_parsed(outcome):
    outputs = outcome.result.outputs
    if outcome.paradigm.endswith("logprob"):
        assert outputs == []
    elif outcome.paradigm == "listwise":
        assert all(sorted(order) == list(range(DEPTH)) for _, order in outputs)
    else:
        assert len(outputs) == EXPECTED_CALLS[outcome.paradigm]
        assert all(parsed.status in STATUSES for _, parsed in outputs)


def test_logprob_scores_are_in_range_and_never_tied(outcome):
    if not outcome.paradigm.endswith("logprob"):
        pytest.skip("only token-probability scoring promises tie-free scores")
    scores = sorted((s for _, s in outcome.result.ranking), reverse=True)
    # With retriever_weight 0 a final score is the model's 0-10 score / 10, minus a tie-break
    # offset of 1e-9 per rank; a gap above 1e-8 therefore means the model itself separated them.
    assert all(-1e-7 <= 10 * s <= 10 for s in scores)
    assert all(a - b > 1e-8 for a, b in zip(scores, scores[1:]))


def test_slot_scores_one_per_slot_within_range(tiny, tokenizer):
    messages = [prompts.groupwise_messages("q", ["a", "b", "c"], 50), prompts.groupwise_messages("longer query", ["a"], 50)]
    scores = LLM(tiny, tokenizer, PRESET).slot_scores(messages, [3, 1])
    assert [len(s) for s in scores] == [3, 1]
    assert all(0.0 <= s <= 10.0 for row in scores for s in row)


# --- batch invariance on the tiny model -------------------------------------------------------

@pytest.mark.parametrize("paradigm", ["groupwise", "groupwise-logprob", "listwise"])
def test_left_padded_batches_match_batch_size_one(tiny, tokenizer, cranfield, paradigm):
    collection, run, qids = cranfield  # three queries: prompts of different lengths share a batch
    results = {}
    for batch_size in (1, 4):
        reranker = PARADIGMS[paradigm](tiny, tokenizer, replace(PRESET, batch_size=batch_size))
        reranked = reranker.rerank_run(collection, run, DEPTH, qids)
        results[batch_size] = (reranked.run, [t for t, _ in reranked.outputs])
    (alone, alone_texts), (batched, batched_texts) = results[1], results[4]
    assert batched_texts == alone_texts  # greedy text is identical token for token
    for qid in qids:
        assert batched[qid] == pytest.approx(alone[qid], abs=1e-5)
        assert runs.ranked_ids(batched[qid]) == runs.ranked_ids(alone[qid])


def test_rerank_systems_names_each_model_and_scoring(tiny, tokenizer, cranfield):
    collection, run, qids = cranfield
    reranked = rerank_systems({"zero-shot": tiny}, tokenizer, PRESET, collection, run, qids)
    assert list(reranked) == ["zero-shot (generate)", "zero-shot (logprob)"]
    alone = PARADIGMS["groupwise-logprob"](tiny, tokenizer, PRESET).rerank_run(collection, run, qids=qids)
    assert reranked["zero-shot (logprob)"].run == alone.run
