"""Teachers for answer-free data synthesis (docs/paper.md §3), and their disk cache.

A teacher orders a candidate pool for a query, best first. It never sees an answer or a
human judgment, except `HumanTeacher`, the supervised upper bound, which is labelled so.

- `PointwiseLLMTeacher`, `ListwiseLLMTeacher`: a pointwise or listwise reranker of the pool
  (rerank.py: the same prompts, window schedule and parsing as the rerankers), with no
  retriever in its scores (weight 0): the pool's hybrid order only breaks ties.
- `BM25Teacher`, `DenseTeacher` (MiniLM cosine): offline stand-ins for an LLM teacher; with
  pseudo-relevance feedback (`BM25PRFTeacher`: stemmed BM25 + RM3; `DenseTeacher(feedback=...)`:
  Rocchio toward BM25+RM3's top documents) they know more than the retriever that built the pools.

LLM teachers run on any backend the rerankers take: `llm.LLM` for a local Hugging Face model,
`endpoint.EndpointBackend` for an OpenAI-compatible server; `teacher_backend` builds the
preset's (`teacher_model`, `teacher_endpoint`).

`CachedTeacher` stores every ranking on disk, so a finished pool costs no model call on a
re-run; `CachedBackend` stores every reply of a model, so an interrupted pool resends only
the calls that had not finished.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import numpy as np

from . import llm, prompts
from .endpoint import EndpointBackend
from .rerank import ListwiseReranker, PointwiseReranker
from .retrieval import BM25
from .runs import rank_by_scores
from .runtime import cache_dir, write_atomic

log = logging.getLogger(__name__)

TEACHER_KINDS = ("llm", "minilm", "minilm-prf", "bm25", "bm25-prf", "human")
ROLES = ("pointwise", "listwise")


class Teacher(Protocol):
    name: str  # short label for tables and the data card
    answer_free: bool  # False only for a teacher that reads human judgments

    def identity(self) -> dict:
        """Everything besides the inputs that changes the ranking (part of the cache key)."""

    def rank(self, query: str, doc_ids: list[str], texts: list[str]) -> list[str]:
        """`doc_ids` reordered best first."""


# --- LLM teachers: rerankers of the pool --------------------------------------------------------

def model_id_of(backend) -> str:
    """A backend's model name for cache keys (`model_id` of llm.LLM and EndpointBackend)."""
    return getattr(backend, "model_id", type(backend).__name__)


class _RerankerTeacher:
    """A teacher that is a reranker of the pool: the reranker's ranking, pool order breaking ties."""

    answer_free = True
    name = "llm"

    def __init__(self, reranker, model_id: str | None):
        self.reranker = reranker
        self.model_id = model_id or model_id_of(reranker.backend)

    def identity(self) -> dict:
        return {"name": self.name, "model": self.model_id, "doc_max_chars": self.reranker.preset.doc_max_chars}

    def rank(self, query: str, doc_ids: list[str], texts: list[str]) -> list[str]:
        return [doc_id for doc_id, _ in self.reranker.rank(query, dict(zip(doc_ids, texts))).ranking]


def _teacher_preset(preset):
    """A teacher's scores are its own (no retriever weight), answer-only, from one pass."""
    return replace(preset, retriever_weight=0.0, reasoning=False, passes=1)


class PointwiseLLMTeacher(_RerankerTeacher):
    """One document per prompt, scored 0-10 and sorted (the paper's Qwen3-235B role).

    ``scoring="logprob"`` reads each score as the expected digit from one forward pass
    (local models only) instead of generating it: continuous scores, hence fewer ties, and
    no free-text parsing.
    """

    name = "llm-pointwise"

    def __init__(self, backend, preset, scoring: str = "generate", model_id: str | None = None):
        super().__init__(PointwiseReranker(backend, _teacher_preset(preset), scoring), model_id)

    def identity(self) -> dict:
        return {**super().identity(), "scoring": self.reranker.scoring}


