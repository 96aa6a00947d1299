"""The experiments the notebooks and the benchmark run on top of the rerankers: quality and cost
of one reranker, the paradigm comparison, the paper's sweeps, score calibration, predicted-score
distributions, and every trained model of a preset side by side.

Every function takes the same candidates for every system it compares (one first-stage run,
the same queries), so differences come from the systems alone.
"""
from __future__ import annotations

import time
from dataclasses import replace

import pandas as pd

from . import llm
from .config import ABLATIONS
from .evaluate import evaluate
from .parsing import ParsedGroup, parse_group_scores
from .rerank import GroupwiseReranker, ListwiseReranker, PointwiseReranker, RerankedRun, Reranker
from .runs import Run
from .runtime import adapter_dir, grpo_dir


def measure(reranker: Reranker, collection, run: Run, qids: list[str], depth: int) -> dict[str, float]:
    """Rerank the top `depth` of `run` for `qids` and report quality, time and tokens per query."""
    reranker.stats.reset()
    start = time.perf_counter()
    reranked = reranker.rerank_run(collection, run, depth, qids)
    seconds = time.perf_counter() - start
    parsed = [p for _, p in reranked.outputs if isinstance(p, ParsedGroup)]
    return {
        "nDCG@10": evaluate(reranked.run, collection, qids)["nDCG@10"],
        **per_query_costs(reranker.stats, seconds, len(qids)),
        "answers ok": sum(p.ok for p in parsed) / len(parsed) if parsed else float("nan"),
    }


def per_query_costs(stats: llm.GenerationStats, seconds: float, queries: int) -> dict[str, float]:
    """Wall-clock seconds and the reranker's calls and tokens, per query; prefill throughput."""
    n = max(queries, 1)
    return {
        "seconds/query": seconds / n,
        "calls/query": stats.calls / n,
        "prompt tokens/query": stats.prompt_tokens / n,
        "generated tokens/query": stats.generated_tokens / n,
        "prefill tokens/s": stats.prompt_tokens / stats.prefill_seconds if stats.prefill_seconds else float("nan"),
    }


def paradigm_rerankers(model, tokenizer, preset) -> dict[str, Reranker]:
    """The paradigms compared in the paper, on one model and one preset (each with its own counters)."""
    engine = lambda: llm.LLM(model, tokenizer, preset)  # noqa: E731
    return {
        "pointwise": PointwiseReranker(engine(), preset),
        "listwise": ListwiseReranker(engine(), preset),
        "groupwise": GroupwiseReranker(engine(), preset),
        "groupwise-logprob": GroupwiseReranker(engine(), preset, scoring="logprob"),
    }


def compare_paradigms(model, tokenizer, preset, collection, run: Run, qids: list[str], depth: int | None = None):
    """One table: BM25 and each paradigm on the same queries and the same top-`depth` candidates."""
    depth = depth or preset.rerank_depth
    rows = {"BM25": {"nDCG@10": evaluate(run, collection, qids)["nDCG@10"]}}
    for name, reranker in paradigm_rerankers(model, tokenizer, preset).items():
        rows[name] = measure(reranker, collection, run, qids, depth)
    return pd.DataFrame(rows).T


def rerank_systems(systems: dict, tokenizer, preset, collection, run: Run, qids: list[str],
                   scorings=("generate", "logprob")) -> dict[str, Run]:
    """The groupwise reranker with each model of `systems` ({name: model}) and each scoring, on
    the same candidates; runs named "<model name> (<scoring>)"."""
    return {f"{name} ({scoring})": GroupwiseReranker(llm.LLM(model, tokenizer, preset), preset, scoring)
            .rerank_run(collection, run, qids=qids).run
            for scoring in scorings for name, model in systems.items()}


def sweep(model, tokenizer, preset, collection, run: Run, qids: list[str], field: str, values, scoring: str = "logprob"):
    """Groupwise nDCG@10 and cost as one preset field varies (the paper's Fig. 3 and Fig. 5)."""
    rows = {}
    for value in values:
        varied = replace(preset, **{field: value})
        reranker = GroupwiseReranker(llm.LLM(model, tokenizer, varied), varied, scoring)
        rows[value] = measure(reranker, collection, run, qids, preset.rerank_depth)
    return pd.DataFrame(rows).T.rename_axis(field)


