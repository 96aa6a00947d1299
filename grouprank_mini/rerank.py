"""LLM rerankers: groupwise (GroupRank) and the pointwise and listwise baselines, on one backend.

A reranker decides *which prompts* to send and how to turn the answers into scores; the
backend (`llm.LLM` for a local model, `endpoint.EndpointBackend` for a server) sends them
in batches and counts what it spent (`reranker.stats`).

- `GroupwiseReranker`: shuffled disjoint groups of c documents, an integer 0-10 per document,
  scores averaged over test-time-scaling passes, optionally interpolated with the retriever.
- `PointwiseReranker`: the same prompt with c = 1 (one document per call).
- `ListwiseReranker`: a RankGPT-style sliding window (20, step 10, back to front).

One obvious call: ``reranker.rank(query, docs)`` returns a `RankResult` (ranking, final and
model scores, per-pass scores, raw answers); ``reranker.rerank_run(collection, run)`` does
every query of a first-stage run and returns a `RerankedRun`.

``scoring="logprob"`` (groupwise and pointwise, local models only) replaces free generation
by one forward pass over the answer skeleton and reads each score as an expected value
(see `llm.LLM.slot_scores`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from . import groups, prompts
from .evaluate import remove_excluded
from .parsing import ParsedGroup, parse_group_scores, parse_permutation
from .runs import Run, order_scores, ranked_ids

Candidates = dict[str, str]  # doc id -> text, in first-stage order
Request = tuple[str, Candidates, dict[str, float]]  # (query, candidates, first-stage scores)


@dataclass
class RankResult:
    """What a reranker made of one query's candidates."""

    scores: dict[str, float]  # final scores, higher is better, never tied
    model_scores: dict[str, float] = field(default_factory=dict)  # the model's 0-10, mean over passes (not listwise)
    pass_scores: dict[str, list[float]] = field(default_factory=dict)  # each document's score in every pass
    outputs: list[tuple[str, ParsedGroup | list[int]]] = field(default_factory=list)  # raw answers, and what was read

    @property
    def ranking(self) -> list[tuple[str, float]]:
        """(doc id, final score) pairs, best first."""
        return [(d, self.scores[d]) for d in ranked_ids(self.scores)]


@dataclass
class RerankedRun:
    """A reranked first-stage run: `run` to evaluate, and each query's `RankResult`."""

    run: Run
    results: dict[str, RankResult]

    @property
    def outputs(self) -> list[tuple[str, ParsedGroup | list[int]]]:
        return [output for result in self.results.values() for output in result.outputs]

    def reweighted(self, first_stage: Run, retriever_weight: float) -> Run:
        """This run with another retriever weight w (groupwise and pointwise results), with no new
        model call: `reweighted_run` of the model scores it kept. `first_stage`: the run reranked."""
        return reweighted_run({q: r.model_scores for q, r in self.results.items()}, first_stage, retriever_weight)


def reweighted_run(model_scores: dict[str, dict[str, float]], first_stage: Run, retriever_weight: float) -> Run:
    """The reranked run that a weight w gives from the model's scores ({qid: {doc id: 0-10}}):
    `combine_scores` over exactly the reranked documents (the retriever normalised over them, as
    `rank` does), the first-stage tail below. Post-processing only: one model run serves every w."""
    return {q: _with_tail(combine_scores(scores, {d: first_stage[q][d] for d in scores}, retriever_weight),
                          first_stage[q])
            for q, scores in model_scores.items()}


def combine_scores(model_scores: dict[str, float], retriever_scores: dict[str, float],
                   retriever_weight: float) -> dict[str, float]:
    """final = (1-w)·score/10 + w·norm(retriever) over the reranked documents, ties broken by
    the first stage: never two equal scores, so a ranking never depends on dict order."""
    return groups.tie_break(groups.interpolate(model_scores, retriever_scores, retriever_weight), retriever_scores)


