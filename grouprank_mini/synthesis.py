"""Answer-free data synthesis (docs/paper.md §3): pools -> teachers -> fusion -> groups -> records.

One function per step, so notebook 01 can run them cell by cell; `build_datasets` chains
them and saves the SFT and RL datasets with a data card. Only train-split queries are used.

Documented choices where the paper is silent:

- **Fusion ties** (`fuse`): S(d) = -β·ln L_p(d) - (1-β)·ln L_l(d) ties exactly whenever the
  rank products match (β = 0.5: ranks (1, 4), (2, 2), (4, 1)). Ties go to the better
  listwise rank (the stronger teacher in the paper's Table 9); listwise ranks are all
  different, so the label ranking is always a strict order.
- **Interval sampling** (`interval_sample`): systematic sampling. The fused pool of n is
  cut into G strata of width n/G and one document is taken at the same random offset in
  each, so every group spans strong, middling and weak candidates.
- **Targets** (`target_score`): linear in the fused rank over the whole pool,
  round(10·(1 - (rank-1)/(n-1))): the pool's best document gets 10, its worst 0, and a
  document's target does not depend on which group it lands in (scores stay absolute).
- **RL gains**: the target scores themselves are the graded gains of the reward's NDCG;
  `relevant` marks documents in the pool's fused top `pool_top_k` (the share of the pool
  the first stage trusted), for the reward's Recall.
- **Reasoning**: no teacher here writes a group-level rationale, so SFT completions are
  answer-only and their prompts ask for the answer only; RL prompts follow `preset.reasoning`.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from . import prompts
from .data import Collection, load_collection, preset_split
from .evaluate import evaluate
from .retrieval import BM25, Dense, hybrid
from .runs import Run, from_orders, ranked_ids
from .runtime import atomic_path, bars_hidden, dataset_root
from .teachers import CachedBackend, CachedTeacher, HumanTeacher, make_teacher, model_id_of, teacher_backend, teacher_model_name

# Preset fields that change the synthesised data: a finished dataset is reused only if they match.
SYNTHESIS_FIELDS = (
    "seed", "split_seed", "test_fraction", "dev_fraction", "synth_queries", "bm25_stopwords", "bm25_stemmer",
    "hybrid_alpha", "pool_top_k", "pool_random_m", "pool_rank_max", "fusion_beta", "synth_group_sizes",
    "synth_groups_per_pool", "pointwise_teacher", "listwise_teacher", "doc_max_chars", "reasoning",
)


def _rng(preset, *parts) -> random.Random:
    """A generator seeded by text, so each query and group draws the same way on every run."""
    return random.Random(":".join(str(p) for p in (preset.seed, *parts)))


# --- 1. candidate pools -------------------------------------------------------------------------

@dataclass
class Retrievers:
    bm25: BM25
    dense: Dense


def synthesis_queries(collection: Collection, preset) -> list[str]:
    """The first `synth_queries` train-split queries: test and dev queries never get a pool."""
    return preset_split(collection, preset).train[:preset.synth_queries]


def build_retrievers(collection: Collection, preset) -> Retrievers:
    """BM25 and MiniLM over the collection (the dense matrix is cached on disk by retrieval.Dense)."""
    return Retrievers(BM25(collection, preset.bm25_stopwords, preset.bm25_stemmer), Dense(collection))


def hybrid_run(collection: Collection, qids: list[str], preset, retrievers: Retrievers) -> Run:
    """alpha·norm(BM25) + (1-alpha)·norm(dense), top `pool_rank_max`, in the order of `qids`."""
    queries = {qid: collection.queries[qid] for qid in qids}
    depth = preset.pool_rank_max
    sparse, dense = retrievers.bm25.search(queries, depth), retrievers.dense.search(queries, depth)
    run = hybrid(sparse, dense, preset.hybrid_alpha, depth)
    return {qid: run[qid] for qid in qids}


def sample_pool(ranking: list[str], top_k: int, random_m: int, rank_max: int, rng: random.Random) -> list[str]:
    """The top `top_k` plus `random_m` drawn from ranks top_k+1..rank_max, kept in retriever order."""
    tail = ranking[top_k:rank_max]
    drawn = set(rng.sample(range(len(tail)), min(random_m, len(tail))))
    return ranking[:top_k] + [doc_id for i, doc_id in enumerate(tail) if i in drawn]


def candidate_pools(run: Run, preset) -> dict[str, list[str]]:
    """One pool per query of the hybrid run (paper: top 10 + 40 random from ranks 11-200)."""
    return {qid: sample_pool(ranked_ids(scores), preset.pool_top_k, preset.pool_random_m, preset.pool_rank_max,
                             _rng(preset, "pool", qid))
            for qid, scores in run.items()}


# --- 2. teachers -----------------------------------------------------------------------------------

def make_teachers(preset, collection: Collection, retrievers: Retrievers,
                  backend=None) -> tuple[CachedTeacher, CachedTeacher]:
    """The preset's (pointwise, listwise) teachers, each behind the disk cache.

    "llm" teachers use `backend` if given, else `teachers.teacher_backend(preset)` (the
    preset's teacher endpoint or local model), loaded once and shared by both roles, behind
    the cache of single calls (`teachers.CachedBackend`: an interrupted pool resumes call by call).
    """
    kinds = (preset.pointwise_teacher, preset.listwise_teacher)
    if "llm" in kinds:
        backend = CachedBackend(backend if backend is not None else teacher_backend(preset))
    return tuple(CachedTeacher(make_teacher(kind, role, preset, collection=collection, bm25=retrievers.bm25,
                                            dense=retrievers.dense, backend=backend))
                 for kind, role in zip(kinds, ("pointwise", "listwise")))


def teacher_rankings(teacher, pools: dict[str, list[str]], collection: Collection,
                     progress: bool = True) -> dict[str, list[str]]:
    """Each pool ordered best first by `teacher` (one cached call per query)."""
    return {qid: teacher.rank(collection.queries[qid], pool, [collection.docs[d] for d in pool])
            for qid, pool in tqdm(pools.items(), desc=teacher.name, disable=not progress or bars_hidden(), leave=False)}


# --- 3. fusion --------------------------------------------------------------------------------------

def fusion_scores(pointwise: list[str], listwise: list[str], beta: float) -> dict[str, float]:
    """S(d) = -β·ln L_p(d) - (1-β)·ln L_l(d), with L the 1-based rank in each teacher's list."""
    listwise_rank = {doc_id: rank for rank, doc_id in enumerate(listwise, start=1)}
    return {doc_id: -beta * math.log(rank) - (1 - beta) * math.log(listwise_rank[doc_id])
            for rank, doc_id in enumerate(pointwise, start=1)}


def fuse(pointwise: list[str], listwise: list[str], beta: float) -> list[str]:
    """The label ranking: by S, ties (S equal to 9 decimals, i.e. up to float noise) to the listwise rank."""
    if sorted(pointwise) != sorted(listwise):
        raise ValueError("both teachers must rank the same documents")
    scores = fusion_scores(pointwise, listwise, beta)
    listwise_rank = {doc_id: rank for rank, doc_id in enumerate(listwise)}
    return sorted(listwise, key=lambda d: (-round(scores[d], 9), listwise_rank[d]))


def fuse_pools(pointwise: dict[str, list[str]], listwise: dict[str, list[str]], beta: float) -> dict[str, list[str]]:
    return {qid: fuse(pointwise[qid], listwise[qid], beta) for qid in pointwise}


# --- 4. multi-scale groups ----------------------------------------------------------------------------

def interval_sample(n: int, size: int, offset: float) -> list[int]:
    """Positions floor((j + offset)·n/size), j = 0..size-1: one per stratum, offset in [0, 1)."""
    if not 1 <= size <= n or not 0 <= offset < 1:
        raise ValueError("need 1 <= size <= n and 0 <= offset < 1")
    return [math.floor((j + offset) * n / size) for j in range(size)]


def sample_groups(fused: list[str], preset, qid: str, purpose: str) -> list[list[str]]:
    """`synth_groups_per_pool` groups of a size drawn from `synth_group_sizes` (inclusive, capped
    at the pool size), each in a shuffled prompt order. `purpose` ("sft"/"rl") gives the two
    datasets different draws from the same pools."""
    low, high = preset.synth_group_sizes
    groups = []
    for index in range(preset.synth_groups_per_pool):
        rng = _rng(preset, purpose, qid, index)
        size = min(rng.randint(low, high), len(fused))
        group = [fused[i] for i in interval_sample(len(fused), size, rng.random())]
        rng.shuffle(group)  # the prompt order must not reveal the label order
        groups.append(group)
    return groups


# --- 5. targets and records -----------------------------------------------------------------------------

def target_score(rank: int, pool_size: int) -> int:
    """Integer 0-10 for a 1-based fused rank: 10 for the pool's best, 0 for its worst, linear between."""
    if pool_size == 1:
        return 10
    return math.floor(10 * (1 - (rank - 1) / (pool_size - 1)) + 0.5)  # round half up, not to even


def group_targets(group: list[str], fused: list[str]) -> list[int]:
    """The fused ranking projected onto the group, as each document's target score (prompt order)."""
    rank = {doc_id: r for r, doc_id in enumerate(fused, start=1)}
    return [target_score(rank[doc_id], len(fused)) for doc_id in group]


def sft_record(collection: Collection, qid: str, group: list[str], targets: list[int], preset,
               reasoning: str | None = None) -> dict:
    """TRL conversational prompt-completion row; reasoning only if a teacher wrote some."""
    texts = [collection.docs[d] for d in group]
    return {
        "prompt": prompts.groupwise_messages(collection.queries[qid], texts, preset.doc_max_chars,
                                             preset.reasoning and reasoning is not None),
        "completion": [{"role": "assistant", "content": prompts.answer_text(targets, reasoning)}],
        "qid": qid, "doc_ids": group, "target_scores": targets,
    }


def rl_record(collection: Collection, qid: str, group: list[str], fused: list[str], preset) -> dict:
    """GRPO row: prompt, the targets, the reward's NDCG gains (= targets) and Recall's relevant set."""
    targets = group_targets(group, fused)
    top = set(fused[:preset.pool_top_k])
    return {
        "prompt": prompts.groupwise_messages(collection.queries[qid], [collection.docs[d] for d in group],
                                             preset.doc_max_chars, preset.reasoning),
        "qid": qid, "doc_ids": group, "target_scores": targets,
        "gains": [float(t) for t in targets], "relevant": [int(d in top) for d in group],
    }


def make_records(collection: Collection, fused: dict[str, list[str]], preset) -> tuple[list[dict], list[dict]]:
    """SFT and RL rows for every pool, each from its own group draws."""
    sft = [sft_record(collection, qid, group, group_targets(group, ranking), preset)
           for qid, ranking in fused.items() for group in sample_groups(ranking, preset, qid, "sft")]
    rl = [rl_record(collection, qid, group, ranking, preset)
          for qid, ranking in fused.items() for group in sample_groups(ranking, preset, qid, "rl")]
    return sft, rl


# --- 6. validation (paper Table 9) -------------------------------------------------------------------------

def validation_table(collection: Collection, rankings: dict[str, dict[str, list[str]]]):
    """nDCG@10 of each named ranking of the pools, judged by the human qrels of the same queries.

    Relevant documents outside a pool count in the ideal ranking, the same for every row.
    """
    import pandas as pd

    rows = {name: {"nDCG@10": evaluate(from_orders(ranked), collection, qids=list(ranked))["nDCG@10"],
                   "queries": len(ranked)}
            for name, ranked in rankings.items()}
    table = pd.DataFrame(rows).T
    table["queries"] = table["queries"].astype(int)
    table.index.name = "ranking of the pool"
    return table.round({"nDCG@10": 4})


def validation_rankings(pools, pointwise, listwise, fused, teachers, beta,
                        collection: Collection | None = None) -> dict[str, dict[str, list[str]]]:
    """The rows of the validation table, labelled with what produced them; with `collection`, a
    last row ranks the pools by its human judgments: the ceiling of any teacher, NOT answer-free."""
    point_teacher, list_teacher = teachers
    rows = {"hybrid retriever": pools, f"pointwise teacher: {point_teacher.name}": pointwise,
            f"listwise teacher: {list_teacher.name}": listwise, f"fused (beta={beta})": fused}
    if collection is not None:
        rows["human judgments (NOT answer-free)"] = teacher_rankings(HumanTeacher(collection), pools, collection,
                                                                    progress=False)
    return rows


# --- 7. saving ------------------------------------------------------------------------------------------------

def synthesis_fingerprint(preset, collection: Collection, backend=None) -> str:
    """Hash of everything the datasets depend on: preset fields, the collection, prompts, LLM."""
    settings = {name: getattr(preset, name) for name in SYNTHESIS_FIELDS}
    if "llm" in (preset.pointwise_teacher, preset.listwise_teacher):
        settings["llm"] = model_id_of(backend) if backend is not None else teacher_model_name(preset)
    ids = hashlib.sha256("\n".join(collection.docs).encode()).hexdigest()
    payload = [settings, collection.name, len(collection.docs), ids, sorted(collection.queries), prompts.PROMPT_VERSION]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def save_datasets(root: Path, sft: list[dict], rl: list[dict], summary: dict, table) -> dict:
    """Write sft/, rl/ (datasets.save_to_disk), card.md, histograms.png, build.json.

    Everything goes to a sibling folder first and is renamed into place at the end, so an
    interrupted save never leaves a folder that looks finished.
    """
    from datasets import Dataset

    from .plots import synthesis_histograms

    sizes, scores = [len(r["doc_ids"]) for r in sft], [s for r in sft for s in r["target_scores"]]
    with atomic_path(root) as partial:
        Dataset.from_list(sft).save_to_disk(str(partial / "sft"))
        Dataset.from_list(rl).save_to_disk(str(partial / "rl"))
        synthesis_histograms(sizes, scores).savefig(partial / "histograms.png", dpi=100)
        table.to_csv(partial / "validation.csv")
        (partial / "card.md").write_text(data_card(summary, sizes, scores, table), encoding="utf-8")
        (partial / "build.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return finished_result(root, reused=False)


def data_card(summary: dict, sizes: list[int], scores: list[int], table) -> str:
    counts, teachers = summary["counts"], summary["teachers"]
    answer_free = "yes" if summary["answer_free"] else "NO: a teacher read human judgments"
    return "\n".join([
        f"# GroupRank synthetic data: preset `{summary['preset']}`, collection `{summary['collection']}`",
        "",
        f"- training queries (train split only): {counts['queries']}; pool size {summary['pool']}",
        f"- teachers: pointwise = {teachers['pointwise']}, listwise = {teachers['listwise']}; "
        f"fusion beta = {summary['beta']}; answer-free: {answer_free}",
        f"- SFT rows: {counts['sft']}; RL rows: {counts['rl']} (different group draws from the same pools)",
        "- targets: 10·(1 - (fused rank - 1)/(pool size - 1)), rounded; RL gains = targets",
        "",
        "## Group sizes (SFT)", "", _histogram_lines(sizes),
        "## Target scores (SFT)", "", _histogram_lines(scores),
        "## Validation: nDCG@10 of each ranking of the pools (human judgments)", "",
        "```", table.to_string(), "```", "",
        "![group sizes and target scores](histograms.png)", "",
    ])


def _histogram_lines(values: list[int]) -> str:
    counts = Counter(values)
    return "\n".join(f"- {value}: {counts[value]}" for value in sorted(counts)) + "\n"


def finished_result(root: Path, reused: bool) -> dict:
    """Paths, counts and the validation table of a finished build, as `build_datasets` returns them."""
    import pandas as pd

    summary = json.loads((root / "build.json").read_text(encoding="utf-8"))
    return {"dir": root, "sft": root / "sft", "rl": root / "rl", "card": root / "card.md",
            "figure": root / "histograms.png", "counts": summary["counts"], "teachers": summary["teachers"],
            "validation": pd.read_csv(root / "validation.csv", index_col=0), "reused": reused}


def _finished_fingerprint(root: Path) -> str | None:
    try:
        return json.loads((root / "build.json").read_text(encoding="utf-8"))["fingerprint"]
    except (OSError, ValueError, KeyError):
        return None


# --- all of it -------------------------------------------------------------------------------------------------

def build_datasets(preset, collection: Collection | None = None, retrievers: Retrievers | None = None,
                   backend=None, progress: bool = True) -> dict:
    """Pools -> teachers -> fusion -> groups -> records -> validation -> saved datasets.

    Returns the paths (dir, sft, rl, card, figure), counts, teacher names and the
    validation table. A finished build with the same fingerprint is reused as it is;
    teacher calls are cached, so an interrupted build resumes where it stopped.
    """
    collection = collection or load_collection(preset.collection)
    root, fingerprint = dataset_root(preset), synthesis_fingerprint(preset, collection, backend)
    if _finished_fingerprint(root) == fingerprint:
        return finished_result(root, reused=True)
    qids = synthesis_queries(collection, preset)
    if not qids:
        raise ValueError(f"{collection.name} has no train-split queries to synthesise data for")
    retrievers = retrievers or build_retrievers(collection, preset)
    pools = candidate_pools(hybrid_run(collection, qids, preset, retrievers), preset)
    teachers = make_teachers(preset, collection, retrievers, backend)
    pointwise, listwise = (teacher_rankings(t, pools, collection, progress) for t in teachers)
    fused = fuse_pools(pointwise, listwise, preset.fusion_beta)
    sft, rl = make_records(collection, fused, preset)
    rankings = validation_rankings(pools, pointwise, listwise, fused, teachers, preset.fusion_beta, collection)
    table = validation_table(collection, rankings)
    summary = {
        "fingerprint": fingerprint, "preset": preset.name, "collection": collection.name,
        "pool": f"top {preset.pool_top_k} + {preset.pool_random_m} random from ranks "
                f"{preset.pool_top_k + 1}-{preset.pool_rank_max}",
        "teachers": {"pointwise": teachers[0].name, "listwise": teachers[1].name},
        "answer_free": all(t.answer_free for t in teachers), "beta": preset.fusion_beta,
        "counts": {"queries": len(pools), "sft": len(sft), "rl": len(rl)},
    }
    return save_datasets(root, sft, rl, summary, table)
