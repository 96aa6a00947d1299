"""Speed and quality of the reranking paradigms, side by side on one machine, in two regimes.

    python benchmarks/rerank_paradigms.py [--preset cpu] [--threads 2] [--quick]
        [--regimes latency throughput] [--latency-queries 4] [--latency-depth 100]
        [--queries 8] [--depth 40] [--adapter FOLDER] [--out runs/benchmarks/]

Every paradigm reranks the same BM25 candidates of the same Cranfield test queries (the
preset's split) with the same model and the same cut of each document: pointwise (generate
and logprob), listwise (window 20, step 10), groupwise (generate and logprob, the preset's
group size). Two regimes, one after the other in one process:

- **latency** (the paper's seconds-per-query setting): one query at a time, BM25 top 100. A
  batch holds all groups of the query (100 / group size prompts), so groupwise sends its whole
  query at once, pointwise sends 100 prompts in batches of that size, and listwise must wait for
  each of its 9 windows before it can build the next. Extra rows: groupwise with groups twice as
  large; the shared-prefix cache (`llm.LLM(prefix_cache=True)`) on groupwise and pointwise; and
  reasoning on (`<reason>` before `<answer>`) for all three paradigms, every reasoning output
  capped at the preset's `max_new_tokens`, so the comparison is about structure, not about how
  much a model chooses to write.
- **throughput**: queries sent together in chunks of the preset's batch size, BM25 top 40,
  answer-only: listwise batches the windows of different queries at the same stage, which hides
  much of its sequential cost.

Rows with and without interpolation with the retriever (the preset's weight, and 0) share one
model run: interpolation is post-processing of the model's scores and costs nothing, so each
row shows both nDCG@10 columns.

Per paradigm: nDCG@10, seconds/query (wall clock), model calls, prompts per batch, prompt and
generated tokens per query, the share of prompt tokens a shared prefix saved, prefill tokens/s
(computed prompt tokens / prefill seconds, from GenerationStats), that throughput as a fraction
of the machine's own ceiling, milliseconds per decoding step (what one more generated token
costs at that batch size: the reason listwise's 9 sequential windows cost what they do), and the
share of free-text answers that did not parse cleanly.

Queries go in chunks, and every paradigm runs on a chunk before the next chunk starts. On a
shared machine the load changes over minutes; interleaving spreads it over all paradigms
instead of charging it to whichever ran at a busy moment, and the median over chunks of
seconds/query is reported next to the total, as a figure that one contended chunk cannot move.

The ceiling is measured in the same run, at the same thread count, by timing a large fp32
matmul before the first chunk and after each chunk; the median sample is used, since the
paradigms' throughput is likewise an average over the run's changing load:

    ceiling tokens/s = matmul FLOP/s / (2 · N)

N = the model's non-embedding parameters. A forward pass costs about 2 FLOPs (a multiply and
an add) per weight per token; the embedding lookup costs none, and during prefill the LM head
runs only at the last position (generate) or at the score slots (logprob). Attention's own
FLOPs (quadratic in length) and padding tokens are work the formula does not count, so the
fraction slightly understates how well the hardware is used.

Writes <stem>.json, <stem>.md and one <stem>_<regime>.png per regime into --out and prints the
markdown. The state of each regime is saved to <stem>_<regime>.partial.json after every step: a
killed run, started again with the same arguments, resumes where it stopped (the JSON lists
every start). `--quick` (one latency query, one throughput chunk: ~15 min on 2 cores) is for
a student who wants to see the regimes, not for numbers.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path

import torch
import transformers

from grouprank_mini import data, evaluate, get_preset, llm, plots, retrieval, runtime
from grouprank_mini.experiments import paired_bootstrap, per_query_costs
from grouprank_mini.llm import LLM, GenerationStats
from grouprank_mini.parsing import ParsedGroup, answer_region, tags_ok
from grouprank_mini.rerank import GroupwiseReranker, ListwiseReranker, PointwiseReranker, reweighted_run
from grouprank_mini.runs import Run

# The paper's measured speed-ups of GroupRank (docs/paper.md §5) and the issues' bars.
TARGET_VS_LISTWISE, TARGET_VS_POINTWISE = 6.4, 2.4
TARGET_GENERATED_VS_LISTWISE = 3.0  # latency: with generated answers, where decoding is part of both costs
TARGET_CEILING = {"latency": 0.7, "throughput": 0.5}
TARGET_PREFIX_SHARE = 0.25  # share of groupwise prompt compute the shared-prefix cache should save
LISTWISE = "listwise (window 20, step 10)"
CACHE, REASONING = ", prefix cache", ", reasoning"  # name suffixes of the latency regime's extra rows
LATENCY, THROUGHPUT = "latency", "throughput"


@dataclass(frozen=True)
class Regime:
    """How queries reach the rerankers: `chunk` queries at once, `batch_size` prompts per batch."""

    name: str
    queries: int
    depth: int
    chunk: int
    batch_size: int

    @property
    def tag(self) -> str:
        return f"{self.name}-q{self.queries}-d{self.depth}"


def regimes(args, preset) -> list[Regime]:
    """The regimes asked for. Latency: a batch holds all groups of one query. Throughput: the
    preset's batch size, and as many queries sent together."""
    latency = Regime(LATENCY, 1 if args.quick else args.latency_queries, args.latency_depth, 1,
                     max(preset.batch_size, math.ceil(args.latency_depth / preset.group_size)))
    throughput = Regime(THROUGHPUT, preset.batch_size if args.quick else args.queries, args.depth,
                        preset.batch_size, preset.batch_size)
    return [r for r in (latency, throughput) if r.name in args.regimes]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--regimes", nargs="+", choices=(LATENCY, THROUGHPUT), default=[LATENCY, THROUGHPUT])
    parser.add_argument("--latency-queries", type=int, default=4, help="first N test queries, one at a time")
    parser.add_argument("--latency-depth", type=int, default=100, help="BM25 candidates per query (latency)")
    parser.add_argument("--queries", type=int, default=8, help="first N test queries (throughput)")
    parser.add_argument("--depth", type=int, default=40, help="BM25 candidates per query (throughput)")
    parser.add_argument("--quick", action="store_true", help="one latency query and one throughput chunk")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--adapter", type=Path, default=None,
                        help="a trained LoRA folder (e.g. .cache/adapters/cpu/grpo); default: the zero-shot model")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks"))
    return parser.parse_args(argv)


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