class Reranker:
    """Shared API: `rank(query, docs)` for one query, `rerank_run(collection, run, depth)` for a run."""

    name = "reranker"

    def __init__(self, backend, preset, scoring: str = "generate"):
        if scoring not in ("generate", "logprob"):
            raise ValueError("scoring must be 'generate' or 'logprob'")
        if scoring == "logprob" and not hasattr(backend, "slot_scores"):
            raise ValueError("token-probability scoring needs a local model (llm.LLM); a server only returns text")
        self.backend, self.preset, self.scoring = backend, preset, scoring

    @property
    def stats(self):
        return self.backend.stats

    def rank(self, query: str, docs: Candidates | list[str], retriever_scores: dict[str, float] | None = None) -> RankResult:
        """Rank `docs` for `query`. A plain list of texts gets ids "0", "1", ...; without
        retriever scores the given order counts as the first-stage ranking."""
        docs = docs if isinstance(docs, dict) else {str(i): text for i, text in enumerate(docs)}
        retriever_scores = retriever_scores or {d: -float(i) for i, d in enumerate(docs)}
        return self.rank_many([(query, docs, retriever_scores)])[0]

    def rerank_run(self, collection, run: Run, depth: int | None = None, qids=None) -> RerankedRun:
        """Rerank the top `depth` of each query of a first-stage run (all run queries by default).
        The collection's excluded ids (BRIGHT) are dropped first, so none of them takes a slot."""
        depth = depth or self.preset.rerank_depth
        qids = list(run) if qids is None else list(qids)
        run = remove_excluded(run, collection)
        requests = []
        for qid in qids:
            top = ranked_ids(run[qid])[:depth]
            requests.append((collection.queries[qid], {d: collection.docs[d] for d in top}, {d: run[qid][d] for d in top}))
        results = dict(zip(qids, self.rank_many(requests)))
        return RerankedRun({qid: _with_tail(results[qid].scores, run[qid]) for qid in qids}, results)

    def rank_many(self, requests: list[Request]) -> list[RankResult]:
        raise NotImplementedError


def _with_tail(reranked: dict[str, float], first_stage: dict[str, float]) -> dict[str, float]:
    """The reranked head, then the rest of the first-stage ranking below it (as rerankers are
    evaluated: recall past the reranking depth stays the first stage's)."""
    tail = [d for d in ranked_ids(first_stage) if d not in reranked]
    return {**reranked, **order_scores(tail, start=min(reranked.values(), default=0.0) - 1.0)}


class GroupwiseReranker(Reranker):
    """GroupRank inference: every group of every query goes to the backend in one batched pass."""

    name = "groupwise"

    def group_prompts(self, query: str, docs: Candidates) -> tuple[list[list[int]], list[list[dict]]]:
        """The groups of one query (indices into `docs`, shuffled with the preset's seed, every
        pass) and the prompt sent for each: exactly what `rank` sends the model."""
        p = self.preset
        plan = groups.multi_pass_groups(len(docs), p.group_size, p.passes, p.seed)
        texts = list(docs.values())
        return plan, [prompts.groupwise_messages(query, [texts[i] for i in group], p.doc_max_chars, p.reasoning)
                      for group in plan]

    def rank_many(self, requests: list[Request]) -> list[RankResult]:
        plans, messages = [], []
        for query, docs, _ in requests:
            plan, group_messages = self.group_prompts(query, docs)
            plans.append(plan)
            messages += group_messages
        sizes = [len(group) for plan in plans for group in plan]
        flat = iter(self._score_prompts(messages, sizes))
        return [self._merge(docs, first_stage, plan, [next(flat) for _ in plan])
                for (_, docs, first_stage), plan in zip(requests, plans)]

    def _score_prompts(self, messages: list[list[dict]], sizes: list[int]) -> list[tuple[list[float], tuple]]:
        """Per prompt: its scores, and (raw text, parsed answer) when it was generated."""
        if self.scoring == "logprob":
            return [(scores, ()) for scores in self.backend.slot_scores(messages, sizes)]
        texts = self.backend.generate(messages, max_new_tokens=self._budget(max(sizes, default=1)))
        parsed = [parse_group_scores(t, n, require_reason=self.preset.reasoning) for t, n in zip(texts, sizes)]
        return [(read.scores, ((text, read),)) for text, read in zip(texts, parsed)]

    def _budget(self, n_docs: int) -> int:
        """New-token cap: an answer-only reply needs ~8 tokens per document ('"[12]": 7, ')."""
        if self.preset.reasoning:
            return self.preset.max_new_tokens
        return min(self.preset.max_new_tokens, 8 * n_docs + 12)

    def _merge(self, docs: Candidates, first_stage: dict[str, float], plan, answers) -> RankResult:
        ids = list(docs)
        group_scores = [scores for scores, _ in answers]
        per_pass: dict[str, list[float]] = {d: [] for d in ids}
        for group, scores in zip(plan, group_scores):
            for i, score in zip(group, scores):
                per_pass[ids[i]].append(score)
        mean = dict(zip(ids, groups.mean_over_passes(plan, group_scores, len(ids))))
        return RankResult(self.final_scores(mean, first_stage), mean, per_pass,
                          [output for _, outputs in answers for output in outputs])

    def final_scores(self, model_scores: dict[str, float], retriever_scores: dict[str, float],
                     retriever_weight: float | None = None) -> dict[str, float]:
        """`combine_scores` with the preset's retriever weight unless another is given."""
        weight = self.preset.retriever_weight if retriever_weight is None else retriever_weight
        return combine_scores(model_scores, retriever_scores, weight)


