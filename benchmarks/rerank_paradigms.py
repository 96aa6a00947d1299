"""Speed and quality of the reranking paradigms, side by side on one machine.

    python benchmarks/rerank_paradigms.py [--preset cpu] [--queries 20] [--depth 40] [--threads 2]
                                          [--chunk N] [--out runs/benchmarks/]

Every paradigm reranks the same BM25 top-`depth` of the same Cranfield test queries (the
preset's split) with the same model: pointwise (generate and logprob), listwise (window 20,
step 10), groupwise (generate and logprob, group size from the preset). Rows with and
without interpolation with the retriever (the preset's weight, and 0) share one model run:
interpolation is post-processing of the model's scores and costs nothing.

Per paradigm: nDCG@10, seconds/query (wall clock), model calls, prompt and generated tokens
per query, prefill tokens/s (prompt tokens / prefill seconds, from GenerationStats), that
throughput as a fraction of the machine's own ceiling, and the share of free-text answers
that did not parse cleanly.

Queries go in chunks of --chunk queries sent together, and every paradigm runs on a chunk
before the next chunk starts. On a shared machine the load changes over minutes; interleaving
spreads it over all paradigms instead of charging it to whichever ran at a busy moment, and
the median over chunks of seconds/query is reported next to the total, as a figure that one
contended chunk cannot move. Two settings answer two questions:

- throughput (default, chunk = the preset's batch size): a chunk fills each listwise stage's
  batch, so listwise's sequential windows are hidden by batching windows of other queries;
- latency (--chunk 1): one query at a time, as a user reranking one query waits for it; here
  groupwise sends all its groups as one batch while listwise waits for window after window,
  which is the setting of the paper's seconds-per-query comparison.

The ceiling is measured in the same run, at the same thread count, by timing a large fp32
matmul before the first chunk and after each chunk; the median sample is used, since the
paradigms' throughput is likewise an average over the run's changing load:

    ceiling tokens/s = matmul FLOP/s / (2 · N)

N = the model's non-embedding parameters. A forward pass costs about 2 FLOPs (a multiply and
an add) per weight per token; the embedding lookup costs none, and during prefill the LM head
runs only at the last position (generate) or at the score slots (logprob). Attention's own
FLOPs (quadratic in length) and padding tokens are work the formula does not count, so the
fraction slightly understates how well the hardware is used.

Writes <stem>.json, <stem>.md and <stem>.png into --out and prints the markdown table. The
state is saved to <stem>.partial.json after every step: a killed run, started again with the
same arguments, resumes where it stopped (the JSON lists every start).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time
from collections import Counter
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path

import torch
import transformers

from grouprank_mini import data, evaluate, get_preset, llm, plots, retrieval, runtime
from grouprank_mini.experiments import per_query_costs
from grouprank_mini.llm import LLM, GenerationStats
from grouprank_mini.parsing import ParsedGroup, answer_region, tags_ok
from grouprank_mini.rerank import GroupwiseReranker, ListwiseReranker, PointwiseReranker
from grouprank_mini.runs import Run

# The paper's measured speed-ups of GroupRank (docs/paper.md §5) and the throughput bar.
TARGET_VS_LISTWISE, TARGET_VS_POINTWISE, TARGET_CEILING = 6.4, 2.4, 0.5
LISTWISE = "listwise (window 20, step 10)"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--queries", type=int, default=20, help="first N test queries of the preset's split")
    parser.add_argument("--depth", type=int, default=40, help="BM25 candidates reranked per query")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=None,
                        help="queries sent together (default: the preset's batch size; 1 = one query at a time)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks"))
    return parser.parse_args()


# --- the machine ---------------------------------------------------------------------------------

def machine_info(threads: int) -> dict:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M).group(1)
    except (OSError, AttributeError):  # not Linux
        cpu = platform.processor() or "unknown"
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "date": datetime.now().astimezone().isoformat(timespec="seconds"),
            "load average at start (1, 5, 15 min)": os.getloadavg()}


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of the fastest of `repeats` n×n fp32 matmuls (2n³ FLOPs each): within one
    sample the fastest, because a matmul is only ever slowed down by other processes."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)  # warm-up: thread pool and allocator
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def non_embedding_parameters(model) -> int:
    """Unique parameters minus the input embedding (a tied LM head is counted once, with it)."""
    unique = {p.data_ptr(): p.numel() for p in model.parameters()}
    return sum(unique.values()) - model.get_input_embeddings().weight.numel()


# --- running the paradigms -----------------------------------------------------------------------

def rerankers(model, tokenizer, preset) -> dict:
    """Every model-based paradigm, each on its own engine (own counters), all without
    interpolation (weight 0: the weighted rows come from `Reranker.final_scores`)."""
    p = replace(preset, retriever_weight=0.0)
    engine = lambda: LLM(model, tokenizer, p, progress=os.isatty(2))  # noqa: E731  no progress bars in a log file
    return {
        "groupwise generate": GroupwiseReranker(engine(), p),
        "groupwise logprob": GroupwiseReranker(engine(), p, scoring="logprob"),
        LISTWISE: ListwiseReranker(engine(), p, window=20, step=10),
        "pointwise generate": PointwiseReranker(engine(), p),
        "pointwise logprob": PointwiseReranker(engine(), p, scoring="logprob"),
    }


def run_interleaved(paradigms: dict, collection, run, qids, depth: int, chunk: int, checkpoint: Path) -> dict:
    """Every paradigm on each chunk of queries in turn, saving the state after every step.

    Returns {"results": {name: {run, model scores, seconds, stats, outputs}}, "gflops": matmul samples taken
    before the first chunk and after each one, ...}. A run that was killed resumes from
    `checkpoint` and redoes only the step it was in.
    """
    state = _load(checkpoint) or {"results": {name: {"run": {}, "model scores": {}, "seconds": 0.0,
                                                     "chunk seconds/query": [], "stats": {}, "outputs": []}
                                              for name in paradigms}, "done": [], "gflops": {}, "starts": []}
    state["starts"].append(datetime.now().astimezone().isoformat(timespec="seconds"))
    state["gflops"].setdefault("before", matmul_gflops())
    for start in range(0, len(qids), chunk):
        part = qids[start:start + chunk]
        for name, reranker in paradigms.items():
            if f"{start} {name}" not in state["done"]:
                print(f"[{datetime.now():%H:%M:%S}] queries {start + 1}-{start + len(part)}: {name}", flush=True)
                _step(reranker, state["results"][name], collection, run, depth, part)
                state["done"].append(f"{start} {name}")
                _save(checkpoint, state)
        state["gflops"].setdefault(f"after {start}", matmul_gflops())
        _save(checkpoint, state)
    return state


def _step(reranker, result: dict, collection, run, depth: int, part: list[str]) -> None:
    """Rerank one chunk and add its run, seconds, stats and answers to `result`."""
    reranker.stats.reset()
    begin = time.perf_counter()
    reranked = reranker.rerank_run(collection, run, depth, part)
    seconds = time.perf_counter() - begin
    result["run"] |= reranked.run
    result["model scores"] |= {q: r.model_scores for q, r in reranked.results.items()}
    result["seconds"] += seconds
    result["chunk seconds/query"].append(seconds / len(part))
    result["stats"] = {k: result["stats"].get(k, 0) + v for k, v in asdict(reranker.stats).items()}
    result["outputs"] += [{"text": text, "status": read.status} if isinstance(read, ParsedGroup)
                          else {"text": text, "order": read} for text, read in reranked.outputs]


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _save(path: Path, state: dict) -> None:
    runtime.write_atomic(path, json.dumps(state))  # a kill mid-write never corrupts the checkpoint


def weighted(reranker, model_scores: dict, first_stage: Run, weight: float) -> Run:
    """The run the reranker gives with retriever `weight`, from the model scores of its one run."""
    return {q: reranker.final_scores(scores, first_stage[q], weight) for q, scores in model_scores.items()}


# --- measurements ----------------------------------------------------------------------------------

def quality(run, collection, qids) -> dict:
    per_query = evaluate.per_query_scores(run, evaluate.judged_qrels(collection, qids))["nDCG@10"]
    return {"nDCG@10": evaluate.evaluate(run, collection, qids)["nDCG@10"], "per-query nDCG@10": per_query}


def costs(result: dict, n: int) -> dict:
    """What one paradigm spent per query, summed over all chunks."""
    stats = GenerationStats(**result["stats"])
    return {**per_query_costs(stats, result["seconds"], n),
            "median chunk seconds/query": statistics.median(result["chunk seconds/query"]),
            "batches": stats.batches, "prefill seconds/query": stats.prefill_seconds / n,
            "format failures": format_failures(result["outputs"]),
            "statuses": dict(Counter(o["status"] for o in result["outputs"] if "status" in o))}


def format_failures(outputs: list[dict]) -> float | None:
    """Share of free-text answers that were not clean; None for logprob (no free text).

    Groupwise/pointwise: parser status other than ok. Listwise: no closed <answer> tags, or
    the answer does not name every document of its window exactly once.
    """
    if not outputs:
        return None
    clean = [o["status"] == "ok" if "status" in o else _full_permutation(o["text"], len(o["order"])) for o in outputs]
    return 1 - sum(clean) / len(clean)


def _full_permutation(text: str, n: int) -> bool:
    named = re.findall(r"\[\s*(\d+)\s*\]", answer_region(text)[0])
    return tags_ok(text) and sorted(named, key=int) == [str(k) for k in range(1, n + 1)]


def bm25(collection, preset, qids, depth) -> tuple[Run, dict]:
    """The shared candidates, and BM25's own row (its seconds: the search alone, index built)."""
    index = retrieval.BM25(collection, preset.bm25_stopwords, preset.bm25_stemmer)
    start = time.perf_counter()
    run = index.search({q: collection.queries[q] for q in qids}, k=depth)
    seconds = (time.perf_counter() - start) / len(qids)
    return run, {"BM25": {**quality(run, collection, qids), "seconds/query": seconds, "median chunk seconds/query": seconds}}


