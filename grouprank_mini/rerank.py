"""LLM rerankers: groupwise (GroupRank) and the pointwise and listwise baselines, on one engine.

All three share `LLM`, which turns chat prompts into batched, left-padded generation and
counts what it spent (calls, tokens, seconds). A reranker only decides *which prompts* to
send and how to turn the answers into scores:

- `GroupwiseReranker`: shuffled disjoint groups of c documents, an integer 0-10 per document,
  scores averaged over test-time-scaling passes, optionally interpolated with the retriever.
- `PointwiseReranker`: the same prompt with c = 1 (one document per call).
- `ListwiseReranker`: a RankGPT-style sliding window (20, step 10, back to front).

``scoring="logprob"`` (groupwise and pointwise) replaces free generation by one forward pass
over the answer skeleton and reads each score as an expected value (see `LLM.slot_scores`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch
from tqdm import tqdm

from . import groups, prompts
from .parsing import ParsedGroup, parse_group_scores, parse_permutation
from .retrieval import Run, ranked_ids

DIGITS = [str(d) for d in range(10)]
SLOT_PLACEHOLDER = "5"  # the digit teacher-forced into each slot of the skeleton (logprob scoring)


@dataclass
class GenerationStats:
    """What a reranker spent; `prefill_seconds` is the time to the first new token of each batch."""

    calls: int = 0
    batches: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    prefill_seconds: float = 0.0

    def reset(self) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, type(getattr(self, name))())


class _FirstStepClock:
    """A logits processor that only notes when the first decoding step begins (= prefill done)."""

    def __init__(self):
        self.first = None

    def __call__(self, input_ids, scores):
        if self.first is None:
            self.first = time.perf_counter()
        return scores


@dataclass
class LLM:
    """A chat model that generates for many prompts at once."""

    model: object
    tokenizer: object
    preset: object
    stats: GenerationStats = field(default_factory=GenerationStats)
    progress: bool = True

    def chat_text(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    @cached_property
    def _stop_after_answer(self):
        """Ends a sequence at </answer>. Built once per LLM: its vocabulary table takes ~0.3 s,
        which `generate(stop_strings=...)` would spend again on every batch (and count as prefill)."""
        from transformers import StopStringCriteria, StoppingCriteriaList

        return StoppingCriteriaList([StopStringCriteria(self.tokenizer, ["</answer>"])])

    def _batches(self, texts: list[str], desc: str):
        """Index batches, longest prompts first: similar lengths waste less padding."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        size = self.preset.batch_size
        chunks = [order[i:i + size] for i in range(0, len(order), size)]
        return tqdm(chunks, desc=desc, disable=not self.progress or len(chunks) < 2, leave=False)

    def _encode(self, texts: list[str]):
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return batch.to(self.model.device)

    @torch.inference_mode()
    def generate(self, prompts_: list[list[dict]], max_new_tokens: int | None = None, desc: str = "generate") -> list[str]:
        """Greedy completions for chat prompts, in the order given."""
        texts = [self.chat_text(p) for p in prompts_]
        outputs: list[str] = [""] * len(texts)
        for chunk in self._batches(texts, desc):
            outputs_chunk = self._generate_batch([texts[i] for i in chunk], max_new_tokens or self.preset.max_new_tokens)
            for i, out in zip(chunk, outputs_chunk):
                outputs[i] = out
        return outputs

    def _generate_batch(self, texts: list[str], max_new_tokens: int) -> list[str]:
        batch = self._encode(texts)
        clock, start = _FirstStepClock(), time.perf_counter()
        out = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id, logits_processor=[clock],
                                  stopping_criteria=self._stop_after_answer)
        new = out[:, batch["input_ids"].shape[1]:]
        self._count(batch, start, clock.first, generated=int((new != self.tokenizer.pad_token_id).sum()))
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def _count(self, batch, start: float, first_step: float | None, generated: int) -> None:
        end = time.perf_counter()
        self.stats.calls += batch["input_ids"].shape[0]
        self.stats.batches += 1
        self.stats.prompt_tokens += int(batch["attention_mask"].sum())
        self.stats.generated_tokens += generated
        self.stats.seconds += end - start
        self.stats.prefill_seconds += (first_step or end) - start

    @torch.inference_mode()
    def slot_scores(self, prompts_: list[list[dict]], n_slots: list[int], desc: str = "score") -> list[list[float]]:
        """Expected 0-10 scores read from token probabilities, one forward pass per batch.

        Each prompt is followed by the answer skeleton ``<answer>{"[1]": 5, "[2]": 5, ...}</answer>``
        (teacher forcing). At the token before each slot, the probabilities of the digit tokens
        0-9 give an expected digit, rescaled to 0-10. Numbers are tokenized digit by digit, so
        "10" would need a second step: the 0-9 scale is the price of a single pass. Every slot
        sees the same placeholder before it, so earlier slots cannot anchor later ones unequally.
        """
        digit_ids = torch.tensor([self.tokenizer.convert_tokens_to_ids(d) for d in DIGITS])
        texts = [self.chat_text(p) for p in prompts_]
        results: list[list[float]] = [[] for _ in texts]
        for chunk in self._batches(texts, desc):
            ids, positions = zip(*(self._skeleton(texts[i], n_slots[i]) for i in chunk))
            batch = self.tokenizer.pad({"input_ids": list(ids)}, return_tensors="pt").to(self.model.device)
            pad = [batch["input_ids"].shape[1] - len(x) for x in ids]  # left padding shifts positions
            shifted = [[p + pad[row] for p in pos] for row, pos in enumerate(positions)]
            keep = sorted({p for pos in shifted for p in pos})
            column = {p: k for k, p in enumerate(keep)}
            start = time.perf_counter()
            # Only the slot positions go through the LM head: on a 49k vocabulary that head
            # would otherwise cost more than the whole transformer.
            logits = self.model(**batch, logits_to_keep=torch.tensor(keep, device=self.model.device)).logits
            self._count(batch, start, None, generated=0)
            for row, i in enumerate(chunk):
                at = torch.tensor([column[p] for p in shifted[row]])
                probs = logits[row, at][:, digit_ids.to(logits.device)].float().softmax(-1).cpu()
                results[i] = ((probs * torch.arange(10)).sum(-1) * 10 / 9).tolist()
        return results

    def _skeleton(self, prompt_text: str, n_slots: int) -> tuple[list[int], list[int]]:
        """Token ids of prompt + answer skeleton, and the positions whose next token is a score."""
        encode = lambda s: self.tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        ids, positions = encode(prompt_text), []
        digit = encode(SLOT_PLACEHOLDER)
        for k in range(1, n_slots + 1):
            ids += encode(('<answer>{"' if k == 1 else ', "') + f'[{k}]": ')
            positions.append(len(ids) - 1)
            ids += digit
        ids += encode("}</answer>")
        return ids, positions


