"""GroupRank's GRPO reward (docs/paper.md §4) as plain functions with TRL's reward signature.

For one completion scoring a group of n documents:

    R = R_G                     if tags and JSON are valid, with a score for every document
    R = -0.1                    if the tags are right but the JSON is not (unreadable or incomplete)
    R = -0.5                    otherwise (answer tags missing)
    R_G = NDCG@10 + γ·Recall@10 + ε·(1 - JS(P‖Q)),   γ = 0.2, ε = 0.1

so every reward lies in [-0.5, 1 + γ + ε] = [-0.5, 1.3]. The paper leaves several details
open; the kit decides them as follows (each one is tested in tests/test_rewards.py):

- **Format gate: every document needs a score.** The status comes from
  `parsing.parse_group_scores`. The paper's format (docs/paper.md §2) maps *every* id of the
  group to a score, so ``ids_missing`` fails the gate like unreadable JSON: -0.1 and nothing
  else. ``ids_extra`` passes (every id is there; the unknown ones are ignored). Earning R_G on
  the parser's scores instead, with the fallback 0 for a forgotten id, made leaving a document
  out score exactly like writing 0 for it, and made ``<answer>{}</answer>`` (or a lone "{") a
  complete tie worth 1.08 of 1.3 for targets 8,5,2,0: more than the complete reversed answer
  (0.85) and than 704 of the 1,296 complete answers in even scores 0-10, so a GRPO policy could
  collapse onto the empty answer. A milder penalty would have to invent scores for the
  documents left out, and an incomplete answer then earns at least what the complete answer
  writing those invented scores earns (even "left-out documents rank last, in the worst order"
  pays the empty answer the reward of the worst complete ranking, above 0, for writing
  nothing). The flat -0.1 puts every incomplete answer below every complete one, whose R_G is
  never negative, however good the scores it did give. What it gives up: GRPO cannot tell a
  nearly complete answer from an empty one. That matters only while a policy does not finish
  its answers, which SFT teaches first; rerankers (rerank.py) still use every score a partial
  answer gave. When the preset asks for reasoning, a missing ``<reason>`` block counts as
  missing tags.
- **Columns are checked, not trusted.** ``target_scores`` must be a non-empty list of finite
  numbers >= 0 (the 0-10 scale); ``gains`` and ``relevant``, when given, the same, one per
  document. Anything else raises a ValueError naming the column, the entry and, from
  `make_reward_func`, the row of the batch: a NaN target would otherwise make every readable
  answer "perfect" (NaN comparisons are all false, so NDCG clips to 1 and JS to 0), and a
  negative one makes P or Q no distribution.
- **Gains and relevance.** NDCG@10 is measured against the ``gains`` column: graded
  relevance per document, in prompt order, each >= 0; without that column the teacher's
  target scores themselves (0-10) are the gains (synthesis.py writes exactly that). Recall@10
  counts as relevant the documents marked in the ``relevant`` column (0/1; synthesis.py marks
  the pool's fused top `pool_top_k`), else those with a positive gain. Since targets are
  positive for all but a pool's worst document, "positive gain" alone would call nearly
  everything relevant. NDCG uses linear gains and the 1/log2(rank + 1) discount, Recall the
  share of relevant documents in the top 10: trec_eval's definitions, tested against
  ir-measures. A group without any relevant document has NDCG (or Recall) 0 for every
  answer; being constant, that cancels out of GRPO's group-relative advantage.
- **Groups of at most 10 documents** (the kit's presets) sit wholly inside the top 10, so
  Recall@10 is 1 for every answer passing the gate (given one relevant document): a constant
  bonus for a complete answer. It separates orderings only in groups of more than 10 documents (the
  paper's c = 20). The cutoff is kept at the paper's 10 all the same.
- **Ties** in the predicted scores (a model often gives several documents the same integer)
  are scored by the *expected* NDCG and Recall over all orders of the tied documents
  (McSherry & Najork, 2008): each document of a tie block gets the mean discount of the
  positions the block occupies. Breaking ties by prompt position would instead reward an
  answer for how the documents happened to be shuffled into the prompt.
- **Distributions.** P and Q are the predicted and target scores, each plus a smoothing of
  0.5 (half a score step), divided by their sum. Sum-normalisation keeps the proportions of
  the 0-10 scale (an 8 weighs twice a 4); a softmax over raw 0-10 scores would put almost all
  mass on the top document and reduce JS to "same top-1 or not". The smoothing makes an
  all-zero row uniform instead of undefined.
- **Log base 2**, so JS ∈ [0, 1] and the alignment term ε·(1 - JS) ∈ [0, ε].
- **Switches** (Preset, for the paper's ablation): ``reward_utility=False`` drops
  NDCG + γ·Recall, ``reward_alignment=False`` drops ε·(1 - JS); the format gate always stays.
  ``reward_normalized_gain=True`` replaces NDCG@10 by REARANK's normalised gain
  (NDCG - NDCG_initial) / (NDCG_best - NDCG_initial), NDCG_initial being the NDCG of the
  prompt order, clipped to [0, 1] (see `normalized_ndcg`).

`make_reward_func(preset)` returns the function GRPOTrainer calls. It logs, through TRL's
``log_metric``, the batch mean of each term's contribution (they add up to the mean reward)
and the share of answers failing the gate. `worked_example()` tabulates the terms for seven typical answers.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

from .parsing import parse_group_scores

GAMMA = 0.2  # weight of Recall@10 in the ranking utility
EPSILON = 0.1  # weight of the group alignment 1 - JS(P‖Q)
CUTOFF = 10  # the @10 of NDCG@10 and Recall@10
SMOOTHING = 0.5  # added to every score before normalising: all-zero rows become uniform
MIN_REWARD, MAX_REWARD = -0.5, 1.0 + GAMMA + EPSILON

# Gate value per parser status; the statuses that pass the gate earn R_G on top of their 0.
FORMAT_SCORES = {"ok": 0.0, "ids_extra": 0.0, "ids_missing": -0.1, "json_invalid": -0.1, "tags_missing": -0.5}
GATE_FAILURES = ("ids_missing", "json_invalid", "tags_missing")
FORMAT_FAILURE = "format_failure"  # the log_metric name plots.plot_format_failures reads


@dataclass(frozen=True)
class RewardBreakdown:
    """One completion's reward, term by term: format + ndcg + recall + alignment == total.

    Each field is that term's contribution to the total: ``recall`` is γ·Recall@10,
    ``alignment`` is ε·(1 - JS). Answers failing the gate have only the (negative) format term.
    """

    status: str
    format: float
    ndcg: float
    recall: float
    alignment: float
    total: float


# --- the format gate ----------------------------------------------------------------------------

def format_score(status: str) -> float:
    """0 for a complete readable answer, -0.1 for right tags around broken or incomplete JSON,
    -0.5 without tags."""
    return FORMAT_SCORES[status]


# --- ranking utility: NDCG@10 + γ·Recall@10 -----------------------------------------------------

def _tie_blocks(scores: list[float]) -> list[tuple[int, int]]:
    """For each document, the first 0-based rank its tie block takes and the block's size."""
    return [(sum(s > x for s in scores), sum(s == x for s in scores)) for x in scores]