def paradigm_rows(paradigms: dict, results: dict, collection, run, qids, weight: float) -> dict:
    rows = {}
    for name, result in results.items():
        spent = costs(result, len(qids))
        if name == LISTWISE:  # a permutation has no scores to interpolate
            rows[name] = {**quality(result["run"], collection, qids), **spent}
            continue
        for w in sorted({0.0, weight}):
            scored = weighted(paradigms[name], result["model scores"], run, w)
            rows[f"{name} (w={w:g})"] = {**quality(scored, collection, qids), **spent}
    return rows


def add_ceiling(rows: dict, params: int, samples: list[float]) -> dict:
    """The ceiling in prompt tokens/s from the median matmul sample, and each row's prefill
    throughput as a fraction of it."""
    gflops = statistics.median(samples)
    tokens_per_s = gflops * 1e9 / (2 * params)
    for row in rows.values():
        if "prefill tokens/s" in row:
            row["ceiling fraction"] = row["prefill tokens/s"] / tokens_per_s
    return {"gflops": gflops, "gflops samples": samples, "tokens/s": tokens_per_s,
            "formula": "median matmul GFLOP/s * 1e9 / (2 * non-embedding parameters)"}


# --- targets ---------------------------------------------------------------------------------------

def speed_ratios(rows: dict) -> dict[str, dict[str, float]]:
    """How many times fewer seconds/query groupwise needs than each baseline, per scoring,
    from the total wall clock and from the median chunk."""
    out = {}
    for scoring in ("generate", "logprob"):
        mine = rows[f"groupwise {scoring} (w=0)"]
        for baseline in (LISTWISE, f"pointwise {scoring} (w=0)"):
            out[f"groupwise {scoring} vs {baseline.split(' (')[0]}"] = {
                key: rows[baseline][key] / mine[key] for key in ("seconds/query", "median chunk seconds/query")}
    return out