class ListwiseLLMTeacher(_RerankerTeacher):
    """Ranks the whole pool as a permutation (the paper's Gemini-2.5-Pro role), by the
    listwise reranker's sliding window when the pool is longer than `window`."""

    name = "llm-listwise"

    def __init__(self, backend, preset, window: int = 20, step: int = 10, model_id: str | None = None):
        super().__init__(ListwiseReranker(backend, _teacher_preset(preset), window, step), model_id)

    def identity(self) -> dict:
        return {**super().identity(), "window": self.reranker.window, "step": self.reranker.step}


def teacher_model_name(preset) -> str:
    return preset.teacher_model or preset.model


def teacher_backend(preset):
    """The backend of the preset's "llm" teachers: `teacher_endpoint` if set, else a local
    Hugging Face model (`teacher_model`, default the student's: embedded, folder or hub id; 4-bit optional)."""
    if preset.teacher_endpoint:
        return EndpointBackend(preset.teacher_endpoint, teacher_model_name(preset))
    teacher = replace(preset, model=teacher_model_name(preset))  # its model names it in cache keys
    return llm.LLM(*llm.load(teacher), teacher)


# --- offline teachers ---------------------------------------------------------------------------

class BM25Teacher:
    """BM25 scores from the whole collection's index (pool-only IDF would be too noisy)."""

    name = "bm25"
    answer_free = True

    def __init__(self, bm25, model_id: str = "bm25s"):
        self.bm25, self.model_id = bm25, model_id

    def identity(self) -> dict:
        return {"name": self.name, "model": self.model_id, "stopwords": self.bm25.stopwords}

    def rank(self, query: str, doc_ids: list[str], texts: list[str]) -> list[str]:
        return rank_by_scores(doc_ids, self._scores(query, doc_ids).tolist())

    def _scores(self, query: str, doc_ids: list[str]):
        scores = self.collection_scores(query)
        return np.array([scores[self.bm25.row[d]] if d in self.bm25.row else 0.0 for d in doc_ids])

    def collection_scores(self, query: str):
        return self.bm25.all_scores(query)


class BM25PRFTeacher(BM25Teacher):
    """Stemmed BM25 with RM3 pseudo-relevance feedback (`retrieval.BM25.rm3_scores`): the first
    search's top documents are taken as relevant, without any judgment, and the query is expanded
    with their terms. Its own stemmed index, whatever the first stage uses."""

    name = "bm25-prf"
    STEMMER = "english"

    def identity(self) -> dict:
        return {**super().identity(), "stemmer": self.STEMMER, "rm3": [10, 20, 0.5]}

    def collection_scores(self, query: str):
        return self.bm25.rm3_scores(query)

    def top_ids(self, query: str, k: int) -> list[str]:
        """The ids of the `k` best documents of the whole collection."""
        scores = self.collection_scores(query)
        return [self.bm25.doc_ids[i] for i in np.argsort(-scores, kind="stable")[:k]]


class DenseTeacher:
    """Cosine similarity of MiniLM embeddings (a retrieval.Dense, or anything with the same
    normalised ``encode``); pool documents already in its index reuse their stored vectors.

    With `feedback` (a `BM25PRFTeacher`), the query vector first moves toward the mean of the
    top `FEEDBACK_DOCS` documents of that teacher over the whole collection (Rocchio
    pseudo-relevance feedback): still answer-free, and on Cranfield's and CISI's training pools
    it ranks above both the plain MiniLM and the hybrid order (01_data_synthesis shows it).
    """

    name = "minilm"
    answer_free = True
    FEEDBACK_DOCS = 5

    def __init__(self, dense, model_id: str = "all-MiniLM-L6-v2", feedback: BM25PRFTeacher | None = None):
        self.dense, self.model_id, self.feedback = dense, model_id, feedback
        self.row = {doc_id: i for i, doc_id in enumerate(getattr(dense, "doc_ids", []))}
        if feedback is not None:
            self.name = "minilm-prf"

    def identity(self) -> dict:
        extra = {"feedback": {**self.feedback.identity(), "docs": self.FEEDBACK_DOCS}} if self.feedback else {}
        return {"name": self.name, "model": self.model_id, **extra}

    def rank(self, query: str, doc_ids: list[str], texts: list[str]) -> list[str]:
        if self.feedback is None:
            query_vector = self.dense.encode([query])[0]
        else:
            top = self.feedback.top_ids(query, self.FEEDBACK_DOCS)
            query_vector = self.dense.rocchio_vector(query, [self.row[d] for d in top if d in self.row])
        return rank_by_scores(doc_ids, (self._vectors(doc_ids, texts) @ query_vector).tolist())

    def _vectors(self, doc_ids: list[str], texts: list[str]):
        if all(doc_id in self.row for doc_id in doc_ids):
            return self.dense.matrix[[self.row[doc_id] for doc_id in doc_ids]]
        return self.dense.encode(texts)


