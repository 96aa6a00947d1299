"""The benchmark script (benchmarks/rerank_paradigms.py): per-query costs, format failures, speed
and prefix-cache targets, the latency regime's schedule (one query; listwise windows in order,
groupwise in one batch) and resuming a killed run."""
import importlib.util
import json
import re
import sys

import pytest

from grouprank_mini import get_preset, llm

from grouprank_mini.parsing import ParsedGroup
from grouprank_mini.rerank import GroupwiseReranker, ListwiseReranker, PointwiseReranker, RankResult, RerankedRun
from grouprank_mini.llm import GenerationStats
from grouprank_mini.runtime import PROJECT_ROOT

spec = importlib.util.spec_from_file_location("rerank_paradigms", PROJECT_ROOT / "benchmarks" / "rerank_paradigms.py")
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # dataclasses look their module up there
spec.loader.exec_module(bench)


def test_costs_are_per_query_sums_over_chunks():
    result = {"stats": {"calls": 8, "batches": 2, "prompt_tokens": 400, "generated_tokens": 40,
                        "seconds": 3.0, "prefill_seconds": 2.0},
              "seconds": 4.0, "chunk seconds/query": [0.5, 1.5, 3.0],
              "outputs": [{"text": "a", "status": "ok"}, {"text": "b", "status": "json_invalid"}]}
    costs = bench.costs(result, 4)
    assert costs["seconds/query"] == 1.0 and costs["calls/query"] == 2.0
    assert costs["prompt tokens/query"] == 100 and costs["generated tokens/query"] == 10
    assert costs["prefill tokens/s"] == 200 and costs["median chunk seconds/query"] == 1.5
    assert costs["format failures"] == 0.5 and costs["statuses"] == {"ok": 1, "json_invalid": 1}


def test_listwise_answers_fail_unless_they_name_every_document_once():
    full = {"text": "<answer>[2] > [1] > [3]</answer>", "order": [1, 0, 2]}
    partial = {"text": "<answer>[2] > [1]</answer>", "order": [1, 0, 2]}
    untagged = {"text": "[2] > [1] > [3]", "order": [1, 0, 2]}
    assert bench.format_failures([full]) == 0
    assert bench.format_failures([full, partial, untagged]) == pytest.approx(2 / 3)
    assert bench.format_failures([]) is None


def rows(group_seconds: float, group_ndcg: float) -> dict:
    """Benchmark rows where only groupwise's speed and quality vary."""
    row = lambda seconds, ndcg: {"seconds/query": seconds, "median chunk seconds/query": seconds,  # noqa: E731
                                 "nDCG@10": ndcg, bench.WEIGHTED: ndcg, "ceiling fraction": 0.8}
    out = {bench.LISTWISE: row(64.0, 0.30) | {bench.WEIGHTED: None}}
    for scoring in ("generate", "logprob"):
        out[f"pointwise {scoring}"] = row(24.0, 0.30)
        out[f"groupwise {scoring}"] = row(group_seconds, group_ndcg)
    return out


@pytest.mark.parametrize("seconds, ndcg, met", [(10.0, 0.30, True), (10.1, 0.30, False), (5.0, 0.29, False)])
def test_targets_are_the_papers_ratios_and_no_quality_loss(seconds, ndcg, met):
    measured = rows(seconds, ndcg)
    ratios = bench.speed_ratios(measured)
    assert ratios["groupwise generate vs listwise"]["seconds/query"] == pytest.approx(64.0 / seconds)
    checks = bench.target_checks(measured, ratios)
    assert all(c["met"] for c in checks) == met
    assert any(not c["met"] for c in checks) != met


def latency_rows(cached_share: float, score_difference: float) -> tuple[dict, dict]:
    """Latency rows in which groupwise meets every speed target; the prefix cache varies."""
    out = rows(10.0, 0.30)
    reasoning = lambda seconds: out["groupwise generate"] | {"seconds/query": seconds,  # noqa: E731
                                                             "median chunk seconds/query": seconds}
    out[f"{bench.LISTWISE}{bench.REASONING}"] = reasoning(90.0)
    out[f"groupwise generate{bench.REASONING}"] = reasoning(30.0)
    out[f"pointwise generate{bench.REASONING}"] = reasoning(72.0)
    out[f"groupwise logprob{bench.CACHE}"] = out["groupwise logprob"] | {"seconds/query": 8.0, "prefix share": cached_share}
    return out, {f"groupwise logprob{bench.CACHE}": {"max score difference": score_difference}}


@pytest.mark.parametrize("share, difference, met", [(0.3, 1e-5, True), (0.2, 1e-5, False), (0.3, 0.01, False)])
def test_latency_targets_include_reasoning_and_the_prefix_cache(share, difference, met):
    measured, prefix = latency_rows(share, difference)
    assert bench.fastest_groupwise(measured) == f"groupwise logprob{bench.CACHE}"
    checks = bench.target_checks(measured, bench.speed_ratios(measured), bench.LATENCY, prefix)
    assert any("reasoning ≥ 3.0× faster than listwise, reasoning" in c["target"] for c in checks)
    assert all(c["met"] for c in checks) == met


