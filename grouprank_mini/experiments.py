"""The experiments the notebooks and the benchmark run on top of the rerankers: quality and cost
of one reranker, the paradigm comparison, the paper's sweeps, score calibration, predicted-score
distributions, every trained model of a preset side by side, learning curves of the model's own
judgement over training steps, and one query's candidates before and after training.

Every function takes the same candidates for every system it compares (one first-stage run,
the same queries), so differences come from the systems alone.
"""
from __future__ import annotations

import random
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pandas as pd
from ir_measures import nDCG

from . import llm
from .config import ABLATIONS
from .evaluate import evaluate, judged_qrels, per_query_scores, remove_excluded
from .parsing import ParsedGroup, parse_group_scores
from .plots import rolling_reward
from .rerank import GroupwiseReranker, ListwiseReranker, PointwiseReranker, RankResult, RerankedRun, Reranker
from .runs import Run, order_scores, ranked_ids, top_k
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
        # Computed tokens only: a shared prefix's copies (prefix cache) cost nothing.
        "prefill tokens/s": (stats.prompt_tokens - stats.cached_tokens) / stats.prefill_seconds
        if stats.prefill_seconds else float("nan"),
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


def compare_paradigms(model, tokenizer, preset, collection, run: Run, qids: list[str], depth: int | None = None,
                      first_stage: str = "BM25"):
    """One table: the first stage `run` (its row named `first_stage`) and each paradigm reranking
    its top-`depth` candidates, on the same queries."""
    depth = depth or preset.rerank_depth
    rows = {first_stage: {"nDCG@10": evaluate(run, collection, qids)["nDCG@10"]}}
    for name, reranker in paradigm_rerankers(model, tokenizer, preset).items():
        rows[name] = measure(reranker, collection, run, qids, depth)
    return pd.DataFrame(rows).T


def rerank_systems(systems: dict, tokenizer, preset, collection, run: Run, qids: list[str],
                   scorings=("generate", "logprob")) -> dict[str, RerankedRun]:
    """The groupwise reranker with each model of `systems` ({name: model}) and each scoring, on
    the same candidates; results named "<model name> (<scoring>)". Each keeps the model's own
    scores, so other retriever weights need no new model call (`RerankedRun.reweighted`)."""
    return {f"{name} ({scoring})": GroupwiseReranker(llm.LLM(model, tokenizer, preset), preset, scoring)
            .rerank_run(collection, run, qids=qids)
            for scoring in scorings for name, model in systems.items()}


def sweep(model, tokenizer, preset, collection, run: Run, qids: list[str], field: str, values, scoring: str = "logprob"):
    """Groupwise nDCG@10 and cost as one preset field varies (the paper's Fig. 3 and Fig. 5)."""
    rows = {}
    for value in values:
        varied = replace(preset, **{field: value})
        reranker = GroupwiseReranker(llm.LLM(model, tokenizer, varied), varied, scoring)
        rows[value] = measure(reranker, collection, run, qids, preset.rerank_depth)
    return pd.DataFrame(rows).T.rename_axis(field)


def trend(values: list[float], flat: float = 0.005) -> str:
    """How a sequence of scores moves, in words: "stays flat" (all within `flat`), "rises",
    "falls", or "moves up and down" (no single direction)."""
    if max(values) - min(values) <= flat:
        return "stays flat"
    steps = [b - a for a, b in zip(values, values[1:])]
    return "rises" if min(steps) >= 0 else "falls" if max(steps) <= 0 else "moves up and down"


def reward_trend_sentence(history, batch_size: int) -> str:
    """GRPO's training reward from its first to its last rolling mean (`plots.rolling_reward`), in
    one sentence that counts what was sampled: batches of `batch_size` completions, and the
    optimisation steps they served (more than the batches when grpo_num_iterations > 1)."""
    smooth = rolling_reward(history)
    return (f"rolling mean of the reward: {smooth.iloc[0]:.3f} at step {smooth.index[0]} -> "
            f"{smooth.iloc[-1]:.3f} at step {smooth.index[-1]}: over {len(smooth)} batches of {batch_size} "
            f"completions ({int(history.index.max())} optimisation steps) it {trend(list(smooth))}")