def target_checks(rows: dict, ratios: dict, weight: float) -> list[dict]:
    """Each target of the issue as {target, measured, met}; speed is judged on the total wall
    clock, the median-chunk ratio is shown beside it."""
    checks = []
    for scoring in ("generate", "logprob"):
        for baseline, target in (("listwise", TARGET_VS_LISTWISE), (f"pointwise {scoring}", TARGET_VS_POINTWISE)):
            ratio = ratios[f"groupwise {scoring} vs {baseline}"]
            checks.append({"target": f"groupwise {scoring} ≥ {target}× faster than {baseline}",
                           "measured": f"{ratio['seconds/query']:.2f}× (median chunk {ratio['median chunk seconds/query']:.2f}×)",
                           "met": ratio["seconds/query"] >= target})
        for w in sorted({0.0, weight}):
            mine = rows[f"groupwise {scoring} (w={w:g})"]["nDCG@10"]
            for other in (LISTWISE, f"pointwise {scoring} (w={w:g})"):
                theirs = rows[other]["nDCG@10"]
                checks.append({"target": f"nDCG@10 groupwise {scoring} (w={w:g}) ≥ {other}",
                               "measured": f"{mine:.4f} vs {theirs:.4f}", "met": mine >= theirs})
        fraction = rows[f"groupwise {scoring} (w=0)"]["ceiling fraction"]
        checks.append({"target": f"groupwise {scoring} prefill ≥ {TARGET_CEILING:.0%} of the matmul ceiling",
                       "measured": f"{fraction:.1%}", "met": fraction >= TARGET_CEILING})
    return checks


# --- report ----------------------------------------------------------------------------------------

COLUMNS = [("nDCG@10", "{:.4f}"), ("seconds/query", "{:.2f}"), ("median chunk seconds/query", "{:.2f}"),
           ("calls/query", "{:.1f}"),
           ("prompt tokens/query", "{:.0f}"), ("generated tokens/query", "{:.0f}"),
           ("prefill tokens/s", "{:.0f}"), ("ceiling fraction", "{:.1%}"), ("format failures", "{:.1%}")]