def _discount(rank: int, k: int) -> float:
    """trec_eval's discount for a 0-based rank: 1/log2(rank + 2) inside the cutoff, 0 beyond."""
    return 1.0 / math.log2(rank + 2) if rank < k else 0.0


def ndcg_at_k(pred_scores: list[float], gains: list[float], k: int = CUTOFF) -> float:
    """NDCG@k of the order the predicted scores give (higher first), with linear gains.

    Tied documents get the mean discount of the ranks their block covers, which is the
    expected NDCG over every order of the ties. 0 when no document has a positive gain.
    """
    ideal = sum(g * _discount(rank, k) for rank, g in enumerate(sorted(gains, reverse=True)))
    if ideal <= 0:
        return 0.0
    dcg = 0.0
    for gain, (first, size) in zip(gains, _tie_blocks(pred_scores)):
        dcg += gain * sum(_discount(rank, k) for rank in range(first, first + size)) / size
    return min(1.0, dcg / ideal)  # guard against 1 + 1e-16 from float sums


def recall_at_k(pred_scores: list[float], relevance: list[float], k: int = CUTOFF) -> float:
    """Share of the relevant documents (relevance > 0: gains or 0/1 marks) in the top k.

    Expected over ties: a tie block straddling the cutoff puts each of its documents in the
    top k with probability (block ranks inside the cutoff) / (block size). 0 without
    relevant documents.
    """
    relevant = [r > 0 for r in relevance]
    if not any(relevant):
        return 0.0
    found = sum(max(0, min(k, first + size) - first) / size
                for is_relevant, (first, size) in zip(relevant, _tie_blocks(pred_scores)) if is_relevant)
    return found / sum(relevant)


def prompt_order_ndcg(gains: list[float], k: int = CUTOFF) -> float:
    """NDCG@k of the documents in the order the prompt lists them (REARANK's NDCG_initial)."""
    return ndcg_at_k([-position for position in range(len(gains))], gains, k)