def sweep_sentence(table: pd.DataFrame, label: str, queries: int) -> str:
    """One sentence on a `sweep` table, from its own numbers: the nDCG@10 trend, each value, and the
    largest move one query can cause on its own (1/queries, since nDCG@10 lies in [0, 1])."""
    scores = table["nDCG@10"]
    values = ", ".join(f"{v:g}: {s:.3f}" for v, s in scores.items())
    return (f"nDCG@10 {trend(list(scores))} with the {label} ({values}) on {queries} queries, "
            f"where one query alone can move the mean by up to {1 / queries:.3f}; "
            f"seconds per query {scores.index[0]:g} -> {scores.index[-1]:g}: "
            f"{table['seconds/query'].iloc[0]:.2f} -> {table['seconds/query'].iloc[-1]:.2f}.")


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
    """Where each training stage of `preset` saves its adapter, by the name tables use; "SFT" is
    the snapshot kept in notebook 02 (`train.kept_adapter`), which GRPO started from."""
    from .train import kept_adapter  # imported here: train loads TRL, which nothing else here needs

    return {"SFT": kept_adapter(adapter_dir(preset, "sft")), "SFT+GRPO": grpo_dir(preset),
            **{f"GRPO {name.replace('_', ' ')}": grpo_dir(preset, name) for name in ABLATIONS}}


def trained_models(preset) -> dict:
    """The base model and every finished adapter of this preset, in training order."""
    found = {"zero-shot": llm.load(preset)[0]}
    for label, path in adapter_folders(preset).items():
        if (path / "adapter_config.json").is_file():
            found[label] = llm.load(preset, adapter=path)[0]
        else:
            print(f"{label}: not trained with this preset (no adapter at {path}), so it is left out of the tables")
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


def best_weight(reranked: RerankedRun, first_stage: Run, collection,
                weights=(0.0, 0.2, 0.4, 0.6, 0.8)) -> tuple[float, dict[float, float]]:
    """The retriever weight w with the best nDCG@10 on the queries of `reranked` (a reranking of
    `first_stage`), and the score of every w tried. One model run serves every w (`reweighted` is
    post-processing), so choose w on dev queries, then apply it to test queries: choosing it on
    test would flatter the reranker."""
    qids = list(reranked.results)
    scores = {w: evaluate(reranked.reweighted(first_stage, w), collection, qids)["nDCG@10"] for w in weights}
    return max(scores, key=lambda w: (scores[w], -w)), scores


def dev_weight(model, tokenizer, preset, collection, dev_run: Run, dev: list[str]) -> tuple[float, dict[float, float]]:
    """The retriever weight a user would choose for `model`: `best_weight` of its token-probability
    scores on the `dev` queries of `dev_run`. Returns (that weight, dev nDCG@10 of every weight tried)."""
    scorer = GroupwiseReranker(llm.LLM(model, tokenizer, preset), preset, scoring="logprob")
    return best_weight(scorer.rerank_run(collection, dev_run, qids=dev), dev_run, collection)


def bootstrap_verdict(result: dict) -> str:
    """What a `paired_bootstrap` interval says, in words."""
    if result["low"] > 0:
        return "a gain beyond noise"
    if result["high"] < 0:
        return "a loss beyond noise"
    return "within noise (the interval contains 0)"


def _signed(value: float) -> str:
    """+0.123; a non-zero bound that three decimals would print as ±0.000, next to a verdict that
    depends on its sign, keeps its first significant digit instead (-0.0002, or -3e-06)."""
    if not value or round(value, 3) != 0:
        return f"{value:+.3f}"
    return f"{value:+.4f}" if round(value, 4) != 0 else f"{value:+.0e}"