def score_calibration(reranked: RerankedRun, collection):
    """Each (query, document) a groupwise reranker scored: its mean 0-10 score, the spread of that
    score across passes, and the human gain. Comparable groups give one score scale per gain."""
    rows = []
    for qid, result in reranked.results.items():
        for doc_id, scores in result.pass_scores.items():
            rows.append({"qid": qid, "doc": doc_id, "gain": collection.qrels.get(qid, {}).get(doc_id, 0),
                         "score": sum(scores) / len(scores), "spread": max(scores) - min(scores)})
    return pd.DataFrame(rows)


def predicted_scores(model, tokenizer, preset, records) -> list[float]:
    """Every score the model gives the groups of dataset `records` (rows with prompt and doc_ids)."""
    texts = llm.LLM(model, tokenizer, preset).generate(list(records["prompt"]), max_new_tokens=preset.max_new_tokens)
    return [s for text, ids in zip(texts, records["doc_ids"])
            for s in parse_group_scores(text, len(ids), require_reason=preset.reasoning).scores]


# --- every trained model of a preset ---------------------------------------------------------------

def adapter_folders(preset) -> dict:
    """Where each training stage of `preset` saves its adapter, by the name tables use."""
    return {"SFT": adapter_dir(preset, "sft"), "SFT+GRPO": grpo_dir(preset),
            **{f"GRPO {name.replace('_', ' ')}": grpo_dir(preset, name) for name in ABLATIONS}}


def trained_models(preset) -> dict:
    """The base model and every finished adapter of this preset, in training order."""
    found = {"zero-shot": llm.load(preset)[0]}
    for label, path in adapter_folders(preset).items():
        if (path / "adapter_config.json").is_file():
            found[label] = llm.load(preset, adapter=path)[0]
        else:
            print(f"{label}: no adapter at {path} (run notebook 02/03 first)")
    return found


def most_trained(systems: dict) -> str:
    """The name of the furthest-trained full-reward model in a `trained_models` result."""
    return next(name for name in ("SFT+GRPO", "SFT", "zero-shot") if name in systems)


# --- is a difference more than noise? ----------------------------------------------------------------

def paired_bootstrap(system: dict[str, float], baseline: dict[str, float], samples: int = 10_000,
                     seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Mean per-query difference system − baseline over the baseline's queries, and a percentile
    bootstrap interval of it: queries are resampled with replacement, keeping each query's pair
    together (the two systems saw the same query). An interval that excludes 0 is more than the
    noise of this query sample; one that straddles 0 is not."""
    import numpy as np

    deltas = np.array([system.get(q, 0.0) - baseline[q] for q in baseline])
    if not len(deltas):
        raise ValueError("no queries to compare")
    rng = np.random.default_rng(seed)
    means = deltas[rng.integers(0, len(deltas), size=(samples, len(deltas)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"mean difference": float(deltas.mean()), "low": float(low), "high": float(high),
            "wins": int((deltas > 0).sum()), "losses": int((deltas < 0).sum()), "queries": len(deltas)}


def best_weight(reranked: RerankedRun, reranker: GroupwiseReranker, first_stage: Run, collection,
                weights=(0.0, 0.2, 0.4, 0.6, 0.8)) -> tuple[float, dict[float, float]]:
    """The retriever weight w with the best nDCG@10 on the queries of `reranked`, and the score of
    every w tried. One model run serves every w (`final_scores` is post-processing), so choose w on
    dev queries, then apply it to test queries: choosing it on test would flatter the reranker."""
    qids = list(reranked.results)
    scores = {w: evaluate({q: reranker.final_scores(r.model_scores, first_stage[q], w)
                           for q, r in reranked.results.items()}, collection, qids)["nDCG@10"]
              for w in weights}
    return max(scores, key=lambda w: (scores[w], -w)), scores