class HumanTeacher:
    """The human judgments of the training query: a supervised upper bound, NOT answer-free.

    Graded qrels best first; unjudged documents count as 0 and keep their pool order.
    """

    name = "human (NOT answer-free)"
    answer_free = False

    def __init__(self, collection):
        self.collection_name = collection.name
        self.grades: dict[str, dict[str, int]] = {}
        for qid, text in collection.queries.items():
            self.grades.setdefault(text, {}).update(collection.qrels.get(qid, {}))

    def identity(self) -> dict:
        return {"name": "human", "model": f"qrels:{self.collection_name}"}

    def rank(self, query: str, doc_ids: list[str], texts: list[str]) -> list[str]:
        if query not in self.grades:
            raise KeyError(f"no judgments for query {query[:60]!r} in {self.collection_name}")
        grades = self.grades[query]
        return rank_by_scores(doc_ids, [grades.get(doc_id, 0) for doc_id in doc_ids])


def make_teacher(kind: str, role: str, preset, *, collection=None, bm25=None, dense=None, backend=None) -> Teacher:
    """Map a preset string (``pointwise_teacher`` / ``listwise_teacher``) to a teacher.

    `role` only matters for "llm" (pointwise: one document per call; listwise: the pool).
    The offline kinds fill either role with the same ranking; the fusion math is unchanged.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    builders = {
        "llm": lambda: (PointwiseLLMTeacher(_required(backend, "backend"), preset) if role == "pointwise"
                        else ListwiseLLMTeacher(_required(backend, "backend"), preset)),
        "minilm": lambda: DenseTeacher(_required(dense, "dense")),
        "minilm-prf": lambda: DenseTeacher(_required(dense, "dense"), feedback=prf_teacher(preset, collection)),
        "bm25": lambda: BM25Teacher(_required(bm25, "bm25")),
        "bm25-prf": lambda: prf_teacher(preset, collection),
        "human": lambda: HumanTeacher(_required(collection, "collection")),
    }
    if kind not in builders:
        raise KeyError(f"unknown teacher {kind!r}; choose one of {TEACHER_KINDS}")
    return builders[kind]()


def prf_teacher(preset, collection) -> BM25PRFTeacher:
    """The stemmed BM25+RM3 teacher over `collection` (its own index: the first stage may be unstemmed)."""
    index = BM25(_required(collection, "collection"), preset.bm25_stopwords, BM25PRFTeacher.STEMMER)
    return BM25PRFTeacher(index)


def _required(value, what: str):
    if value is None:
        raise ValueError(f"this teacher needs a {what}")
    return value


# --- disk caches ------------------------------------------------------------------------------------

def _checksum(value) -> str:
    """sha256 of a JSON value (keys sorted): the cache keys, and the checksums of cached values."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def cache_key(identity: dict, query: str, doc_ids: list[str], texts: list[str]) -> str:
    return _checksum([identity, query, doc_ids, texts, prompts.PROMPT_VERSION])


def call_key(model_id: str, messages: list[dict], max_new_tokens: int | None) -> str:
    """Everything a greedy reply depends on: the model, the chat messages, the token budget, the prompt version."""
    return _checksum([model_id, messages, max_new_tokens, prompts.PROMPT_VERSION])