def bootstrap_sentence(result, system: str, baseline: str, level: float = 0.95) -> str:
    """One sentence built from a `paired_bootstrap` result, so a notebook states only what was measured."""
    return (f"{system} vs {baseline}: {result['mean difference']:+.3f} nDCG@10, {level:.0%} interval "
            f"[{_signed(result['low'])}, {_signed(result['high'])}], {_count(result['wins'], 'win')} / "
            f"{_count(result['losses'], 'loss')} over {_count(result['queries'], 'query')}: {bootstrap_verdict(result)}.")


def _count(n: int, noun: str) -> str:
    """3 wins, 1 win, 1 loss, 2 queries: a sentence a projector shows should read right."""
    plural = {"loss": "losses", "query": "queries"}.get(noun, noun + "s")
    return f"{n} {noun if n == 1 else plural}"


# --- the model's own judgement, and how training moves it -------------------------------------------

def own_reranker(model, tokenizer, preset) -> GroupwiseReranker:
    """The groupwise reranker that shows what the model itself learned: scores read from token
    probabilities (no sampling, no unreadable answers that fall back to the retriever) and retriever
    weight 0, so none of the first stage's score is mixed in; the first stage only breaks exact ties."""
    own = replace(preset, retriever_weight=0.0)
    return GroupwiseReranker(llm.LLM(model, tokenizer, own), own, scoring="logprob")


def per_query_ndcg(run: Run, collection, qids) -> dict[str, float]:
    """nDCG@10 of each judged query among `qids`; a query missing from `run` counts 0, as in `evaluate`."""
    qrels = judged_qrels(collection, qids)
    found = per_query_scores(remove_excluded(run, collection), qrels, (nDCG @ 10,))["nDCG@10"]
    return {q: found.get(q, 0.0) for q in qrels}


def random_order(run: Run, collection, qids, depth: int, draws: int = 50, seed: int = 0) -> dict[str, float]:
    """The floor of own judgement: each query's nDCG@10 with its top `depth` candidates shuffled,
    averaged over `draws` shuffles (below `depth` the first stage's order is kept, as the reranker
    keeps it). A model that judges nothing lands here; one that judges like the first stage lands
    on the first stage's score."""
    rng = random.Random(seed)
    totals = dict.fromkeys(judged_qrels(collection, qids), 0.0)
    for _ in range(draws):
        shuffled = {}
        for qid in qids:
            order = ranked_ids(run.get(qid, {}))
            head = order[:depth]
            rng.shuffle(head)
            shuffled[qid] = order_scores(head + order[depth:])
        for qid, value in per_query_ndcg(shuffled, collection, qids).items():
            totals[qid] += value / draws
    return totals


def own_judgement(model, tokenizer, preset, collection, run: Run, qids, depth: int | None = None) -> dict[str, float]:
    """Per-query nDCG@10 of `own_reranker` on the top `depth` (default: the preset's rerank_depth)
    of `run`. Below `depth` the first stage's order is kept, which reaches nDCG@10 only if depth < 10."""
    reranked = own_reranker(model, tokenizer, preset).rerank_run(collection, run, depth, qids)
    return per_query_ndcg(reranked.run, collection, qids)


@contextmanager
def adapter_on(base, adapter):
    """`base` with the LoRA adapter folder `adapter` attached (None: the base itself), taken off
    again on exit. Not merged (`llm.with_adapter` merges): a merge would change the shared base for
    every later point of a curve. PEFT's `unload` removes the LoRA layers and leaves the base as it was."""
    if adapter is None:
        yield base
        return
    from peft import PeftModel

    tuned = PeftModel.from_pretrained(base, str(adapter)).eval()
    try:
        yield tuned
    finally:
        tuned.unload()