Candidates = dict[str, str]  # doc id -> text, in first-stage order
Request = tuple[str, Candidates, dict[str, float]]  # (query, candidates, first-stage scores)


class Reranker:
    """Shared API: `rerank(query, docs)` for one query, `rerank_run(collection, run, depth)` for a run."""

    name = "reranker"

    def __init__(self, model, tokenizer, preset, scoring: str = "generate", progress: bool = True):
        if scoring not in ("generate", "logprob"):
            raise ValueError("scoring must be 'generate' or 'logprob'")
        self.llm = LLM(model, tokenizer, preset, progress=progress)
        self.preset, self.scoring = preset, scoring
        self.last_outputs: list[tuple[str, ParsedGroup | list[int]]] = []  # raw text and what was read from it

    @property
    def stats(self) -> GenerationStats:
        return self.llm.stats

    def rerank(self, query: str, docs: Candidates | list[str], retriever_scores: dict[str, float] | None = None) -> list[tuple[str, float]]:
        """Rank `docs` for `query`, best first, as (doc id, score) pairs.

        A plain list of texts gets ids "0", "1", ...; without retriever scores the given
        order counts as the first-stage ranking.
        """
        docs = docs if isinstance(docs, dict) else {str(i): text for i, text in enumerate(docs)}
        retriever_scores = retriever_scores or {d: -float(i) for i, d in enumerate(docs)}
        scores = self.rerank_many([(query, docs, retriever_scores)])[0]
        return [(d, scores[d]) for d in ranked_ids(scores)]

    def rerank_run(self, collection, run: Run, depth: int | None = None, qids=None) -> Run:
        """Rerank the top `depth` of each query of a first-stage run (all run queries by default)."""
        depth = depth or self.preset.rerank_depth
        qids = list(run) if qids is None else list(qids)
        requests = []
        for qid in qids:
            top = ranked_ids(run[qid])[:depth]
            requests.append((collection.queries[qid], {d: collection.docs[d] for d in top}, {d: run[qid][d] for d in top}))
        reranked = self.rerank_many(requests)
        return {qid: _with_tail(scores, run[qid]) for qid, scores in zip(qids, reranked)}

    def rerank_many(self, requests: list[Request]) -> list[dict[str, float]]:
        raise NotImplementedError


def _with_tail(reranked: dict[str, float], first_stage: dict[str, float]) -> dict[str, float]:
    """The reranked head, then the rest of the first-stage ranking below it (as rerankers are
    evaluated: recall past the reranking depth stays the first stage's)."""
    floor = min(reranked.values(), default=0.0)
    tail = [d for d in ranked_ids(first_stage) if d not in reranked]
    return {**reranked, **{d: floor - 1.0 - i for i, d in enumerate(tail)}}


