"""Reasoning-intensive benchmarks from the Hugging Face hub: BRIGHT and R2MED.

`source` is a hub id (read through `datasets.load_dataset`) or a local folder laid out like
the hub repository: the data files (.parquet or .jsonl) plus a README.md whose YAML header has
the ``configs:`` block that maps each config to its data files per split, e.g.::

    ---
    configs:
    - config_name: documents
      data_files:
      - split: biology
        path: documents/biology-*.parquet
    ---

An R2MED folder may instead hold plain ``query.jsonl``, ``corpus.jsonl`` and ``qrels.jsonl``
(how R2MED samples are passed around), with no README. The folder form is how to use these
benchmarks without internet: copy the repository there once. A `Path` is always taken for a
folder; a string is a folder when one exists there or when it cannot be a hub id (``owner/name``).

A local folder's files are read here, not by `datasets`, so every error names the damaged
file and its line (jsonl) or row (parquet, counted from 1); a hub dataset's bad rows are named
by source, config, split and row.
"""
from __future__ import annotations

import os
from pathlib import Path

from .collection import Collection, DataError, Items, Judgments, read_jsonl, unique_id, whole_grade

BRIGHT_SOURCE = "xlangai/BRIGHT"
# BRIGHT writes excluded_ids = ["N/A"] for "nothing to exclude"; it is not a document id.
NO_EXCLUSION = "N/A"
# What a data file named by a local README.md may be.
DATA_SUFFIXES = (".jsonl", ".parquet")


class HubOfflineError(RuntimeError):
    """A hub id was asked for while the hub is switched off (the kit's default)."""


# --- BRIGHT ---------------------------------------------------------------------------------

def load_bright(spec: str, source: str | Path = BRIGHT_SOURCE) -> Collection:
    """One BRIGHT domain: spec "<domain>" (documents, gold_ids) or "<domain>:long"
    (long_documents, gold_ids_long). Each query's excluded_ids go to `Collection.excluded`,
    which every stage honours (see `_bright_examples`)."""
    domain, _, variant = spec.partition(":")
    if not domain or variant not in ("", "long"):
        raise ValueError(f"BRIGHT spec {spec!r} should be '<domain>' or '<domain>:long'")
    long = variant == "long"
    docs_config = "long_documents" if long else "documents"
    docs = _texts_by_id(*_load_split(source, docs_config, domain), "document", "content")
    queries, qrels, excluded = _bright_examples(*_load_split(source, "examples", domain), docs,
                                                gold_field="gold_ids_long" if long else "gold_ids")
    return Collection(f"bright:{spec}", docs, queries, qrels, excluded=excluded)


def _bright_examples(rows, where: str, docs: dict[str, str], gold_field: str):
    """Queries, qrels and excluded ids of BRIGHT's examples, checked as BRIGHT's own evaluation
    checks them. Its script asserts that no gold id is excluded, and it removes every excluded
    id from each query's scores over *all* documents, which fails on an id that names no
    document. Both are therefore errors here, not warnings: a copy that breaks either is
    damaged, and scoring it anyway would give numbers BRIGHT's script could not produce."""
    queries, qrels, excluded = {}, {}, {}
    for at, row in _checked_rows(rows, ("id", "query", "excluded_ids", gold_field)):
        qid = unique_id(queries, row["id"], at)
        queries[qid] = _non_empty(row["query"], "query", at)
        gold = _id_list(row[gold_field], gold_field, at)
        unknown = [doc_id for doc_id in gold if doc_id not in docs]
        if unknown:
            raise DataError(at, None, f"{gold_field} names unknown document(s) {unknown[:3]}")
        if gold:
            qrels[qid] = {doc_id: 1 for doc_id in gold}
        skip = set(_id_list(row["excluded_ids"], "excluded_ids", at)) - {NO_EXCLUSION}
        not_docs, gold_too = sorted(skip - docs.keys()), sorted(skip & set(gold))
        if not_docs:
            raise DataError(at, None, f"excluded_ids names unknown document(s) {not_docs[:3]}")
        if gold_too:
            raise DataError(at, None, f"excluded_ids and {gold_field} share {gold_too[:3]}: an excluded "
                                      "gold document could never be ranked")
        if skip:
            excluded[qid] = skip
    if not queries:
        raise DataError(where, None, "no queries")
    return queries, qrels, excluded


# --- R2MED ----------------------------------------------------------------------------------