def test_the_prefix_cache_check_compares_each_cached_row_with_its_plain_twin():
    answers = lambda *texts: [{"text": t, "status": "ok"} for t in texts]  # noqa: E731
    results = {"groupwise logprob": {"model scores": {"q": {"d1": 5.0, "d2": 3.0}}},
               f"groupwise logprob{bench.CACHE}": {"model scores": {"q": {"d1": 5.0, "d2": 3.5}}},
               "groupwise generate": {"outputs": answers("a", "b")},
               f"groupwise generate{bench.CACHE}": {"outputs": answers("a", "c")}}
    check = bench.prefix_cache_check(results)
    assert check[f"groupwise logprob{bench.CACHE}"]["max score difference"] == pytest.approx(0.5)
    assert check[f"groupwise generate{bench.CACHE}"]["identical answers"] == 0.5


def test_regimes_latency_sends_a_query_alone_with_all_its_groups_in_one_batch():
    preset = get_preset("cpu")
    latency, throughput = bench.regimes(bench.parse_args([]), preset)
    assert (latency.chunk, latency.depth, latency.batch_size) == (1, 100, 100 // preset.group_size)
    assert throughput.chunk == throughput.batch_size == preset.batch_size
    quick = bench.regimes(bench.parse_args(["--quick", "--regimes", "latency"]), preset)
    assert [(r.name, r.queries) for r in quick] == [("latency", 1)]


class RecordingBackend:
    """Answers every listwise window with the identity order and keeps each call's prompts."""

    def __init__(self):
        self.stats, self.calls = GenerationStats(), []

    def generate(self, messages, max_new_tokens=None):
        self.calls.append(messages)
        return ["<answer>" + " > ".join(f"[{k}]" for k in range(1, 21)) + "</answer>"] * len(messages)


def test_listwise_latency_schedule_is_nine_windows_one_after_another_back_to_front():
    backend = RecordingBackend()
    docs = {f"d{i}": f"document number {i}" for i in range(100)}
    first_stage = {d: -float(i) for i, d in enumerate(docs)}
    ListwiseReranker(backend, get_preset("cpu", batch_size=10)).rank_many([("query", docs, first_stage)])
    assert [len(call) for call in backend.calls] == [1] * 9  # one query: nothing to batch a window with
    shown = [sorted(int(n) for n in re.findall(r"document number (\d+)", call[0][1]["content"])) for call in backend.calls]
    assert [(w[0], w[-1]) for w in shown] == [(s, s + 19) for s in range(80, -1, -10)]


def test_groupwise_sends_all_groups_of_a_query_in_one_batch_pointwise_needs_ten(tokenizer_and_tiny):
    tokenizer, tiny = tokenizer_and_tiny
    preset = get_preset("cpu", batch_size=10, doc_max_chars=40)
    docs = {f"d{i}": f"document {i} on wing flutter" for i in range(100)}
    request = [("wing flutter", docs, {d: -float(i) for i, d in enumerate(docs)})]
    for cls, batches in ((GroupwiseReranker, 1), (PointwiseReranker, 10)):
        reranker = cls(llm.LLM(tiny, tokenizer, preset), preset, scoring="logprob")
        reranker.rank_many(request)
        assert (reranker.stats.batches, reranker.stats.calls) == (batches, 100 // preset.group_size * batches)


@pytest.fixture(scope="module")
def tokenizer_and_tiny():
    tokenizer = llm.load_tokenizer()
    return tokenizer, llm.tiny_random_model(tokenizer)


class FakeReranker:
    """Scores documents by their rank; can be told to die on its n-th call (a killed run)."""

    def __init__(self, die_on: int | None = None):
        self.stats, self.calls, self.die_on = GenerationStats(), 0, die_on

    def rerank_run(self, collection, run, depth, qids):
        self.calls += 1
        if self.calls == self.die_on:
            raise KeyboardInterrupt
        self.stats.calls += len(qids)
        output = [("<answer>{}</answer>", ParsedGroup([5.0], "ok"))]
        return RerankedRun({q: dict(run[q]) for q in qids},
                           {q: RankResult(dict(run[q]), model_scores=dict(run[q]), outputs=output) for q in qids})


def test_a_killed_run_resumes_and_runs_every_step_once(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "matmul_gflops", lambda: 100.0)
    run = {q: {"d1": 2.0, "d2": 1.0} for q in "abcde"}
    checkpoint = tmp_path / "state.partial.json"
    dying = {"x": FakeReranker(), "y": FakeReranker(die_on=2)}
    with pytest.raises(KeyboardInterrupt):
        bench.run_interleaved(dying, None, run, list("abcde"), 2, 2, checkpoint)
    saved = json.loads(checkpoint.read_text())
    assert saved["done"] == ["0 x", "0 y", "2 x"]  # died in chunk 2's "y" step
    fresh = {"x": FakeReranker(), "y": FakeReranker()}
    state = bench.run_interleaved(fresh, None, run, list("abcde"), 2, 2, checkpoint)
    assert (fresh["x"].calls, fresh["y"].calls) == (1, 2)  # only what was not done before
    assert all(set(r["run"]) == set("abcde") for r in state["results"].values())
    assert all(r["stats"]["calls"] == 5 for r in state["results"].values())  # each query counted once
    assert all(set(r["model scores"]) == set("abcde") for r in state["results"].values())
    assert len(state["starts"]) == 2