class GroupwiseReranker(Reranker):
    """GroupRank inference: every group of every query goes to the model in one batched pass."""

    name = "groupwise"

    def rerank_many(self, requests: list[Request]) -> list[dict[str, float]]:
        p = self.preset
        self.pass_scores: list[dict[str, list[float]]] = []  # per request: doc id -> its score in each pass
        plans = [groups.multi_pass_groups(len(docs), p.group_size, p.passes, p.seed) for _, docs, _ in requests]
        messages, sizes = [], []
        for (query, docs, _), plan in zip(requests, plans):
            texts = list(docs.values())
            for group in plan:
                messages.append(prompts.groupwise_messages(query, [texts[i] for i in group], p.doc_max_chars, p.reasoning))
                sizes.append(len(group))
        flat = iter(self._score_prompts(messages, sizes))
        return [self._merge(docs, first_stage, plan, [next(flat) for _ in plan])
                for (_, docs, first_stage), plan in zip(requests, plans)]

    def _score_prompts(self, messages: list[list[dict]], sizes: list[int]) -> list[list[float]]:
        if self.scoring == "logprob":
            return self.llm.slot_scores(messages, sizes, desc=self.name)
        texts = self.llm.generate(messages, max_new_tokens=self._budget(max(sizes, default=1)), desc=self.name)
        parsed = [parse_group_scores(t, n, require_reason=self.preset.reasoning) for t, n in zip(texts, sizes)]
        self.last_outputs = list(zip(texts, parsed))
        return [x.scores for x in parsed]

    def _budget(self, n_docs: int) -> int:
        """New-token cap: an answer-only reply needs ~8 tokens per document ('"[12]": 7, ')."""
        if self.preset.reasoning:
            return self.preset.max_new_tokens
        return min(self.preset.max_new_tokens, 8 * n_docs + 12)

    def _merge(self, docs: Candidates, first_stage: dict[str, float], plan, group_scores) -> dict[str, float]:
        ids = list(docs)
        self.pass_scores.append({ids[i]: [] for i in range(len(ids))})
        for group, scores in zip(plan, group_scores):
            for i, score in zip(group, scores):
                self.pass_scores[-1][ids[i]].append(score)
        mean = groups.mean_over_passes(plan, group_scores, len(ids))
        final = groups.interpolate(dict(zip(ids, mean)), first_stage, self.preset.retriever_weight)
        return groups.tie_break(final, first_stage)


class PointwiseReranker(GroupwiseReranker):
    """One document per call: the groupwise prompt with c = 1, so both share every line of code.

    One pass only: with c = 1 every shuffle gives the same prompts, so more passes would
    repeat identical calls."""

    name = "pointwise"

    def __init__(self, model, tokenizer, preset, scoring: str = "generate", progress: bool = True):
        super().__init__(model, tokenizer, replace(preset, group_size=1, passes=1), scoring, progress)


class ListwiseReranker(Reranker):
    """Sliding-window listwise reranking, back to front (window 20, step 10 by default).

    Windows of one query depend on each other, so they run one after another; windows of
    *different* queries at the same stage are batched together, as groups are.
    """

    name = "listwise"

    def __init__(self, model, tokenizer, preset, window: int = 20, step: int = 10, progress: bool = True):
        super().__init__(model, tokenizer, preset, "generate", progress)
        self.window, self.step = window, step

    def window_starts(self, n: int) -> list[int]:
        return groups.window_starts(n, self.window, self.step)

    def rerank_many(self, requests: list[Request]) -> list[dict[str, float]]:
        self.last_outputs = []
        orders = [ranked_ids(first_stage) for _, _, first_stage in requests]
        schedules = [self.window_starts(len(o)) for o in orders]
        for stage in range(max(map(len, schedules), default=0)):
            active = [i for i, s in enumerate(schedules) if stage < len(s)]
            self._rerank_windows(requests, orders, [(i, schedules[i][stage]) for i in active])
        return [{d: float(len(o) - r) for r, d in enumerate(o)} for o in orders]

    def _rerank_windows(self, requests, orders, windows: list[tuple[int, int]]) -> None:
        p = self.preset
        messages = []
        for i, start in windows:
            query, docs, _ = requests[i]
            messages.append(prompts.listwise_messages(query, [docs[d] for d in orders[i][start:start + self.window]], p.doc_max_chars))
        budget = 6 * self.window + 16  # "[12] > " is about 6 tokens
        texts = self.llm.generate(messages, max_new_tokens=budget, desc=self.name)
        for (i, start), text in zip(windows, texts):
            window = orders[i][start:start + self.window]
            permutation = parse_permutation(text, len(window))
            orders[i][start:start + self.window] = [window[k] for k in permutation]
            self.last_outputs.append((text, permutation))