def load_r2med(task: str, source: str | Path | None = None) -> Collection:
    """One R2MED task (Biology, Bioinformatics, Medical-Sciences, MedXpertQA-Exam, MedQA-Diag,
    PMC-Treatment, PMC-Clinical, IIYi-Clinical) from `R2MED/<task>` or a folder shaped like it.
    Gains come from the `qrels` config's score; the query rows' own doc lists are not used."""
    source = source or f"R2MED/{task}"
    queries = _items("query", *_load_only_split(source, "query"))
    docs = _items("document", *_load_only_split(source, "corpus"))
    qrels = _r2med_qrels(*_load_only_split(source, "qrels"), queries, docs)
    return Collection(f"r2med:{task}", docs.texts, queries.texts, qrels)


def _items(kind: str, rows, where: str) -> Items:
    return Items(kind, where, _texts_by_id(rows, where, kind, "text"))


def _r2med_qrels(rows, where: str, queries: Items, docs: Items) -> dict[str, dict[str, int]]:
    judgments, skipped = Judgments(where), []  # R2MED leaves nothing out, so `skipped` stays empty
    for at, row in _checked_rows(rows, ("q_id", "p_id", "score")):
        qid, doc_id = str(row["q_id"]), str(row["p_id"])
        try:
            gain = whole_grade(row["score"])
        except ValueError as err:
            raise DataError(at, None, f"score: {err}") from None
        if queries.keeps(qid, at, skipped) and docs.keeps(doc_id, at, skipped):
            judgments.add(qid, doc_id, gain, at)
    queries.check_references()
    docs.check_references()
    return judgments.done()


def _load_only_split(source, config: str):
    """(rows, where) of an R2MED config. The hub names each config's single split after the
    config (query/corpus/qrels); a copy that used another name is accepted if it has one split."""
    splits = _load_split(source, config, split=None)
    if config in splits:
        return splits[config]
    if len(splits) == 1:
        return next(iter(splits.values()))
    found = sorted(splits)
    raise DataError(_where(source, config, None), None, f"expected split {config!r} or a single split, found {found}")


# --- where the rows come from -----------------------------------------------------------------
# A split is read as (rows, where): `rows` yields (place, row) pairs, the place being what an
# error names ("<file>:<line>", "<file>: row <n>", "<hub id> config ... split ...: row <n>"),
# and `where` names the whole split (its file when it has one).

def _load_split(source, config: str, split: str | None):
    """(rows, where) of one split, or {split: (rows, where)} for every split when `split` is None."""
    folder = _local_folder(source)
    if folder is None:
        return _hub_split(str(source), config, split)
    splits = {name: (_file_rows(files), str(files[0]) if len(files) == 1 else _where(folder, config, name))
              for name, files in _local_splits(folder, config).items()}
    if split is None:
        return splits
    if split not in splits:
        raise DataError(folder / "README.md", None,
                        f"config {config!r} has no split {split!r} (it has {sorted(splits)})")
    return splits[split]


def _local_folder(source) -> Path | None:
    """The local folder `source` names, or None when it is a hub id."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise DataError(path, None, "is a file; a local source is a folder laid out like the hub repository "
                                    "(data files and a README.md with a configs: block)")
    text = str(source)
    if isinstance(source, Path) or os.path.isabs(text) or text.startswith((".", "~")) or text.count("/") != 1:
        raise DataError(path, None, "no such folder")
    return None


def _local_splits(folder: Path, config: str) -> dict[str, list[Path]]:
    """{split: data files} of `config`, resolved from README.md's configs: block the way the
    hub resolves it, or a plain <config>.jsonl when there is no such block."""
    from datasets.data_files import DataFilesDict, sanitize_patterns

    readme = folder / "README.md"
    configs = _readme_configs(readme)
    if configs is None:
        if (folder / f"{config}.jsonl").is_file():
            return {config: [folder / f"{config}.jsonl"]}
        raise DataError(readme, None, _missing_configs(readme, config))
    entry = next((c for c in configs if isinstance(c, dict) and c.get("config_name") == config), None)
    if entry is None or not entry.get("data_files"):
        names = [c.get("config_name") for c in configs if isinstance(c, dict)]
        raise DataError(readme, None,
                        f"its configs: block has no config_name {config!r} with data_files (it has {names})")
    try:
        files = DataFilesDict.from_patterns(sanitize_patterns(entry["data_files"]), base_path=str(folder))
    except (FileNotFoundError, ValueError) as err:
        raise DataError(readme, None, f"config {config!r}: {err}") from None
    return {name: [Path(path) for path in paths] for name, paths in files.items()}


def _readme_configs(readme: Path) -> list | None:
    """The configs: list of README.md's YAML header; None without a README, header or block."""
    import yaml
    from huggingface_hub.repocard import metadata_load

    if not readme.is_file():
        return None
    try:
        metadata = metadata_load(readme) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise DataError(readme, None, f"its YAML header cannot be read ({err})") from None
    configs = metadata.get("configs") if isinstance(metadata, dict) else None
    return configs if isinstance(configs, list) else None