def stage_points(start, output_dir) -> list[tuple[int, Path | None]]:
    """The (step, adapter) points of one training stage: step 0 is `start` (an adapter folder, or
    None for the base model), then the stage's adapter snapshots. A run from before snapshots were
    saved gives only its final adapter (said in one printed line)."""
    from .train import final_step, snapshots

    output_dir = Path(output_dir)
    if start is not None and not (Path(start) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"the stage's start point {start} holds no adapter_config.json")
    found = snapshots(output_dir)
    if not found:
        if not (output_dir / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{output_dir} holds neither snapshots/step-<N>/ nor a finished adapter: "
                                    "train this stage first")
        print(f"{output_dir}: no adapter snapshots (a run from before they were saved): its end point only")
        found = [(final_step(output_dir), output_dir)]
    return [(0, None if start is None else Path(start)), *found]


def curve_stages(preset) -> dict:
    """The trained stages of `preset` as `learning_curve` takes them: SFT from the base model, then
    GRPO from the SFT snapshot kept (`keep_on_dev`). A stage with nothing trained yet is left out,
    in one printed line."""
    from .train import snapshots

    folders = adapter_folders(preset)
    stages = {"SFT": (None, adapter_dir(preset, "sft")), "GRPO": (folders["SFT"], folders["SFT+GRPO"])}
    trained = {}
    for label, (start, output_dir) in stages.items():
        if snapshots(output_dir) or (output_dir / "adapter_config.json").is_file():
            trained[label] = (start, output_dir)
        else:
            print(f"{label}: nothing trained in {output_dir} yet (notebook 02 trains SFT, 03 GRPO): not on the curve")
    return trained


def _same_as_last_snapshot(output_dir: Path, points) -> bool:
    """Whether a stage's final adapter is its last snapshot (train snapshots the last step), so a
    later stage that starts from it, or a table that scored it, shares that point's scores."""
    from .train import final_step

    try:
        return final_step(output_dir) == points[-1][0]
    except FileNotFoundError:  # an unfinished run: its folder holds no final adapter to reuse
        return False


def _point_key(adapter) -> str:
    """Names a curve point's model: its adapter folder, resolved so two spellings of one folder match."""
    return "base model" if adapter is None else str(Path(adapter).resolve())


def _share(scored: dict, *keys: str) -> None:
    """Several names of one model (a final adapter and its last snapshot): if one is scored, all are."""
    found = next((scored[k] for k in keys if k in scored), None)
    if found is not None:
        scored.update(dict.fromkeys(keys, found))


def scored_points(preset, reranked: dict[str, RerankedRun], first_stage: Run, collection, qids) -> dict:
    """The learning-curve points a `rerank_systems` result has already scored by token probabilities,
    as `learning_curve(known=...)` takes them: {adapter folder (None: the base model): own-judgement
    per-query nDCG@10}. Retriever weight 0 is post-processing of the scores they kept (`reweighted`),
    so these points cost no new model call. `first_stage`: the run they reranked, for `qids`."""
    folders = {"zero-shot": None, **adapter_folders(preset)}
    known = {}
    for name, result in reranked.items():
        model = name.removesuffix(" (logprob)")
        if model == name or model not in folders:
            continue
        missing = set(qids) - set(result.results)
        if missing:
            raise ValueError(f"{name} scored no result for queries {sorted(missing)[:3]}: rerank the same queries")
        known[folders[model]] = per_query_ndcg(result.reweighted(first_stage, 0.0), collection, qids)
    return known