class PointwiseReranker(GroupwiseReranker):
    """One document per call: the groupwise prompt with c = 1, so both share every line of code.

    One pass only: with c = 1 every shuffle gives the same prompts, so more passes would
    repeat identical calls."""

    name = "pointwise"

    def __init__(self, backend, preset, scoring: str = "generate"):
        super().__init__(backend, replace(preset, group_size=1, passes=1), scoring)


class ListwiseReranker(Reranker):
    """Sliding-window listwise reranking, back to front (window 20, step 10 by default).

    Start from the first-stage order and rerank windows from the bottom up; each window's best
    `window - step` documents move on into the next, overlapping window, so strong documents
    bubble to the top in one sweep (RankGPT). Ids the model drops keep their relative order at
    the end of their window. Windows of one query depend on each other, so they run one after
    another; windows of *different* queries at the same stage are batched together.
    """

    name = "listwise"

    def __init__(self, backend, preset, window: int = 20, step: int = 10):
        if not 0 < step <= window:
            raise ValueError("need 0 < step <= window")
        super().__init__(backend, preset, "generate")
        self.window, self.step = window, step

    def window_starts(self, n: int) -> list[int]:
        return groups.window_starts(n, self.window, self.step)

    def rank_many(self, requests: list[Request]) -> list[RankResult]:
        orders = [ranked_ids(first_stage) for _, _, first_stage in requests]
        outputs: list[list] = [[] for _ in requests]
        schedules = [self.window_starts(len(o)) for o in orders]
        for stage in range(max(map(len, schedules), default=0)):
            active = [i for i, s in enumerate(schedules) if stage < len(s)]
            self._rerank_windows(requests, orders, outputs, [(i, schedules[i][stage]) for i in active])
        return [RankResult(order_scores(o), outputs=out) for o, out in zip(orders, outputs)]

    def _rerank_windows(self, requests, orders, outputs, windows: list[tuple[int, int]]) -> None:
        messages = []
        for i, start in windows:
            query, docs, _ = requests[i]
            texts = [docs[d] for d in orders[i][start:start + self.window]]
            messages.append(prompts.listwise_messages(query, texts, self.preset.doc_max_chars, self.preset.reasoning))
        # Answer only: "[12] > " is about 6 tokens. Reasoning: the preset's cap, as every paradigm gets.
        budget = self.preset.max_new_tokens if self.preset.reasoning else 6 * self.window + 16
        for (i, start), text in zip(windows, self.backend.generate(messages, max_new_tokens=budget)):
            window = orders[i][start:start + self.window]
            permutation = parse_permutation(text, len(window))
            orders[i][start:start + self.window] = [window[k] for k in permutation]
            outputs[i].append((text, permutation))