def markdown(result: dict) -> str:
    m, s, c = result["machine"], result["setup"], result["ceiling"]
    lines = [f"Reranking paradigms: {s['collection']}, {s['queries']} test queries, BM25 top-{s['depth']}, "
             f"{s['model']} model ({s['non-embedding parameters'] / 1e6:.1f}M non-embedding parameters), "
             f"group size {s['group size']}, batch size {s['batch size']}, {s['chunk']} quer"
             f"{'y' if s['chunk'] == 1 else 'ies'} sent together, preset `{s['preset']}`.", "",
             "| paradigm | " + " | ".join(name for name, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, row in result["rows"].items():
        cells = ["–" if row.get(col) is None else fmt.format(row[col]) for col, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"w = weight of the min-max normalised BM25 score; rows w={s['retriever weight']:g} and w=0 share "
              "one model run (interpolation is free): same costs, different nDCG@10.",
              f"Ceiling: fp32 2048×2048 matmul at {m['threads']} threads, median {c['gflops']:.0f} GFLOP/s "
              f"({len(c['gflops samples'])} samples, {min(c['gflops samples']):.0f}–{max(c['gflops samples']):.0f}) "
              f"→ {c['tokens/s']:.0f} prompt tokens/s = GFLOP/s · 1e9 / (2 · non-embedding parameters).",
              "", "| speed-up (seconds/query) | total | median chunk |", "|---|---|---|"]
    lines += [f"| {k} | {v['seconds/query']:.2f}× | {v['median chunk seconds/query']:.2f}× |"
              for k, v in result["speed ratios"].items()]
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |" for t in result["targets"]]
    load = {when: ", ".join(f"{x:.2f}" for x in m[f"load average at {when} (1, 5, 15 min)"]) for when in ("start", "end")}
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, torch {m['torch']}, "
              f"transformers {m['transformers']}, Python {m['python']}, {m['date']}; "
              f"load average (1, 5, 15 min) {load['start']} at start, {load['end']} at end."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import pandas as pd

    table = pd.DataFrame(result["rows"]).T[["seconds/query", "nDCG@10"]].astype(float)
    s, m = result["setup"], result["machine"]
    subtitle = (f"{s['model']} model, Cranfield {s['queries']} queries × BM25 top-{s['depth']}, "
                f"{m['cpu']} ({m['threads']} threads)")
    plots.paradigm_benchmark(table, subtitle).savefig(path, dpi=120)


def write(result: dict, stem: Path) -> None:
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    stem.with_suffix(".md").write_text(table)
    plot(result, stem.with_suffix(".png"))
    print(table)
    print(f"wrote {stem}.json, .md and .png")


# --- main ------------------------------------------------------------------------------------------

def main() -> None:
    args = parse_args()
    preset = get_preset(args.preset, threads=args.threads)
    runtime.setup(preset)
    machine = machine_info(args.threads)
    collection = data.load_collection(preset.collection)
    qids = data.split_queries(collection, preset.split_seed, preset.test_fraction, preset.dev_fraction).test[:args.queries]
    run, rows = bm25(collection, preset, qids, args.depth)
    model, tokenizer = llm.load(preset)
    model(**tokenizer(["warm up"], return_tensors="pt"))  # first-call overheads stay out of the timings
    chunk = args.chunk or preset.batch_size
    stem = args.out / f"rerank_paradigms_{preset.name}_q{args.queries}_d{args.depth}_t{args.threads}_c{chunk}"
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = stem.with_suffix(".partial.json")
    paradigms = rerankers(model, tokenizer, preset)
    state = run_interleaved(paradigms, collection, run, qids, args.depth, chunk, checkpoint)
    machine["load average at end (1, 5, 15 min)"] = os.getloadavg()
    machine["process starts (a killed run resumes)"] = state["starts"]
    rows |= paradigm_rows(paradigms, state["results"], collection, run, qids, preset.retriever_weight)
    params = non_embedding_parameters(model)
    ceiling = add_ceiling(rows, params, list(state["gflops"].values()))
    ratios = speed_ratios(rows)
    setup = {"preset": preset.name, "collection": preset.collection, "queries": len(qids), "qids": qids,
             "depth": args.depth, "model": preset.model, "non-embedding parameters": params,
             "group size": preset.group_size, "passes": preset.passes, "batch size": preset.batch_size, "chunk": chunk,
             "retriever weight": preset.retriever_weight, "doc max chars": preset.doc_max_chars,
             "max new tokens": preset.max_new_tokens}
    write({"machine": machine, "setup": setup, "ceiling": ceiling, "rows": rows, "speed ratios": ratios,
           "targets": target_checks(rows, ratios, preset.retriever_weight)}, stem)
    checkpoint.unlink()  # finished: a new run starts afresh


if __name__ == "__main__":
    main()
