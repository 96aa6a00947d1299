"""Evaluation through ir-measures: nDCG@10, Recall@k, MRR@10, MAP on judged queries."""
from __future__ import annotations

import json
from pathlib import Path

import ir_measures
from ir_measures import AP, RR, R, nDCG

from .collection import Collection
from .runtime import write_atomic

DEFAULT_MEASURES = (nDCG @ 10, R @ 10, RR @ 10, AP)


def judged_qrels(collection: Collection, qids=None) -> dict[str, dict[str, int]]:
    """Qrels of the queries that have a relevant document (optionally only `qids`)."""
    keep = set(collection.judged_queries()) if qids is None else set(qids) & set(collection.judged_queries())
    return {q: rels for q, rels in collection.qrels.items() if q in keep}


def remove_excluded(run, collection: Collection):
    """Drop each query's excluded ids (BRIGHT's excluded_ids) from a run."""
    return {q: {d: s for d, s in docs.items() if d not in collection.excluded.get(q, ())} for q, docs in run.items()}


def evaluate(run, collection: Collection, qids=None, measures=DEFAULT_MEASURES) -> dict[str, float]:
    """Mean of each measure over the judged queries in `qids` (all judged queries by default).

    A judged query missing from the run counts as 0, as trec_eval's -c flag would.
    """
    qrels = judged_qrels(collection, qids)
    run = remove_excluded({q: docs for q, docs in run.items() if q in qrels}, collection)
    per_query = per_query_scores(run, qrels, measures)
    return {str(m): sum(per_query[str(m)].get(q, 0.0) for q in qrels) / max(len(qrels), 1) for m in measures}


def per_query_scores(run, qrels, measures=DEFAULT_MEASURES) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {str(m): {} for m in measures}
    for metric in ir_measures.iter_calc(list(measures), qrels, run):
        out[str(metric.measure)][metric.query_id] = metric.value
    return out


def results_table(runs: dict, collection: Collection, qids=None, measures=DEFAULT_MEASURES):
    """A pandas DataFrame, one row per named run, one column per measure."""
    import pandas as pd

    rows = {name: evaluate(run, collection, qids, measures) for name, run in runs.items()}
    return pd.DataFrame(rows).T.round(4)


def save_results(run_dir, section: str, values: dict) -> dict:
    """Merge `values` under `section` into run_dir/results.json (what `make demo` summarises)."""
    path = Path(run_dir) / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[section] = {k: (float(v) if hasattr(v, "__float__") else v) for k, v in values.items()}
    write_atomic(path, json.dumps(results, indent=2))
    return results