def rerankers(model, tokenizer, preset, regime: Regime) -> dict:
    """Every model-based paradigm of the regime, each on its own engine (own counters), all
    without interpolation (weight 0: the weighted column comes from `rerank.reweighted_run`)."""
    base = replace(preset, retriever_weight=0.0, batch_size=regime.batch_size)

    def make(kind: str, scoring: str = "generate", cache: bool = False, **fields):
        p = replace(base, **fields)
        engine = LLM(model, tokenizer, p, progress=os.isatty(2), prefix_cache=cache)  # no bars in a log file
        if kind == "listwise":
            return ListwiseReranker(engine, p, window=20, step=10)
        return (GroupwiseReranker if kind == "groupwise" else PointwiseReranker)(engine, p, scoring=scoring)

    out = {"groupwise generate": make("groupwise"), "groupwise logprob": make("groupwise", "logprob"),
           LISTWISE: make("listwise"),
           "pointwise generate": make("pointwise"), "pointwise logprob": make("pointwise", "logprob")}
    if regime.name == LATENCY:
        big = 2 * preset.group_size
        out |= {f"groupwise generate, groups of {big}": make("groupwise", group_size=big),
                f"groupwise logprob, groups of {big}": make("groupwise", "logprob", group_size=big),
                f"groupwise generate{CACHE}": make("groupwise", cache=True),
                f"groupwise logprob{CACHE}": make("groupwise", "logprob", cache=True),
                f"pointwise logprob{CACHE}": make("pointwise", "logprob", cache=True),
                f"{LISTWISE}{REASONING}": make("listwise", reasoning=True),
                f"groupwise generate{REASONING}": make("groupwise", reasoning=True),
                f"pointwise generate{REASONING}": make("pointwise", reasoning=True)}
    return out


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


