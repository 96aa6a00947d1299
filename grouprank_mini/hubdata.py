"""Reasoning-intensive benchmarks from the Hugging Face hub: BRIGHT and R2MED.

Both go through `datasets.load_dataset`, so `source` is either a hub id or a local folder
laid out like the hub repository (parquet/jsonl data files plus a README.md whose YAML
`configs:` maps config names to data files per split). The folder form is how to use these
benchmarks on a machine without internet: copy the repository there once.

Bad rows raise `DataError` naming the source, config, split and row number (counted from 1).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .collection import Collection, DataError, unique_id

BRIGHT_SOURCE = "xlangai/BRIGHT"
# BRIGHT writes excluded_ids = ["N/A"] for "nothing to exclude"; it is not a document id.
NO_EXCLUSION = "N/A"


class HubOfflineError(RuntimeError):
    """A hub id was asked for while the hub is switched off (the kit's default)."""


# --- BRIGHT ---------------------------------------------------------------------------------

def load_bright(spec: str, source: str = BRIGHT_SOURCE) -> Collection:
    """One BRIGHT domain: spec "<domain>" (documents, gold_ids) or "<domain>:long"
    (long_documents, gold_ids_long). Each query's excluded_ids go to `Collection.excluded`."""
    domain, _, variant = spec.partition(":")
    if not domain or variant not in ("", "long"):
        raise ValueError(f"BRIGHT spec {spec!r} should be '<domain>' or '<domain>:long'")
    long = variant == "long"
    docs_config = "long_documents" if long else "documents"
    docs = _texts_by_id(_load_split(source, docs_config, domain), _where(source, docs_config, domain), "content")
    queries, qrels, excluded = _bright_examples(
        _load_split(source, "examples", domain), _where(source, "examples", domain), docs,
        gold_field="gold_ids_long" if long else "gold_ids",
    )
    return Collection(f"bright:{spec}", docs, queries, qrels, excluded=excluded)


def _bright_examples(rows, where: str, docs: dict[str, str], gold_field: str):
    queries, qrels, excluded = {}, {}, {}
    for number, row in _checked_rows(rows, where, ("id", "query", "excluded_ids", gold_field)):
        qid = unique_id(queries, row["id"], f"{where}: row {number}")
        queries[qid] = _non_empty(row["query"], "query", where, number)
        gold = _id_list(row[gold_field], gold_field, where, number)
        unknown = [doc_id for doc_id in gold if doc_id not in docs]
        if unknown:
            raise _row_error(where, number, f"{gold_field} names unknown document(s) {unknown[:3]}")
        if gold:
            qrels[qid] = {doc_id: 1 for doc_id in gold}
        skip = set(_id_list(row["excluded_ids"], "excluded_ids", where, number)) - {NO_EXCLUSION}
        if skip:
            excluded[qid] = skip
    return queries, qrels, excluded


# --- R2MED ----------------------------------------------------------------------------------

def load_r2med(task: str, source: str | None = None) -> Collection:
    """One R2MED task (Biology, Bioinformatics, Medical-Sciences, MedXpertQA-Exam, MedQA-Diag,
    PMC-Treatment, PMC-Clinical, IIYi-Clinical) from `R2MED/<task>` or a folder shaped like it.
    Gains come from the `qrels` config's score; the query rows' own doc lists are not used."""
    source = source or f"R2MED/{task}"
    queries = _texts_by_id(*_load_only_split(source, "query"), "text")
    docs = _texts_by_id(*_load_only_split(source, "corpus"), "text")
    qrels = _r2med_qrels(*_load_only_split(source, "qrels"), queries, docs)
    return Collection(f"r2med:{task}", docs, queries, qrels)


def _r2med_qrels(rows, where: str, queries: dict, docs: dict) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for number, row in _checked_rows(rows, where, ("q_id", "p_id", "score")):
        qid, doc_id = str(row["q_id"]), str(row["p_id"])
        if qid not in queries:
            raise _row_error(where, number, f"judgment names unknown query {qid!r}")
        if doc_id not in docs:
            raise _row_error(where, number, f"judgment names unknown document {doc_id!r}")
        try:
            gain = int(float(row["score"]))
        except (TypeError, ValueError):
            raise _row_error(where, number, f"score {row['score']!r} is not a number") from None
        qrels.setdefault(qid, {})[doc_id] = gain
    return qrels


def _load_only_split(source: str, config: str):
    """(rows, where) of an R2MED config. The hub names each config's single split after the
    config (query/corpus/qrels); a copy that used another name is accepted if it has one split."""
    splits = _load_split(source, config, split=None)
    if config in splits:
        return splits[config], _where(source, config, config)
    if len(splits) == 1:
        name = next(iter(splits))
        return splits[name], _where(source, config, name)
    found = sorted(splits)
    raise DataError(_where(source, config, None), None, f"expected split {config!r} or a single split, found {found}")


# --- loading through `datasets` ---------------------------------------------------------------

def _load_split(source: str, config: str, split: str | None):
    """`datasets.load_dataset(source, config, split=split)`, its failures told in our terms."""
    import datasets

    where = _where(source, config, split)
    local = Path(source).expanduser().is_dir()
    options = {"cache_dir": _local_cache_dir(Path(source).expanduser())} if local else {}
    try:
        return datasets.load_dataset(source, config, split=split, **options)
    except (ConnectionError, FileNotFoundError) as err:
        if local:  # a data file the folder's README names is missing
            raise DataError(where, None, f"cannot read ({err})") from err
        # Offline, datasets still serves a hub dataset it cached earlier, so only a miss lands here.
        if not hub_offline():
            raise
        raise HubOfflineError(
            f"{source!r} is a hub dataset, the hub is switched off (HF_HUB_OFFLINE=1) and it is not in "
            "the local datasets cache. Set GROUPRANK_ONLINE=1 before starting Python or the notebook "
            "kernel (grouprank_mini switches the hub off at import unless it is set), or pass "
            "source=<a local folder laid out like the hub repository>."
        ) from err
    except (ValueError, datasets.exceptions.DatasetsError) as err:  # unknown config/split, unparsable file
        raise DataError(where, None, f"cannot load ({err})") from err


def _local_cache_dir(folder: Path) -> str:
    """A datasets cache folder of its own for this folder's current files.

    datasets 5 keys the Arrow cache of a local folder by its base name and README configs only,
    so two folders both called "Biology", or a copy whose files were edited, would be served
    each other's stale rows. Keying on the full path and every file's size and mtime avoids that."""
    import datasets

    files = sorted(path for path in folder.rglob("*") if path.is_file())
    stamp = [(str(path.relative_to(folder)), path.stat().st_size, path.stat().st_mtime_ns) for path in files]
    key = hashlib.sha256(json.dumps([str(folder.resolve()), stamp]).encode()).hexdigest()[:16]
    return str(Path(datasets.config.HF_DATASETS_CACHE) / "grouprank-local" / key)


def hub_offline() -> bool:
    """True when Hugging Face libraries are told to stay off the network."""
    flags = (os.environ.get(name, "").upper() for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(flag in {"1", "ON", "YES", "TRUE"} for flag in flags)


# --- row checks -----------------------------------------------------------------------------

def _where(source: str, config: str, split: str | None) -> str:
    return f"{source} config {config!r}" + (f" split {split!r}" if split else "")


def _row_error(where: str, number: int, message: str) -> DataError:
    return DataError(where, None, f"row {number}: {message}")


def _checked_rows(rows, where: str, required: tuple[str, ...]):
    """(row number from 1, row) for each row, every required field present and not null."""
    for number, row in enumerate(_plain_rows(rows), start=1):
        missing = [name for name in required if row.get(name) is None]
        if missing:
            raise _row_error(where, number, f"missing field(s) {missing}")
        yield number, row


def _plain_rows(dataset):
    """Rows of a `datasets.Dataset` as dicts, read in batches: ~20x faster than row-by-row
    access, which matters for BRIGHT's 100k-400k document splits."""
    for batch in dataset.iter(batch_size=4096):
        names = list(batch)
        yield from (dict(zip(names, values)) for values in zip(*batch.values()))


def _texts_by_id(rows, where: str, text_field: str) -> dict[str, str]:
    texts: dict[str, str] = {}
    for number, row in _checked_rows(rows, where, ("id", text_field)):
        item_id = unique_id(texts, row["id"], f"{where}: row {number}")
        texts[item_id] = _non_empty(row[text_field], text_field, where, number)
    return texts


def _non_empty(text, field_name: str, where: str, number: int) -> str:
    # Only trimmed, not whitespace-collapsed: code documents (stackoverflow, leetcode) need their lines.
    text = str(text).strip()
    if not text:
        raise _row_error(where, number, f"empty {field_name}")
    return text


def _id_list(value, field_name: str, where: str, number: int) -> list[str]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise _row_error(where, number, f"{field_name} should be a list of ids, got {value!r}")
    return [str(item) for item in value]
