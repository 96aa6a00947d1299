"""Teachers for answer-free data synthesis (GROUPRANK.md §3), their disk cache, and an endpoint backend.

A teacher orders a candidate pool for a query, best first. It never sees an answer or a
human judgment, except `HumanTeacher`, the supervised upper bound, which is labelled so.

- `PointwiseLLMTeacher`: one document per call (the groupwise prompt with one document),
  an integer 0-10 each; documents with equal scores keep their pool order.
- `ListwiseLLMTeacher`: RankGPT-style permutation of the pool; a pool longer than the
  window is ranked by a sliding window from back to front (see `window_starts`).
- `DenseTeacher` (MiniLM cosine), `BM25Teacher`: offline stand-ins for an LLM teacher.

Both LLM teachers take any *chat backend*: an object whose ``generate(list of chat
message lists, max_new_tokens=None) -> list[str]``: rerank.LLM for a local Hugging Face
model, `EndpointBackend` for any OpenAI-compatible server; `teacher_backend` builds the
preset's (`teacher_model`, `teacher_endpoint`).

`CachedTeacher` stores every ranking on disk, so an interrupted run loses nothing and a
re-run costs no model call.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from http.client import HTTPException
from pathlib import Path
from typing import Protocol

from . import prompts
from .groups import window_starts
from .parsing import parse_group_scores, parse_permutation
from .runtime import cache_dir

log = logging.getLogger(__name__)

TEACHER_KINDS = ("llm", "minilm", "bm25", "human")
ROLES = ("pointwise", "listwise")


class Teacher(Protocol):
    name: str  # short label for tables and the data card
    answer_free: bool  # False only for a teacher that reads human judgments

    def identity(self) -> dict:
        """Everything besides the inputs that changes the ranking (part of the cache key)."""

    def rank(self, query: str, doc_ids: list[str], texts: list[str]) -> list[str]:
        """`doc_ids` reordered best first."""


def rank_by_scores(doc_ids: list[str], scores: list[float]) -> list[str]:
    """Ids by descending score; equal scores keep the given (pool = hybrid retriever) order."""
    order = sorted(range(len(doc_ids)), key=lambda i: -scores[i])  # sorted() is stable
    return [doc_ids[i] for i in order]


# --- LLM teachers -----------------------------------------------------------------------------

def model_id_of(backend) -> str:
    """A backend's model name for cache keys: EndpointBackend.model_id, or rerank.LLM's preset.model."""
    preset = getattr(backend, "preset", None)
    return getattr(backend, "model_id", None) or getattr(preset, "model", type(backend).__name__)


class PointwiseLLMTeacher:
    """One document per prompt, scored 0-10 and sorted (the paper's Qwen3-235B role).

    ``scoring="logprob"`` reads each score as the expected digit from one forward pass
    (rerank.LLM.slot_scores; local models only) instead of generating it: continuous
    scores, hence fewer ties, and no free-text parsing.
    """

    name = "llm-pointwise"
    answer_free = True

    def __init__(self, backend, doc_max_chars: int, scoring: str = "generate", model_id: str | None = None):
        if scoring not in ("generate", "logprob"):
            raise ValueError("scoring must be 'generate' or 'logprob'")
        self.backend, self.doc_max_chars, self.scoring = backend, doc_max_chars, scoring
        self.model_id = model_id or model_id_of(backend)

    def identity(self) -> dict:
        return {"name": self.name, "model": self.model_id, "doc_max_chars": self.doc_max_chars, "scoring": self.scoring}

    def rank(self, query: str, doc_ids: list[str], texts: list[str]) -> list[str]:
        messages = [prompts.groupwise_messages(query, [text], self.doc_max_chars) for text in texts]
        return rank_by_scores(doc_ids, self._scores(messages))

    def _scores(self, messages: list[list[dict]]) -> list[float]:
        if self.scoring == "logprob":
            return [slots[0] for slots in self.backend.slot_scores(messages, [1] * len(messages))]
        replies = self.backend.generate(messages, max_new_tokens=24)  # '<answer>{"[1]": 10}</answer>' is ~15 tokens
        return [parse_group_scores(reply, 1).scores[0] for reply in replies]


class ListwiseLLMTeacher:
    """Ranks the whole pool as a permutation (the paper's Gemini-2.5-Pro role).

    Merge for pools longer than `window`: start from the pool's hybrid order and rerank
    windows from the bottom up; each window's best `window - step` documents move on into
    the next, overlapping window, so strong documents bubble to the top in one sweep
    (RankGPT). Ids the model drops keep their relative order at the end of their window.
    """

    name = "llm-listwise"
    answer_free = True

    def __init__(self, backend, doc_max_chars: int, window: int = 20, step: int = 10, model_id: str | None = None):
        if not 0 < step <= window:
            raise ValueError("need 0 < step <= window")
        self.backend, self.doc_max_chars, self.window, self.step = backend, doc_max_chars, window, step
        self.model_id = model_id or model_id_of(backend)

    def identity(self) -> dict:
        return {"name": self.name, "model": self.model_id, "doc_max_chars": self.doc_max_chars,
                "window": self.window, "step": self.step}

    def rank(self, query: str, doc_ids: list[str], texts: list[str]) -> list[str]:
        order = list(range(len(doc_ids)))
        for start in window_starts(len(order), self.window, self.step):
            span = order[start:start + self.window]
            messages = prompts.listwise_messages(query, [texts[i] for i in span], self.doc_max_chars)
            reply = self.backend.generate([messages], max_new_tokens=6 * len(span) + 16)[0]  # "[12] > " ~ 6 tokens
            order[start:start + len(span)] = [span[k] for k in parse_permutation(reply, len(span))]
        return [doc_ids[i] for i in order]


def teacher_model_name(preset) -> str:
    return preset.teacher_model or preset.model


def teacher_backend(preset):
    """The chat backend of the preset's "llm" teachers: `teacher_endpoint` if set, else a local
    Hugging Face model (`teacher_model`, default the student's: embedded, folder or hub id; 4-bit optional)."""
    if preset.teacher_endpoint:
        return EndpointBackend(preset.teacher_endpoint, teacher_model_name(preset))
    from .models import load_model, load_tokenizer
    from .rerank import LLM

    name = teacher_model_name(preset)
    tokenizer = load_tokenizer(name, preset.trust_remote_code)
    model = load_model(name, preset.quantize_4bit, preset.trust_remote_code)
    return LLM(model, tokenizer, replace(preset, model=name), progress=False)  # preset.model names it in cache keys


# --- offline teachers ---------------------------------------------------------------------------

class DenseTeacher:
    """Cosine similarity of MiniLM embeddings (a retrieval.Dense, or anything with the same
    normalised ``encode``); pool documents already in its index reuse their stored vectors."""

    name = "minilm"
    answer_free = True

    def __init__(self, dense, model_id: str = "all-MiniLM-L6-v2"):
        self.dense, self.model_id = dense, model_id
        self.row = {doc_id: i for i, doc_id in enumerate(getattr(dense, "doc_ids", []))}

    def identity(self) -> dict:
        return {"name": self.name, "model": self.model_id}

    def rank(self, query: str, doc_ids: list[str], texts: list[str]) -> list[str]:
        query_vector = self.dense.encode([query])[0]
        return rank_by_scores(doc_ids, (self._vectors(doc_ids, texts) @ query_vector).tolist())

    def _vectors(self, doc_ids: list[str], texts: list[str]):
        if all(doc_id in self.row for doc_id in doc_ids):
            return self.dense.matrix[[self.row[doc_id] for doc_id in doc_ids]]
        return self.dense.encode(texts)


class BM25Teacher:
    """BM25 scores from the whole collection's index (pool-only IDF would be too noisy)."""

    name = "bm25"
    answer_free = True

    def __init__(self, bm25, model_id: str = "bm25s"):
        self.bm25, self.model_id = bm25, model_id

    def identity(self) -> dict:
        return {"name": self.name, "model": self.model_id, "stopwords": self.bm25.stopwords}

    def rank(self, query: str, doc_ids: list[str], texts: list[str]) -> list[str]:
        scores = self.bm25.search({"query": query}, k=len(self.bm25.doc_ids))["query"]
        return rank_by_scores(doc_ids, [scores.get(doc_id, 0.0) for doc_id in doc_ids])


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
        "llm": lambda: (PointwiseLLMTeacher(_required(backend, "backend"), preset.doc_max_chars) if role == "pointwise"
                        else ListwiseLLMTeacher(_required(backend, "backend"), preset.doc_max_chars)),
        "minilm": lambda: DenseTeacher(_required(dense, "dense")),
        "bm25": lambda: BM25Teacher(_required(bm25, "bm25")),
        "human": lambda: HumanTeacher(_required(collection, "collection")),
    }
    if kind not in builders:
        raise KeyError(f"unknown teacher {kind!r}; choose one of {TEACHER_KINDS}")
    return builders[kind]()


def _required(value, what: str):
    if value is None:
        raise ValueError(f"this teacher needs a {what}")
    return value


# --- disk cache -------------------------------------------------------------------------------------

def cache_key(identity: dict, query: str, doc_ids: list[str], texts: list[str]) -> str:
    payload = json.dumps([identity, query, doc_ids, texts, prompts.PROMPT_VERSION], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _checksum(ranking: list[str]) -> str:
    return hashlib.sha256(json.dumps(ranking, ensure_ascii=False).encode("utf-8")).hexdigest()


class CachedTeacher:
    """A teacher whose every ranking is kept as one JSON file under cache_dir()/teachers/.

    Files are written to a temporary name and renamed (atomic), and each holds its key and a
    checksum of the ranking; a file that fails to parse, names another key, fails its
    checksum or is not a permutation of the pool is recomputed and overwritten, not trusted.
    """

    def __init__(self, teacher: Teacher, root: Path | None = None):
        self.teacher = teacher
        self.root = Path(root) if root else cache_dir() / "teachers"
        self.hits = self.misses = self.recovered = 0

    @property
    def name(self) -> str:
        return self.teacher.name

    @property
    def answer_free(self) -> bool:
        return self.teacher.answer_free

    def identity(self) -> dict:
        return self.teacher.identity()

    def rank(self, query: str, doc_ids: list[str], texts: list[str]) -> list[str]:
        key = cache_key(self.identity(), query, doc_ids, texts)
        path = self.root / key[:2] / f"{key}.json"
        cached = self._read(path, key, doc_ids)
        if cached is not None:
            self.hits += 1
            return cached
        ranking = self.teacher.rank(query, doc_ids, texts)
        self.misses += 1
        _write_atomic(path, {"key": key, "teacher": self.name, "ranking": ranking, "checksum": _checksum(ranking)})
        return ranking

    def _read(self, path: Path, key: str, doc_ids: list[str]) -> list[str] | None:
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            ranking = entry["ranking"]
            valid = (entry["key"] == key and entry["checksum"] == _checksum(ranking)
                     and sorted(ranking) == sorted(doc_ids))
        except (ValueError, KeyError, TypeError):
            valid = False
        if valid:
            return ranking
        self.recovered += 1
        log.warning("teacher cache entry %s is damaged; recomputing it", path.name)
        return None


def _write_atomic(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(entry, handle, ensure_ascii=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


# --- OpenAI-compatible endpoint ---------------------------------------------------------------------

class EndpointError(RuntimeError):
    """The endpoint refused the request, or failed `max_retries` + 1 times in a row."""


class _Transient(Exception):
    """A failure worth retrying: timeout, connection error, HTTP 429/5xx, malformed reply."""


class EndpointBackend:
    """A chat backend for any OpenAI-compatible server (vLLM, llama.cpp, Ollama, hosted APIs).

    POSTs to ``<url>/chat/completions`` with urllib (greedy: temperature 0). The API key is
    read from the environment variable `api_key_env` at each request and never kept on the
    object, so it cannot appear in its repr, a log line, an error message or a cache file.
    Transient failures are retried `max_retries` times with exponential backoff, then
    reported as `EndpointError`; other HTTP errors (401, 404, ...) are reported at once.
    """

    def __init__(self, url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 max_retries: int = 3, backoff: float = 1.0, workers: int = 4, max_tokens: int = 256):
        self.url, self.model, self.api_key_env = url.rstrip("/"), model, api_key_env
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.workers, self.max_tokens = workers, max_tokens
        self.requests = 0  # HTTP requests sent, retries included

    def __repr__(self) -> str:
        return f"EndpointBackend(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    @property
    def model_id(self) -> str:
        return self.model

    def generate(self, prompts_: list[list[dict]], max_new_tokens: int | None = None) -> list[str]:
        """Replies in prompt order; up to `workers` requests in flight (the server batches them)."""
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(lambda messages: self.complete(messages, max_new_tokens or self.max_tokens), prompts_))

    def complete(self, messages: list[dict], max_tokens: int) -> str:
        for attempt in range(self.max_retries + 1):
            try:
                return self._post(messages, max_tokens)
            except _Transient as err:
                failure = self._scrub(str(err))
                if attempt < self.max_retries:
                    log.warning("%s: attempt %d failed (%s); retrying", self.url, attempt + 1, failure)
                    time.sleep(self.backoff * 2 ** attempt)
        raise EndpointError(f"{self.url}: gave up after {self.max_retries + 1} attempts; last error: {failure}")

    def _post(self, messages: list[dict], max_tokens: int) -> str:
        body = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": max_tokens}
        request = urllib.request.Request(f"{self.url}/chat/completions", data=json.dumps(body).encode("utf-8"),
                                         headers=self._headers(), method="POST")
        self.requests += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:200].decode("utf-8", "replace")
            if err.code == 429 or err.code >= 500:
                raise _Transient(f"HTTP {err.code}: {detail}") from None
            raise EndpointError(self._scrub(f"{self.url}: HTTP {err.code}: {detail}")) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, HTTPException) as err:
            raise _Transient(f"{type(err).__name__}: {getattr(err, 'reason', err)}") from None
        return _reply_text(raw)

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:  # local servers usually need none
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _scrub(self, text: str) -> str:
        """Hide the key should a server echo it back in an error."""
        key = os.environ.get(self.api_key_env)
        return text.replace(key, "***") if key else text


def _reply_text(raw: bytes) -> str:
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise _Transient(f"malformed reply: {raw[:80]!r}") from None
    if not isinstance(content, str):
        raise _Transient("malformed reply: message content is not text")
    return content
