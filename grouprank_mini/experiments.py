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
