"""Loading test collections: the classic local formats (SMART, TREC, BEIR) and, through
`hubdata`, BRIGHT and R2MED; `load_collection` picks the loader from a one-word spec.

Every loader reports what it skipped (``Collection.skipped``) and raises `DataError`
naming the file and line for anything it cannot make sense of.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from . import fetch, hubdata
# The types live in `collection` (so `hubdata` needs no import of this module); notebooks and
# callers find them here too, next to the loaders that return them.
from .collection import Collection, DataError, Split, preset_split, reported, split_queries, unique_id  # noqa: F401


# --- dispatch ------------------------------------------------------------------------------

def load_collection(spec: str, root: Path | str | None = None) -> Collection:
    """Load a collection by name: cranfield, cisi, adi, vaswani, beir:<folder>,
    bright:<domain>[:long][@<folder>], r2med:<Task>[@<folder>].

    `root` is the folder holding the classic collections. For bright/r2med, ``@<folder>`` (or
    `root`) names a local folder laid out like the hub repository; without one the hub is used.
    The ``@`` form fits in a preset's `collection` field, so notebooks, synthesis and the
    benchmark all read the same local copy."""
    kind, _, arg = spec.partition(":")
    if kind == "beir":
        return load_beir(Path(arg))
    if kind in ("bright", "r2med"):
        arg, _, folder = arg.partition("@")
        source = folder or (str(root) if root is not None else None)
        local = {} if source is None else {"source": source}
        return hubdata.load_bright(arg, **local) if kind == "bright" else hubdata.load_r2med(arg, **local)
    if kind in fetch.beir_sets():  # scifact, nfcorpus: BEIR folders that `fetch` writes under data/
        return load_beir(fetch.locate(kind, root, load_beir))
    if kind not in LOCAL:
        raise KeyError(f"unknown collection {spec!r}; choose from {sorted(LOCAL)} or beir:/bright:/r2med:")
    return LOCAL[kind](fetch.locate(kind, root, LOCAL[kind]))  # fetched first when missing and online


# --- SMART format (Cranfield, CISI, ADI, and others with more field letters) ----------------

_FIELD = re.compile(r"^\.([A-Z])(?:\s+(.*))?$")


def read_smart(path: Path) -> list[tuple[str, dict[str, str], int]]:
    """Records of a SMART file as (id, {field letter: text}, line number of its .I)."""
    records, fields, current = [], {}, None
    for number, line in enumerate(_read_lines(path), start=1):
        match = _FIELD.match(line.rstrip("\n"))
        if match and match.group(1) == "I":
            if not (match.group(2) or "").strip():
                raise DataError(path, number, ".I without an id")
            fields = {}
            records.append((match.group(2).strip(), fields, number))
            current = None
        elif match:
            if not records:
                raise DataError(path, number, f"field .{match.group(1)} before the first .I record")
            current = match.group(1)  # unknown letters are collected too, and simply not used
            fields[current] = (match.group(2) or "")
        elif current is not None:
            fields[current] += " " + line.strip()
    return records


def _smart_docs(path: Path, skipped: list[str]) -> dict[str, str]:
    docs = {}
    for doc_id, fields, line in read_smart(path):
        if doc_id in docs:
            raise DataError(path, line, f"duplicate document id {doc_id}")
        text = _title_and_text(fields.get("T", ""), fields.get("W", ""))
        if not text:
            skipped.append(f"{path}:{line}: document {doc_id} has no title or text")
            continue
        docs[doc_id] = text
    return docs


def _title_and_text(title: str, text: str) -> str:
    """Title + text, but the title only once: Cranfield's text repeats it as its first line."""
    title, text = _clean(title), _clean(text)
    return text if title and text.startswith(title) else _clean(f"{title} {text}")


def _smart_queries(path: Path) -> tuple[dict[str, str], list[str]]:
    queries, order = {}, []
    for qid, fields, line in read_smart(path):
        if qid in queries:
            raise DataError(path, line, f"duplicate query id {qid}")
        text = _clean(fields.get("W", ""))
        if not text:
            raise DataError(path, line, f"query {qid} has no .W text")
        queries[qid] = text
        order.append(qid)
    return queries, order


def load_cranfield(folder: Path) -> Collection:
    """Cranfield: cranqrel numbers queries 1..225 by position in cran.qry, whose own ids
    have gaps; codes 1 (complete answer) .. 4 (minimum interest), -1 (no interest)."""
    skipped: list[str] = []
    docs = _smart_docs(folder / "cran.all.1400", skipped)
    raw_queries, order = _smart_queries(folder / "cran.qry")
    queries = {str(i): raw_queries[qid] for i, qid in enumerate(order, start=1)}
    qrels = _read_qrels(folder / "cranqrel", queries, docs, skipped, columns=(0, 1, 2), gain=_cranfield_gain)
    return Collection("cranfield", docs, queries, qrels, skipped=reported(skipped))


def _cranfield_gain(code: str) -> int:
    value = int(code)
    if value == -1:
        return 0
    if 1 <= value <= 4:
        return 5 - value
    raise ValueError(f"relevance code {code} is not one of -1, 1, 2, 3, 4")