def learning_curve(preset, stages: dict, collection, run: Run, qids, known: dict | None = None) -> pd.DataFrame:
    """The model's own judgement (`own_judgement`) at every point of every training stage.

    `stages`: {label: (start adapter or None for the base model, stage output dir)} in training
    order; each stage's points are its start (step 0) and its snapshots (`stage_points`). One row
    per point: stage, step, nDCG@10 (mean), queries, adapter, and the per-query scores, so that
    points can be compared with `paired_bootstrap` (`curve_summary`). `known`: points scored
    already ({adapter folder or None: per-query scores}, e.g. `scored_points`), not scored again.
    The base model is loaded once; each adapter is attached to it for its point and taken off
    again (`adapter_on`)."""
    if not stages:
        raise ValueError("no training stage to draw a curve of: train SFT first (notebook 02)")
    base, tokenizer = llm.load(preset)
    scored = {_point_key(adapter): scores for adapter, scores in (known or {}).items()}  # adapter key -> per query
    rows, computed = [], 0
    for stage, (start, output_dir) in stages.items():
        points = stage_points(start, output_dir)
        ends = (_point_key(points[-1][1]), _point_key(output_dir)) if _same_as_last_snapshot(Path(output_dir), points) else ()
        _share(scored, *ends)
        for step, adapter in points:
            key = _point_key(adapter)
            if key not in scored:
                with adapter_on(base, adapter) as model:
                    scored[key] = own_judgement(model, tokenizer, preset, collection, run, qids)
                computed += 1
            scores = scored[key]
            rows.append({"stage": stage, "step": step, "nDCG@10": sum(scores.values()) / max(len(scores), 1),
                         "queries": len(scores), "adapter": key, "per query": scores})
        _share(scored, *ends)
    print(f"{len(rows)} curve points: {computed} scored here, {len(rows) - computed} shared "
          "(a stage's start is the previous stage's snapshot, or scores computed before)")
    return pd.DataFrame(rows)


KEEP_CHOICES = ("best-dev", "last")


def keep_on_dev(preset, curve: pd.DataFrame, output_dir) -> tuple[int, Path]:
    """Choose the SFT model to keep from `curve` (`learning_curve` of that one stage on *dev*
    queries) and record it (`train.keep_snapshot`): with `preset.sft_keep` "best-dev" the snapshot
    with the highest own judgement (the later one on a tie), with "last" the end of training.
    Never choose on test queries: that would flatter every number measured on them afterwards."""
    from .train import keep_snapshot

    if preset.sft_keep not in KEEP_CHOICES:
        raise ValueError(f"Preset.sft_keep is {preset.sft_keep!r}; choose one of {KEEP_CHOICES}")
    trained = curve[curve["step"] > 0]
    if trained.empty:
        raise ValueError("the curve has no trained snapshot (only step 0) to keep")
    # idxmax takes the first of equal maxima, so searching the reversed column takes the later step
    best = trained.iloc[-1] if preset.sft_keep == "last" else trained.loc[trained["nDCG@10"][::-1].idxmax()]
    why = f"{preset.sft_keep}: own judgement {best['nDCG@10']:.4f} on {best['queries']} dev queries"
    return int(best["step"]), keep_snapshot(output_dir, int(best["step"]), why)