def normalized_ndcg(pred_scores: list[float], gains: list[float], k: int = CUTOFF) -> float:
    """REARANK's (NDCG - NDCG_initial) / (NDCG_best - NDCG_initial), clipped to [0, 1].

    NDCG_best is 1 (0 for a group without relevant documents). Clipping at 0 means an answer
    no better than the prompt order earns nothing but is never pushed below a broken answer,
    which would teach the model to break the format. When best == initial (the prompt order
    is already ideal, or nothing is relevant) there is no gain to normalise by: the answer
    then gets its plain NDCG, 1 for keeping the ideal order and less for spoiling it.
    """
    ndcg = ndcg_at_k(pred_scores, gains, k)
    initial = prompt_order_ndcg(gains, k)
    best = 1.0 if any(g > 0 for g in gains) else 0.0
    if math.isclose(best, initial, abs_tol=1e-12):
        return ndcg
    return min(1.0, max(0.0, (ndcg - initial) / (best - initial)))


class Utility(NamedTuple):
    """The ranking utility's two terms; `total` is the utility itself."""

    ndcg: float  # NDCG@k, or REARANK's normalised gain
    recall: float  # γ·Recall@k

    @property
    def total(self) -> float:
        return self.ndcg + self.recall


def ranking_utility(pred_scores: list[float], gains: list[float], relevant: list[int] | None = None,
                    k: int = CUTOFF, gamma: float = GAMMA, normalized: bool = False) -> Utility:
    """The paper's "ranking utility" NDCG@k + γ·Recall@k (NDCG → normalised gain if asked),
    term by term. Recall's relevant documents are the `relevant` marks when given, else the positive gains.
    """
    ndcg = normalized_ndcg(pred_scores, gains, k) if normalized else ndcg_at_k(pred_scores, gains, k)
    return Utility(ndcg, gamma * recall_at_k(pred_scores, gains if relevant is None else relevant, k))


# --- group alignment: ε·(1 - JS(P‖Q)) -----------------------------------------------------------

def score_distribution(scores: list[float], smoothing: float = SMOOTHING) -> list[float]:
    """Scores as a probability distribution over the group: (s + smoothing) / sum."""
    shifted = [s + smoothing for s in scores]
    total = sum(shifted)
    if not (all(s >= 0 for s in shifted) and total > 0):  # also false for NaN
        raise ValueError(f"scores {scores} plus smoothing {smoothing} are no distribution: "
                         "each must be >= 0 and their sum > 0")
    return [s / total for s in shifted]


def _kl(p: list[float], m: list[float]) -> float:
    """KL(p‖m) in bits; terms with p = 0 contribute 0 (m > 0 wherever p > 0 when m = (p+q)/2)."""
    return sum(pi * math.log2(pi / mi) for pi, mi in zip(p, m) if pi > 0)


def js_divergence(p: list[float], q: list[float]) -> float:
    """Jensen-Shannon divergence ½KL(P‖M) + ½KL(Q‖M), M = ½(P+Q), in bits: within [0, 1]."""
    m = [(pi + qi) / 2 for pi, qi in zip(p, q)]
    return min(1.0, max(0.0, (_kl(p, m) + _kl(q, m)) / 2))  # clip float noise like -1e-17


def group_alignment(pred_scores: list[float], target_scores: list[float], epsilon: float = EPSILON) -> float:
    """The paper's "group alignment" ε·(1 - JS(P‖Q)): ε when the score distributions agree."""
    p, q = score_distribution(pred_scores), score_distribution(target_scores)
    return epsilon * (1.0 - js_divergence(p, q))


# --- one completion, and the TRL reward function -------------------------------------------------

def _scores_column(values, name: str, n_docs: int | None = None) -> list[float]:
    """One row of a reward column as floats, each finite and >= 0, `n_docs` of them if given;
    a ValueError naming the column and the entry otherwise."""
    if isinstance(values, (str, bytes)):  # iterable, but its characters are no scores
        raise ValueError(f"{name} must be a list of numbers, got the text {values[:40]!r}")
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError, OverflowError) as error:  # None, a non-number, an int beyond float
        raise ValueError(f"{name} must be a list of numbers ({error})") from None
    bad = next((i for i, v in enumerate(numbers) if not (math.isfinite(v) and v >= 0)), None)
    if bad is not None:
        raise ValueError(f"{name}[{bad}] is {numbers[bad]}: every entry must be a finite number >= 0")
    if n_docs is not None and len(numbers) != n_docs:
        raise ValueError(f"{name} has {len(numbers)} entries for a group of {n_docs} documents")
    return numbers


