"""The benchmark script's bookkeeping (benchmarks/rerank_paradigms.py), without a model:
per-query costs, format failures, speed targets, and resuming a killed run."""
import importlib.util
import json

import pytest

from grouprank_mini.parsing import ParsedGroup
from grouprank_mini.rerank import RankResult, RerankedRun
from grouprank_mini.llm import GenerationStats
from grouprank_mini.runtime import PROJECT_ROOT

spec = importlib.util.spec_from_file_location("rerank_paradigms", PROJECT_ROOT / "benchmarks" / "rerank_paradigms.py")
bench = importlib.util.module_from_spec(spec)
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
    row = lambda seconds, ndcg: {"seconds/query": seconds, "median chunk seconds/query": seconds,
                                 "nDCG@10": ndcg, "ceiling fraction": 0.6}
    out = {bench.LISTWISE: row(64.0, 0.30)}
    for scoring in ("generate", "logprob"):
        out[f"pointwise {scoring} (w=0)"] = out[f"pointwise {scoring} (w=0.4)"] = row(24.0, 0.30)
        out[f"groupwise {scoring} (w=0)"] = out[f"groupwise {scoring} (w=0.4)"] = row(group_seconds, group_ndcg)
    return out


@pytest.mark.parametrize("seconds, ndcg, met", [(10.0, 0.30, True), (10.1, 0.30, False), (5.0, 0.29, False)])
def test_targets_are_the_papers_ratios_and_no_quality_loss(seconds, ndcg, met):
    measured = rows(seconds, ndcg)
    ratios = bench.speed_ratios(measured)
    assert ratios["groupwise generate vs listwise"]["seconds/query"] == pytest.approx(64.0 / seconds)
    checks = bench.target_checks(measured, ratios, weight=0.4)
    assert all(c["met"] for c in checks) == met
    assert any(not c["met"] for c in checks) != met


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