# --- measurements ----------------------------------------------------------------------------------

def quality(run, collection, qids) -> dict:
    per_query = evaluate.per_query_scores(run, evaluate.judged_qrels(collection, qids))["nDCG@10"]
    return {"nDCG@10": evaluate.evaluate(run, collection, qids)["nDCG@10"], "per-query nDCG@10": per_query}


def costs(result: dict, n: int) -> dict:
    """What one paradigm spent per query, summed over all chunks."""
    stats = GenerationStats(**result["stats"])
    decode_seconds = stats.seconds - stats.prefill_seconds
    return {**per_query_costs(stats, result["seconds"], n),
            "median chunk seconds/query": statistics.median(result["chunk seconds/query"]),
            "batches": stats.batches, "prompts/batch": stats.calls / stats.batches if stats.batches else None,
            "prefix share": stats.cached_tokens / stats.prompt_tokens if stats.prompt_tokens else 0.0,
            "prefill seconds/query": stats.prefill_seconds / n,
            "ms/decode step": 1000 * decode_seconds / stats.decode_steps if stats.decode_steps else None,
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
    own = quality(run, collection, qids)
    return run, {"BM25": {**own, WEIGHTED: own["nDCG@10"], "seconds/query": seconds,
                          "median chunk seconds/query": seconds}}


WEIGHTED = "nDCG@10 interpolated"  # with the preset's retriever weight; "nDCG@10" is the model alone (w=0)


def paradigm_rows(paradigms: dict, results: dict, collection, run, qids, weight: float) -> dict:
    """One row per paradigm: both nDCG@10 columns from its one model run, and its costs.
    A listwise permutation has no scores to interpolate: its interpolated column stays empty."""
    rows = {}
    for name, result in results.items():
        reranker = paradigms[name]
        if isinstance(reranker, ListwiseReranker):
            rows[name] = {**quality(result["run"], collection, qids), WEIGHTED: None}
        else:
            rows[name] = {**quality(reweighted_run(result["model scores"], run, 0.0), collection, qids),
                          WEIGHTED: quality(reweighted_run(result["model scores"], run, weight), collection, qids)["nDCG@10"]}
        rows[name] |= costs(result, len(qids))
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


def prefix_cache_check(results: dict) -> dict:
    """Whether the shared-prefix cache changed anything but the cost: the largest score difference
    (token probabilities) and the share of identical answers (generation) against the same
    paradigm without it. Both runs see the same groups in the same order."""
    out = {}
    for name in results:
        if not name.endswith(CACHE):
            continue
        plain, cached = results[name.removesuffix(CACHE)], results[name]
        if "logprob" in name:
            out[name] = {"max score difference": max(abs(a - cached["model scores"][q][d])
                                                     for q, scores in plain["model scores"].items()
                                                     for d, a in scores.items())}
        else:
            same = [a["text"] == b["text"] for a, b in zip(plain["outputs"], cached["outputs"])]
            out[name] = {"identical answers": sum(same) / len(same)}
    return out


def noise(rows: dict, pairs: list[tuple[str, str]]) -> list[dict]:
    """Paired bootstrap of nDCG@10 (model alone) over the run's queries for `pairs` of rows."""
    return [{"system": a, "baseline": b, **paired_bootstrap(rows[a]["per-query nDCG@10"], rows[b]["per-query nDCG@10"])}
            for a, b in pairs if a in rows and b in rows]


# --- targets ---------------------------------------------------------------------------------------

def label(name: str) -> str:
    return name.replace(" (window 20, step 10)", "")


def speed_pairs(rows: dict) -> list[tuple[str, str]]:
    """(groupwise row, baseline row) pairs with the same scoring, as far as the rows have them."""
    pairs = [(f"groupwise {s}", base) for s in ("generate", "logprob") for base in (LISTWISE, f"pointwise {s}")]
    pairs += [(f"groupwise generate{REASONING}", f"{LISTWISE}{REASONING}"),
              (f"groupwise generate{REASONING}", f"pointwise generate{REASONING}"),
              (f"pointwise logprob{CACHE}", "pointwise logprob")]
    pairs += [(f"groupwise {s}{CACHE}", f"groupwise {s}") for s in ("generate", "logprob")]
    return [(a, b) for a, b in pairs if a in rows and b in rows]


def speed_ratios(rows: dict) -> dict[str, dict[str, float]]:
    """How many times fewer seconds/query a row needs than its baseline, from the total wall
    clock and from the median chunk."""
    return {f"{label(a)} vs {label(b)}": {key: rows[b][key] / rows[a][key]
                                          for key in ("seconds/query", "median chunk seconds/query")}
            for a, b in speed_pairs(rows)}


def fastest_groupwise(rows: dict) -> str:
    """The quickest answer-only groupwise row (any scoring, group size or cache)."""
    return min((n for n in rows if n.startswith("groupwise") and not n.endswith(REASONING)),
               key=lambda n: rows[n]["seconds/query"])


def target_checks(rows: dict, ratios: dict, regime: str = THROUGHPUT, prefix: dict | None = None) -> list[dict]:
    """Each target as {target, measured, met}; speed is judged on the total wall clock, the
    median-chunk ratio is shown beside it."""
    checks = []

    def speed(mine: str, baseline: str, target: float) -> None:
        ratio = {key: rows[baseline][key] / rows[mine][key] for key in ("seconds/query", "median chunk seconds/query")}
        checks.append({"target": f"{label(mine)} ≥ {target}× faster than {label(baseline)}",
                       "measured": f"{ratio['seconds/query']:.2f}× (median chunk {ratio['median chunk seconds/query']:.2f}×)",
                       "met": ratio["seconds/query"] >= target})

    if regime == LATENCY:
        speed(fastest_groupwise(rows), LISTWISE, TARGET_VS_LISTWISE)
        speed("groupwise generate", LISTWISE, TARGET_GENERATED_VS_LISTWISE)
        speed(f"groupwise generate{REASONING}", f"{LISTWISE}{REASONING}", TARGET_GENERATED_VS_LISTWISE)
        speed(f"groupwise generate{REASONING}", f"pointwise generate{REASONING}", TARGET_VS_POINTWISE)
    else:
        for scoring in ("generate", "logprob"):
            speed(f"groupwise {scoring}", LISTWISE, TARGET_VS_LISTWISE)
    for scoring in ("generate", "logprob"):
        speed(f"groupwise {scoring}", f"pointwise {scoring}", TARGET_VS_POINTWISE)
    for scoring in ("generate", "logprob"):
        mine = rows[f"groupwise {scoring}"]
        for column, w in (("nDCG@10", "w=0"), (WEIGHTED, "interpolated")):
            for other in (LISTWISE, f"pointwise {scoring}"):
                theirs = rows[other][column] if rows[other][column] is not None else rows[other]["nDCG@10"]
                checks.append({"target": f"nDCG@10 groupwise {scoring} ({w}) ≥ {label(other)}",
                               "measured": f"{mine[column]:.4f} vs {theirs:.4f}", "met": mine[column] >= theirs})
    for scoring in ("generate", "logprob"):
        fraction = rows[f"groupwise {scoring}"]["ceiling fraction"]
        checks.append({"target": f"groupwise {scoring} prefill ≥ {TARGET_CEILING[regime]:.0%} of the matmul ceiling",
                       "measured": f"{fraction:.1%}", "met": fraction >= TARGET_CEILING[regime]})
    for name, check in (prefix or {}).items():
        share = rows[name]["prefix share"]
        checks.append({"target": f"{name.removesuffix(CACHE)}: prefix cache saves ≥ {TARGET_PREFIX_SHARE:.0%} of prompt compute",
                       "measured": f"{share:.1%}", "met": share >= TARGET_PREFIX_SHARE})
        if "max score difference" in check:
            diff = check["max score difference"]
            checks.append({"target": f"{name}: same scores as without (|difference| ≤ 1e-3)",
                           "measured": f"{diff:.1e}", "met": diff <= 1e-3})
        else:
            same = check["identical answers"]
            checks.append({"target": f"{name}: the same answers as without", "measured": f"{same:.0%} identical",
                           "met": same == 1.0})
    return checks


# --- report ----------------------------------------------------------------------------------------

COLUMNS = [("nDCG@10", "{:.4f}"), (WEIGHTED, "{:.4f}"), ("seconds/query", "{:.2f}"),
           ("median chunk seconds/query", "{:.2f}"), ("calls/query", "{:.1f}"), ("prompts/batch", "{:.1f}"),
           ("prompt tokens/query", "{:.0f}"), ("generated tokens/query", "{:.0f}"), ("prefix share", "{:.1%}"),
           ("prefill tokens/s", "{:.0f}"), ("ceiling fraction", "{:.1%}"), ("ms/decode step", "{:.0f}"),
           ("format failures", "{:.1%}")]


def header(name: str, weight: float) -> str:
    return {"nDCG@10": "nDCG@10 (w=0)", WEIGHTED: f"nDCG@10 (w={weight:g})"}.get(name, name)


def regime_markdown(name: str, r: dict, s: dict) -> list[str]:
    g, c = r["regime"], r["ceiling"]
    sent = min(g["chunk"], g["queries"])
    together = "one query at a time" if sent == 1 else f"{sent} queries sent together"
    lines = [f"#### {name}: {g['queries']} quer{'y' if g['queries'] == 1 else 'ies'}, BM25 top {g['depth']}, "
             f"{together}, batches of up to {g['batch_size']} prompts", "",
             "| paradigm | " + " | ".join(header(col, s["retriever weight"]) for col, _ in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    for row_name, row in r["rows"].items():
        cells = ["–" if row.get(col) is None else fmt.format(row[col]) for col, fmt in COLUMNS]
        lines.append(f"| {row_name} | " + " | ".join(cells) + " |")
    lines += ["", f"Ceiling: fp32 2048×2048 matmul, median {c['gflops']:.0f} GFLOP/s ({len(c['gflops samples'])} samples, "
              f"{min(c['gflops samples']):.0f}–{max(c['gflops samples']):.0f}) → {c['tokens/s']:.0f} prompt tokens/s.",
              "", "| speed-up (seconds/query) | total | median chunk |", "|---|---|---|"]
    lines += [f"| {k} | {v['seconds/query']:.2f}× | {v['median chunk seconds/query']:.2f}× |" for k, v in r["speed ratios"].items()]
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |" for t in r["targets"]]
    lines += ["", f"nDCG@10 differences (model alone, paired bootstrap over these {g['queries']} queries, 95%):"]
    lines += [f"- {label(b['system'])} − {label(b['baseline'])}: {b['mean difference']:+.3f} "
              f"[{b['low']:+.3f}, {b['high']:+.3f}]" for b in r["noise"]]
    return lines + [""]


def markdown(result: dict) -> str:
    m, s = result["machine"], result["setup"]
    lines = [f"Reranking paradigms: {s['collection']} test queries, {s['model']} "
             f"({s['non-embedding parameters'] / 1e6:.1f}M non-embedding parameters), groups of {s['group size']}, "
             f"documents cut at {s['doc max chars']} characters, reasoning rows capped at {s['max new tokens']} new tokens, "
             f"preset `{s['preset']}`. w = weight of the min-max normalised BM25 score; both nDCG@10 columns come "
             "from one model run (interpolation is free). ms/decode step: wall time after the first new token "
             "per decoding step (one step serves every prompt of a batch).", ""]
    for name, r in result["regimes"].items():
        lines += regime_markdown(name, r, s)
    load = {when: ", ".join(f"{x:.2f}" for x in m[f"load average at {when} (1, 5, 15 min)"]) for when in ("start", "end")}
    lines += [f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, torch {m['torch']}, "
              f"transformers {m['transformers']}, Python {m['python']}, {m['date']}; "
              f"load average (1, 5, 15 min) {load['start']} at start, {load['end']} at end; "
              f"wall time {m['wall seconds'] / 60:.0f} min."]
    return "\n".join(lines) + "\n"


def plot(result: dict, regime: str, path: Path) -> None:
    import pandas as pd

    rows = result["regimes"][regime]["rows"]
    table = pd.DataFrame(rows).T[["seconds/query", "nDCG@10"]].astype(float)
    s, m, g = result["setup"], result["machine"], result["regimes"][regime]["regime"]
    subtitle = (f"{regime}: {s['model']}, {g['queries']} Cranfield queries × BM25 top {g['depth']}, "
                f"{m['cpu']} ({m['threads']} threads)")
    plots.paradigm_benchmark(table, subtitle).savefig(path, dpi=120)


def write(result: dict, stem: Path) -> None:
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    stem.with_suffix(".md").write_text(table)
    for regime in result["regimes"]:
        plot(result, regime, stem.with_name(f"{stem.name}_{regime}.png"))
    print(table)
    print(f"wrote {stem}.json, .md and one .png per regime")


# --- main ------------------------------------------------------------------------------------------

def run_regime(regime: Regime, model, tokenizer, preset, collection, qids, stem: Path, params: int) -> dict:
    """One regime, resumable: its rows, ceiling, speed-ups, prefix-cache check and targets."""
    qids = qids[:regime.queries]
    run, rows = bm25(collection, preset, qids, regime.depth)
    paradigms = rerankers(model, tokenizer, preset, regime)
    state = run_interleaved(paradigms, collection, run, qids, regime.depth, regime.chunk, checkpoint_path(stem, regime))
    rows |= paradigm_rows(paradigms, state["results"], collection, run, qids, preset.retriever_weight)
    ceiling = add_ceiling(rows, params, list(state["gflops"].values()))
    prefix = prefix_cache_check(state["results"])
    ratios = speed_ratios(rows)
    pairs = [("groupwise generate", LISTWISE), ("groupwise logprob", "pointwise logprob"),
             ("groupwise generate", "BM25"), (f"groupwise generate{REASONING}", f"{LISTWISE}{REASONING}")]
    return {"regime": asdict(regime), "qids": qids, "starts": state["starts"], "ceiling": ceiling, "rows": rows,
            "speed ratios": ratios, "prefix cache": prefix, "noise": noise(rows, pairs),
            "targets": target_checks(rows, ratios, regime.name, prefix)}


def checkpoint_path(stem: Path, regime: Regime) -> Path:
    return stem.with_name(f"{stem.name}_{regime.name}.partial.json")


def main(argv=None) -> None:
    args = parse_args(argv)
    began = time.perf_counter()
    preset = get_preset(args.preset, threads=args.threads)
    runtime.setup(preset)
    machine = machine_info(args.threads)
    collection = data.load_collection(preset.collection)
    qids = data.split_queries(collection, preset.split_seed, preset.test_fraction, preset.dev_fraction).test
    model, tokenizer = llm.load(preset, adapter=args.adapter)
    model(**tokenizer(["warm up"], return_tensors="pt"))  # first-call overheads stay out of the timings
    chosen = regimes(args, preset)
    model_tag = "zero-shot" if args.adapter is None else f"adapter-{args.adapter.name}"
    stem = args.out / ("rerank_paradigms_" + "_".join([preset.name, model_tag, *(r.tag for r in chosen), f"t{args.threads}"]))
    args.out.mkdir(parents=True, exist_ok=True)
    params = non_embedding_parameters(model)
    results = {r.name: run_regime(r, model, tokenizer, preset, collection, qids, stem, params) for r in chosen}
    machine["load average at end (1, 5, 15 min)"] = os.getloadavg()
    machine["wall seconds"] = time.perf_counter() - began
    setup = {"preset": preset.name, "collection": preset.collection,
             "model": f"zero-shot {preset.model}" if args.adapter is None else f"{preset.model} + adapter {args.adapter}",
             "non-embedding parameters": params, "group size": preset.group_size, "passes": preset.passes,
             "retriever weight": preset.retriever_weight, "doc max chars": preset.doc_max_chars,
             "max new tokens": preset.max_new_tokens}
    write({"machine": machine, "setup": setup, "regimes": results}, stem)
    for regime in chosen:
        checkpoint_path(stem, regime).unlink()  # finished: a new run starts afresh


if __name__ == "__main__":
    main()