def _missing_configs(readme: Path, config: str) -> str:
    state = "has no YAML configs: block" if readme.is_file() else "is missing"
    return (f"{state}, so the data files of config {config!r} are unknown (and there is no plain "
            f"{config}.jsonl beside it). The README must start with a header like\n"
            f"---\nconfigs:\n- config_name: {config}\n  data_files:\n  - split: <split>\n"
            "    path: <file or glob>\n---\n"
            "one entry per config, as the hub repository's own README.md has.")


def _file_rows(files: list[Path]):
    """(where, row) for every row of the files, in order; each file must hold at least one row."""
    for path in files:
        if path.suffix not in DATA_SUFFIXES:
            raise DataError(path, None,
                            f"cannot read {path.suffix or 'this'} files; data files must be {DATA_SUFFIXES}")
        rows = _jsonl_rows(path) if path.suffix == ".jsonl" else _parquet_rows(path)
        count = 0
        for count, item in enumerate(rows, start=1):
            yield item
        if not count:
            raise DataError(path, None, "holds no rows (an empty data file)")


def _jsonl_rows(path: Path):
    for line, row in read_jsonl(path):
        yield f"{path}:{line}", row


def _parquet_rows(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    number = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                number += 1
                yield f"{path}: row {number}", row
    except (OSError, pa.ArrowException) as err:
        after = f" after row {number}" if number else ""
        raise DataError(path, None, f"not a readable parquet file{after} ({err})") from None


def _hub_split(source: str, config: str, split: str | None):
    """`datasets.load_dataset(source, config, split=split)` as rows, its failures told in our terms."""
    import datasets

    where = _where(source, config, split)
    try:
        loaded = datasets.load_dataset(source, config, split=split)
    except (ConnectionError, FileNotFoundError) as err:
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
    if split is not None:
        return _dataset_rows(loaded, where), where
    return {name: (_dataset_rows(part, _where(source, config, name)), _where(source, config, name))
            for name, part in loaded.items()}


def _dataset_rows(dataset, where: str):
    """Rows of a `datasets.Dataset` as dicts, read in batches: ~20x faster than row-by-row
    access, which matters for BRIGHT's 100k-400k document splits."""
    number = 0
    for batch in dataset.iter(batch_size=4096):
        names = list(batch)
        for values in zip(*batch.values()):
            number += 1
            yield f"{where}: row {number}", dict(zip(names, values))


def hub_offline() -> bool:
    """True when Hugging Face libraries are told to stay off the network."""
    flags = (os.environ.get(name, "").upper() for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(flag in {"1", "ON", "YES", "TRUE"} for flag in flags)


# --- row checks -----------------------------------------------------------------------------

def _where(source, config: str, split: str | None) -> str:
    return f"{source} config {config!r}" + (f" split {split!r}" if split else "")


def _checked_rows(rows, required: tuple[str, ...]):
    """(where, row) for each row, every required field present and not null."""
    for at, row in rows:
        missing = [name for name in required if row.get(name) is None]
        if missing:
            raise DataError(at, None, f"missing field(s) {missing}")
        yield at, row


def _texts_by_id(rows, where: str, kind: str, text_field: str) -> dict[str, str]:
    texts: dict[str, str] = {}
    for at, row in _checked_rows(rows, ("id", text_field)):
        item_id = unique_id(texts, row["id"], at)
        texts[item_id] = _non_empty(row[text_field], text_field, at)
    if not texts:
        raise DataError(where, None, f"no {kind} rows")
    return texts


def _non_empty(text, field_name: str, at: str) -> str:
    # Only trimmed, not whitespace-collapsed: code documents (stackoverflow, leetcode) need their lines.
    text = str(text).strip()
    if not text:
        raise DataError(at, None, f"empty {field_name}")
    return text


def _id_list(value, field_name: str, at: str) -> list[str]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise DataError(at, None, f"{field_name} should be a list of ids, got {value!r}")
    return [str(item) for item in value]