def paradigm_rerankers(model, tokenizer, preset, progress: bool = False) -> dict[str, Reranker]:
    """The paradigms compared in the paper, on one model and one preset."""
    return {
        "pointwise": PointwiseReranker(model, tokenizer, preset, progress=progress),
        "listwise": ListwiseReranker(model, tokenizer, preset, progress=progress),
        "groupwise": GroupwiseReranker(model, tokenizer, preset, progress=progress),
        "groupwise-logprob": GroupwiseReranker(model, tokenizer, preset, scoring="logprob", progress=progress),
    }


def measure(reranker: Reranker, collection, run: Run, qids: list[str], depth: int) -> dict[str, float]:
    """Rerank the top `depth` of `run` for `qids` and report quality, time and tokens per query."""
    from .evaluate import evaluate

    reranker.stats.reset()
    start = time.perf_counter()
    reranked = reranker.rerank_run(collection, run, depth, qids)
    seconds = time.perf_counter() - start
    parsed = [p for _, p in reranker.last_outputs if isinstance(p, ParsedGroup)]
    return {
        "nDCG@10": evaluate(reranked, collection, qids)["nDCG@10"],
        **per_query_costs(reranker.stats, seconds, len(qids)),
        "answers ok": sum(p.ok for p in parsed) / len(parsed) if parsed else float("nan"),
    }


def per_query_costs(stats: GenerationStats, seconds: float, queries: int) -> dict[str, float]:
    """Wall-clock seconds and the reranker's calls and tokens, per query; prefill throughput."""
    n = max(queries, 1)
    return {
        "seconds/query": seconds / n,
        "calls/query": stats.calls / n,
        "prompt tokens/query": stats.prompt_tokens / n,
        "generated tokens/query": stats.generated_tokens / n,
        "prefill tokens/s": stats.prompt_tokens / stats.prefill_seconds if stats.prefill_seconds else float("nan"),
    }


def compare_paradigms(model, tokenizer, preset, collection, run: Run, qids: list[str], depth: int | None = None):
    """One table: BM25 and each paradigm on the same queries and the same top-`depth` candidates."""
    import pandas as pd

    from .evaluate import evaluate

    depth = depth or preset.rerank_depth
    rows = {"BM25": {"nDCG@10": evaluate(run, collection, qids)["nDCG@10"]}}
    for name, reranker in paradigm_rerankers(model, tokenizer, preset).items():
        rows[name] = measure(reranker, collection, run, qids, depth)
    return pd.DataFrame(rows).T


def rerank_systems(systems: dict, tokenizer, preset, collection, run: Run, qids: list[str],
                   scorings=("generate", "logprob")) -> dict[str, Run]:
    """The groupwise reranker with each model of `systems` ({name: model}) and each scoring, on
    the same candidates; runs named "<model name> (<scoring>)"."""
    return {f"{name} ({scoring})": GroupwiseReranker(model, tokenizer, preset, scoring=scoring, progress=False)
            .rerank_run(collection, run, qids=qids)
            for scoring in scorings for name, model in systems.items()}


def sweep(model, tokenizer, preset, collection, run: Run, qids: list[str], field: str, values, scoring: str = "logprob"):
    """Groupwise nDCG@10 and cost as one preset field varies (the paper's Fig. 3 and Fig. 5)."""
    import pandas as pd

    rows = {}
    for value in values:
        reranker = GroupwiseReranker(model, tokenizer, replace(preset, **{field: value}), scoring=scoring, progress=False)
        rows[value] = measure(reranker, collection, run, qids, preset.rerank_depth)
    return pd.DataFrame(rows).T.rename_axis(field)


def score_calibration(reranker: GroupwiseReranker, collection, qids: list[str]):
    """Each (query, document) the reranker last scored: its mean 0-10 score, the spread of that
    score across passes, and the human gain. Comparable groups give one score scale per gain."""
    import pandas as pd

    rows = []
    for qid, per_doc in zip(qids, reranker.pass_scores):
        for doc_id, scores in per_doc.items():
            rows.append({"qid": qid, "doc": doc_id, "gain": collection.qrels.get(qid, {}).get(doc_id, 0),
                         "score": sum(scores) / len(scores), "spread": max(scores) - min(scores)})
    return pd.DataFrame(rows)


def predicted_scores(model, tokenizer, preset, records) -> list[float]:
    """Every score the model gives the groups of dataset `records` (rows with prompt and doc_ids)."""
    llm = LLM(model, tokenizer, preset, progress=False)
    texts = llm.generate(list(records["prompt"]), max_new_tokens=preset.max_new_tokens)
    return [s for text, ids in zip(texts, records["doc_ids"])
            for s in parse_group_scores(text, len(ids), require_reason=preset.reasoning).scores]