class _DiskCache:
    """One JSON file per key, ``root/<first two hex digits>/<key>.json``, holding the key, the
    value under `field` and the value's checksum, written to a temporary name and renamed
    (`runtime.write_atomic`). An entry that fails to parse, names another key, fails its
    checksum or the caller's check is not trusted: counted in `recovered`, warned about, and
    read as missing, so that the caller recomputes it and `put` overwrites it."""

    def __init__(self, root: Path, field: str):
        self.root, self.field = Path(root), field
        self.recovered = 0

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str, valid=lambda value: True):
        path = self.path(key)
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            value = entry[self.field]
            ok = entry["key"] == key and entry["checksum"] == _checksum(value) and valid(value)
        except (ValueError, KeyError, TypeError):
            ok = False
        if ok:
            return value
        self.recovered += 1
        log.warning("%s cache entry %s is damaged; recomputing it", self.root.name, path.name)
        return None

    def put(self, key: str, value, **labels) -> None:
        entry = {"key": key, **labels, self.field: value, "checksum": _checksum(value)}
        write_atomic(self.path(key), json.dumps(entry, ensure_ascii=False))


class CachedTeacher:
    """A teacher whose every ranking is kept as one JSON file under cache_dir()/teachers/
    (see `_DiskCache`); a ranking that is not a permutation of the pool is recomputed too.
    A finished pool therefore costs nothing on a re-run; for the calls of an unfinished one,
    see `CachedBackend`."""

    def __init__(self, teacher: Teacher, root: Path | None = None):
        self.teacher = teacher
        self.cache = _DiskCache(Path(root) if root else cache_dir() / "teachers", "ranking")
        self.hits = self.misses = 0

    @property
    def name(self) -> str:
        return self.teacher.name

    @property
    def answer_free(self) -> bool:
        return self.teacher.answer_free

    @property
    def recovered(self) -> int:
        return self.cache.recovered

    def identity(self) -> dict:
        return self.teacher.identity()

    def rank(self, query: str, doc_ids: list[str], texts: list[str]) -> list[str]:
        key = cache_key(self.identity(), query, doc_ids, texts)
        cached = self.cache.get(key, lambda ranking: sorted(ranking) == sorted(doc_ids))
        if cached is not None:
            self.hits += 1
            return cached
        ranking = self.teacher.rank(query, doc_ids, texts)
        self.misses += 1
        self.cache.put(key, ranking, teacher=self.name)
        return ranking


class CachedBackend:
    """A chat backend whose every reply is kept as one JSON file under cache_dir()/calls/
    (key: `call_key`; see `_DiskCache`), so that a run killed in the middle of a pool sends
    again only the calls that had not finished.

    Each reply is kept as soon as its call is over: one by one from a backend that reports
    them so (`EndpointBackend.replies_as_completed`), else after each `generate` batch of
    the backend's `preset.batch_size` prompts (what a local model computes together; one
    prompt at a time for a backend without a preset). Token-probability scoring is not
    cached here: it needs `llm.LLM` itself.
    """

    def __init__(self, backend, root: Path | None = None):
        self.backend = backend
        self.cache = _DiskCache(Path(root) if root else cache_dir() / "calls", "reply")
        self.hits = self.misses = 0

    @property
    def model_id(self) -> str:
        return model_id_of(self.backend)

    @property
    def stats(self):
        return self.backend.stats  # what was really spent: cached replies cost nothing

    def generate(self, prompts_: list[list[dict]], max_new_tokens: int | None = None) -> list[str]:
        keys = [call_key(self.model_id, messages, max_new_tokens) for messages in prompts_]
        replies = [self.cache.get(key, lambda reply: isinstance(reply, str)) for key in keys]
        todo = [i for i, reply in enumerate(replies) if reply is None]
        self.hits += len(prompts_) - len(todo)
        for j, reply in _finished_calls(self.backend, [prompts_[i] for i in todo], max_new_tokens):
            self.cache.put(keys[todo[j]], reply)
            replies[todo[j]] = reply
            self.misses += 1
        return replies


def _finished_calls(backend, prompts_: list[list[dict]], max_new_tokens: int | None):
    """(index, reply) pairs as soon as `backend` has finished each call (see `CachedBackend`)."""
    if hasattr(backend, "replies_as_completed"):
        yield from backend.replies_as_completed(prompts_, max_new_tokens)
        return
    size = getattr(getattr(backend, "preset", None), "batch_size", 1)
    for start in range(0, len(prompts_), size):
        yield from enumerate(backend.generate(prompts_[start:start + size], max_new_tokens), start)