def curve_summary(curve: pd.DataFrame, samples: int = 10_000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Is each move of a learning curve more than noise? `paired_bootstrap` of each stage's end
    against its step 0 and, with several stages, of the curve's last point against its first
    (e.g. SFT+GRPO against zero-shot). A stage's end is the snapshot the next stage started from
    (the one kept on dev), else its last point. One row per comparison, with the two points' names."""
    stages = [points for _, points in curve.groupby("stage", sort=False)]
    ends = {}
    for i, points in enumerate(stages):
        later = stages[i + 1]["adapter"].iloc[0] if i + 1 < len(stages) else None
        kept = points[points["adapter"] == later]
        ends[points["stage"].iloc[0]] = (points.iloc[0], kept.iloc[-1] if len(kept) else points.iloc[-1])
    if len(ends) > 1:
        ends["all stages"] = (curve.iloc[0], curve.iloc[-1])
    rows = {}
    for name, (start, end) in ends.items():
        result = paired_bootstrap(end["per query"], start["per query"], samples, seed, level)
        rows[name] = {"from": f"{start['stage']} step {start['step']}", "to": f"{end['stage']} step {end['step']}",
                      **result, "verdict": bootstrap_verdict(result)}
    return pd.DataFrame(rows).T.rename_axis("comparison")


# --- one query before and after training ------------------------------------------------------------

def first_line(text: str, width: int = 70) -> str:
    """The first non-empty line of a document, cut to `width` characters (an ellipsis marks a cut)."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= width else line[:width - 1].rstrip() + "…"


def candidates(collection, first_stage: Run, qid: str, depth: int) -> list[str]:
    """The ids a reranker sees for `qid`: the first stage's top `depth`, excluded ids dropped first."""
    return ranked_ids(top_k(remove_excluded({qid: first_stage[qid]}, collection), depth)[qid])


def relevant_candidates(collection, first_stage: Run, qid: str, depth: int) -> int:
    """How many of `qid`'s `depth` candidates a person judged relevant (gain > 0)."""
    gains = collection.qrels.get(qid, {})
    return sum(gains.get(d, 0) > 0 for d in candidates(collection, first_stage, qid, depth))


def teaching_queries(collection, first_stage: Run, qids: list[str], depth: int, n: int) -> list[str]:
    """Queries a reranker can visibly help or hurt. Rule: the first `n` of `qids`, in their order,
    with at least one relevant and at least one non-relevant document among their `depth`
    candidates -- with none relevant every order scores 0, with all relevant every order is perfect."""
    chosen = [q for q in qids if 0 < relevant_candidates(collection, first_stage, q, depth)
              < len(candidates(collection, first_stage, q, depth))][:n]
    if len(chosen) < n:
        raise ValueError(f"only {len(chosen)} of {len(qids)} queries have both relevant and non-relevant "
                         f"documents among their top {depth} candidates; {n} were asked for")
    return chosen


def example_query(after: dict[str, float], before: dict[str, float], collection, first_stage: Run, depth: int) -> str:
    """The query to show before and after training. Rule: among the queries of `before` (per-query
    nDCG@10) with at least one relevant document among their `depth` candidates, the one whose
    nDCG@10 changed most (largest |after − before|, a loss as much as a gain); ties go to the query
    that comes first."""
    eligible = [q for q in before if relevant_candidates(collection, first_stage, q, depth)]
    if not eligible:
        raise ValueError(f"no query has a relevant document among its top {depth} candidates")
    return max(eligible, key=lambda q: abs(after.get(q, 0.0) - before[q]))  # max keeps the first of equals


def own_rankings(models: dict, tokenizer, preset, collection, run: Run, qid: str,
                 depth: int | None = None) -> dict[str, RankResult]:
    """`own_reranker`'s result for one query with each model of {name: model}."""
    return {name: own_reranker(model, tokenizer, preset).rerank_run(collection, run, depth, [qid]).results[qid]
            for name, model in models.items()}


def ranking_table(systems: dict[str, RankResult], collection, qid: str, first_stage: Run, depth: int) -> pd.DataFrame:
    """One query's candidates, one row per document in first-stage order: its first line, its human
    gain, its first-stage rank, each system's 0-10 score (`RankResult.model_scores`; `systems` in
    training order) and its new rank under the last, most trained, system."""
    ids = candidates(collection, first_stage, qid, depth)
    for name, result in systems.items():
        missing = [d for d in ids if d not in result.model_scores]
        if missing:
            raise ValueError(f"{name} gave no score to document {missing[0]} of query {qid}: "
                             f"rerank the same top {depth} of the same first stage")
    last, result = list(systems.items())[-1]
    new_rank = {d: rank for rank, d in enumerate(ranked_ids(result.scores), 1)}
    gains = collection.qrels.get(qid, {})
    rows = [{"document": first_line(collection.docs[d]), "gain": gains.get(d, 0), "first-stage rank": rank,
             **{f"{name} score": round(r.model_scores[d], 2) for name, r in systems.items()},
             f"{last} rank": new_rank[d]} for rank, d in enumerate(ids, 1)]
    return pd.DataFrame(rows, index=pd.Index(ids, name="doc"))