def _smart_binary(name: str, docs_file: str, queries_file: str, qrels_file: str):
    def load(folder: Path) -> Collection:
        skipped: list[str] = []
        docs = _smart_docs(folder / docs_file, skipped)
        queries, _ = _smart_queries(folder / queries_file)
        qrels = _read_qrels(folder / qrels_file, queries, docs, skipped, columns=(0, 1, None), gain=lambda _: 1)
        return Collection(name, docs, queries, qrels, skipped=reported(skipped))
    load.__doc__ = f"{name.upper()}: SMART files, every listed judgment is relevant (gain 1)."
    return load


# --- TREC format (Vaswani) --------------------------------------------------------------------

def read_trec_sgml(path: Path, record: str, id_tag: str) -> list[tuple[str, str, int]]:
    """(id, text, line) for each <record> ... </record> block, tags other than the id stripped."""
    text = "".join(_read_lines(path))
    blocks = re.finditer(rf"<{record}>(.*?)</{record}>", text, flags=re.S | re.I)
    out, line, last = [], 1, 0
    for block in blocks:
        line, last = line + text.count("\n", last, block.start()), block.start()
        found = re.search(rf"<{id_tag}>\s*(.*?)\s*(?:</{id_tag}>|\n)", block.group(1), flags=re.I)
        if not found or not found.group(1):
            raise DataError(path, line, f"<{record}> without <{id_tag}>")
        body = block.group(1)[found.end():]
        out.append((found.group(1), _clean(re.sub(r"<[^>]+>", " ", body)), line))
    return out


def load_vaswani(folder: Path) -> Collection:
    skipped: list[str] = []
    docs_path, query_path = folder / "corpus" / "doc-text.trec", folder / "query-text.trec"
    docs = _unique(read_trec_sgml(docs_path, "DOC", "DOCNO"), docs_path, "document", skipped)
    queries = _unique(read_trec_sgml(query_path, "TOP", "NUM"), query_path, "query", skipped)
    qrels = _read_qrels(folder / "qrels", queries, docs, skipped, columns=(0, 2, 3), gain=int)
    return Collection("vaswani", docs, queries, qrels, skipped=reported(skipped))


def _unique(rows, path, what, skipped) -> dict[str, str]:
    out = {}
    for item_id, text, line in rows:
        if item_id in out:
            raise DataError(path, line, f"duplicate {what} id {item_id}")
        if not text:
            skipped.append(f"{path}:{line}: {what} {item_id} is empty")
            continue
        out[item_id] = text
    return out


# --- BEIR format (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) -----------------------------

def load_beir(folder: Path, qrels_split: str = "test") -> Collection:
    skipped: list[str] = []
    docs = {}
    for line, row in _read_jsonl(folder / "corpus.jsonl", ("_id", "text")):
        docs[unique_id(docs, row["_id"], folder / "corpus.jsonl", line)] = _clean(f"{row.get('title') or ''} {row['text']}")
    queries = {}
    for line, row in _read_jsonl(folder / "queries.jsonl", ("_id", "text")):
        queries[unique_id(queries, row["_id"], folder / "queries.jsonl", line)] = _clean(row["text"])
    qrels = _read_qrels(folder / "qrels" / f"{qrels_split}.tsv", queries, docs, skipped,
                        columns=(0, 1, 2), gain=lambda s: int(float(s)), header=True)
    return Collection(f"beir:{folder.name}", docs, queries, qrels, skipped=reported(skipped))


def _read_jsonl(path: Path, required: tuple[str, ...]):
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(path, number, f"not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise DataError(path, number, "not a JSON object")
        # null counts as missing: str(None) would otherwise index the word "None"
        missing = [key for key in required if row.get(key) is None]
        if missing:
            raise DataError(path, number, f"missing field(s) {missing}")
        if "text" in required and not str(row["text"]).strip():
            raise DataError(path, number, "empty text")
        yield number, row


# --- shared helpers -------------------------------------------------------------------------

def _read_qrels(path, queries, docs, skipped, columns, gain, header=False) -> dict[str, dict[str, int]]:
    """Read whitespace/tab separated judgments; `columns` = (query, doc, grade or None)."""
    qrels: dict[str, dict[str, int]] = {}
    q_col, d_col, g_col = columns
    for number, line in enumerate(_read_lines(path), start=1):
        parts = line.split()
        if not parts or (header and number == 1):
            continue
        try:
            qid, doc_id = parts[q_col], parts[d_col]
            grade = gain(parts[g_col] if g_col is not None else "")
        except (IndexError, ValueError) as err:
            raise DataError(path, number, f"cannot read judgment {line.strip()!r} ({err})") from None
        if qid not in queries:
            raise DataError(path, number, f"judgment names unknown query {qid}")
        if doc_id not in docs:
            if any(f"document {doc_id} " in s for s in skipped):
                skipped.append(f"{path}:{number}: judgment for skipped document {doc_id}")
                continue
            raise DataError(path, number, f"judgment names unknown document {doc_id}")
        qrels.setdefault(qid, {})[doc_id] = grade
    return qrels


def _read_lines(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.readlines()
    except OSError as err:
        raise DataError(path, None, f"cannot read file ({err.strerror})") from None


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


LOCAL = {
    "cranfield": load_cranfield,
    "cisi": _smart_binary("cisi", "CISI.ALL", "CISI.QRY", "CISI.REL"),
    "adi": _smart_binary("adi", "ADI.ALL", "ADI.QRY", "ADI.REL"),
    "vaswani": load_vaswani,
}


if __name__ == "__main__":  # `python -m grouprank_mini.data fetch NAME [...]` (see `fetch.main`)
    fetch.main(None, lambda name: LOCAL.get(name, load_beir))