def score_completion(text: str, target_scores: list[float], gains: list[float] | None = None,
                     relevant: list[int] | None = None, *, utility: bool = True, alignment: bool = True,
                     normalized_gain: bool = False, require_reason: bool = False, k: int = CUTOFF) -> RewardBreakdown:
    """The reward of one completion for a group whose teacher targets are `target_scores`.

    `gains` defaults to the target scores, `relevant` (Recall's 0/1 marks) to the gains.
    `utility`, `alignment` and `normalized_gain` are the Preset's ``reward_*`` switches;
    `require_reason` makes a missing <reason> a format error. Bad columns raise a ValueError.
    """
    target_scores = _scores_column(target_scores, "target_scores")
    if not target_scores:
        raise ValueError("target_scores is empty: a group has at least one document")
    gains = target_scores if gains is None else _scores_column(gains, "gains", len(target_scores))
    relevant = gains if relevant is None else _scores_column(relevant, "relevant", len(target_scores))
    parsed = parse_group_scores(text, len(target_scores), require_reason=require_reason)
    gate = format_score(parsed.status)
    if parsed.status in GATE_FAILURES:
        return RewardBreakdown(parsed.status, gate, 0.0, 0.0, 0.0, gate)
    pred = parsed.scores
    ndcg, recall = ranking_utility(pred, gains, relevant, k, normalized=normalized_gain) if utility else (0.0, 0.0)
    align = group_alignment(pred, target_scores) if alignment else 0.0
    return RewardBreakdown(parsed.status, gate, ndcg, recall, align, gate + ndcg + recall + align)


def completion_text(completion) -> str:
    """The text of a completion given as a string or as chat messages [{"role", "content"}]."""
    if isinstance(completion, str):
        return completion
    return "\n".join(str(message.get("content") or "") for message in completion)


def log_terms(breakdowns: list[RewardBreakdown], log_metric) -> None:
    """Batch means of each term (they add up to the mean reward) and the share failing the gate."""
    n = len(breakdowns)
    for term in ("format", "ndcg", "recall", "alignment"):
        log_metric(f"reward/{term}", sum(getattr(b, term) for b in breakdowns) / n)
    log_metric(FORMAT_FAILURE, sum(b.status in GATE_FAILURES for b in breakdowns) / n)


def make_reward_func(preset):
    """GroupRank's reward as GRPOTrainer expects it: f(prompts, completions, **columns) -> floats.

    Reads the dataset columns ``target_scores`` and, when present, ``gains`` and ``relevant``
    (a row holding None there gets the default, as if the column were absent); takes the
    switches and the reasoning requirement from `preset`; logs the terms via ``log_metric``
    when TRL passes it. Other columns (qid, doc_ids, trainer_state…) are ignored. A missing
    ``target_scores`` column, a column of the wrong length or a bad row raises a ValueError
    naming the column (and the row's index in the batch).
    """
    switches = dict(utility=preset.reward_utility, alignment=preset.reward_alignment,
                    normalized_gain=preset.reward_normalized_gain, require_reason=preset.reasoning)

    def grouprank_reward(prompts, completions, target_scores=None, gains=None, relevant=None, log_metric=None,
                         **kwargs) -> list[float]:
        if target_scores is None:
            raise ValueError("the reward needs a target_scores column (the teacher's score of every document)")
        absent = [None] * len(completions)  # an optional column the dataset does not have
        columns = {"target_scores": target_scores, "gains": absent if gains is None else gains,
                   "relevant": absent if relevant is None else relevant}
        for name, column in columns.items():
            if len(column) != len(completions):
                raise ValueError(f"column {name} has {len(column)} rows for {len(completions)} completions")
        breakdowns = [_score_row(i, *row, switches) for i, row in enumerate(zip(completions, *columns.values()))]
        if log_metric is not None and breakdowns:
            log_terms(breakdowns, log_metric)
        return [b.total for b in breakdowns]

    return grouprank_reward


def _score_row(index: int, completion, targets, gains, relevant, switches: dict) -> RewardBreakdown:
    """`score_completion` for row `index` of a batch, its column errors prefixed with the row."""
    try:
        return score_completion(completion_text(completion), targets, gains, relevant, **switches)
    except ValueError as error:
        raise ValueError(f"reward batch row {index}: {error}") from None


def worked_example(target_scores=(8, 5, 2, 0)):
    """The reward terms for typical answers (a DataFrame): perfect and reversed first, the
    answer tagged "no tags" last; the rows between show that a complete tie still earns a
    ranking's expected reward while an incomplete answer, even an empty one, fails the gate."""
    import pandas as pd

    from .prompts import answer_text

    answers = {
        "perfect": answer_text(list(target_scores)),
        "reversed": answer_text(list(reversed(target_scores))),
        "all tied": answer_text([5] * len(target_scores)),  # complete: every order equally likely
        "first doc only": answer_text(list(target_scores[:1])),  # ids_missing: fails the gate
        "empty answer": "<answer>{}</answer>",  # ids_missing too; it used to earn the "all tied" reward
        "broken JSON": "<answer>[1] is best, then [2]</answer>",
        "no tags": answer_text(list(target_scores)).replace("<answer>", ""),
    }
    rows = {name: asdict(score_completion(text, list(target_scores))) for name, text in answers.items()}
    return pd.DataFrame.from_dict(rows, orient="index").round(3)
