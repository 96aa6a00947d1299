"""Loading test collections: the classic local formats (SMART, TREC, BEIR) and, through
`hubdata`, BRIGHT and R2MED; `load_collection` picks the loader from a one-word spec.

Every loader reports what it skipped (``Collection.skipped``) and raises `DataError` naming
the damaged file and its line for anything it cannot make sense of. Files are read as strict
UTF-8 (a byte-order mark is dropped); a file without documents or queries is an error, not an
empty collection; judgments follow `collection.Judgments` (integer grades, negative grades read
as 0 and repeated pairs keeping the later grade, both announced).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from urllib.parse import parse_qsl

from . import fetch, hubdata
# The types live in `collection` (so `hubdata` needs no import of this module); notebooks and
# callers find them here too, next to the loaders that return them.
from .collection import (Collection, DataError, Items, Judgments, Split, preset_split, read_jsonl,  # noqa: F401
                         read_lines, read_text, reported, split_queries, unique_id, whole_grade)


# --- dispatch ------------------------------------------------------------------------------

def load_collection(spec: str, root: Path | str | None = None) -> Collection:
    """Load a collection by its spec:

    - ``cranfield``, ``cisi``, ``adi``, ``vaswani``: the classic collections, read from
      `root` (default `runtime.data_dir()`) / <name>; the first three are `SMART_PRESETS`;
    - ``smart:<folder>[?<option>=<value>&...]``: any SMART collection, the options being the
      fields of `SmartFormat`, e.g.
      ``smart:/data/med?docs=MED.ALL&queries=MED.QRY&qrels=MED.REL&columns=q0dg&ids=int``;
    - ``beir:<folder>``: a BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv);
    - ``bright:<domain>[:long][@<folder>]``, ``r2med:<Task>[@<folder>]``: from the hub, or from a
      local folder laid out like the hub repository, named by ``@<folder>`` or `root` (`hubdata`).

    Every spec fits in a preset's `collection` field, so notebooks, synthesis and the benchmark
    all read the same data."""
    kind, _, arg = spec.partition(":")
    if kind == "beir":
        return load_beir(Path(_named(arg, "beir:<folder>")))
    if kind == "smart":
        return load_smart(*parse_smart_spec(arg))
    if kind in ("bright", "r2med"):
        arg, at, folder = arg.partition("@")
        local = Path(_named(folder, f"{kind}:{arg}@<folder>")) if at else (None if root is None else Path(root))
        options = {} if local is None else {"source": local}
        return hubdata.load_bright(arg, **options) if kind == "bright" else hubdata.load_r2med(arg, **options)
    if kind in fetch.beir_sets():  # scifact, nfcorpus: BEIR folders that `fetch` writes under data/
        return load_beir(fetch.locate(kind, root, load_beir))
    if kind not in LOCAL:
        raise KeyError(f"unknown collection {spec!r}; choose from {sorted(LOCAL)} or beir:/smart:/bright:/r2med:")
    return LOCAL[kind](fetch.locate(kind, root, LOCAL[kind]))  # fetched first when missing and online


def _named(folder: str, form: str) -> str:
    # An empty folder would be Path(""), the current directory: never what was meant.
    if not folder.strip():
        raise ValueError(f"{form}: the folder is missing")
    return folder


def _existing_folder(folder: Path) -> Path:
    if not folder.is_dir():
        raise DataError(folder, None, "is a file, not a folder" if folder.exists() else "no such folder")
    return folder


# --- SMART format (Cranfield, CISI, ADI, and others with more field letters) ----------------

@dataclass(frozen=True)
class SmartFormat:
    """How one SMART collection is written: its three files and the layout of its judgments.

    - `docs`, `queries`, `qrels`: file names in the collection's folder. Records start at
      ``.I <id>``; documents index the .T title and .W text, queries their .W text; other field
      letters are skipped. A last query record without text is left out (an end marker).
    - `columns`: one character per qrels column: ``q`` query id, ``d`` document id, ``g`` grade,
      anything else (``0``, ``-``) a column read past. ``qd`` (default) reads ``qid docid ...``
      with every listed pair relevant (gain 1); ``qdg`` reads ``qid docid grade``; ``q0dg``
      TREC's ``qid 0 docid grade``.
    - `ids`: ``text`` keeps ids as written; ``int`` reads every id, in all three files, as a
      whole number, so that zero-padded "007" and "7" are the same id.
    - `query_ids`: ``file`` (the query file's .I) or ``position`` (1, 2, ... in file order, as
      Cranfield's cranqrel numbers its queries).
    - `grades`: ``as-is`` (integers; see `collection.Judgments`) or ``cranfield`` (codes 1..4,
      1 best, become gains 4..1 and -1 "no interest" becomes 0).

    In a ``smart:`` spec the fields are options after a ``?``; without ``docs=``, ``queries=``
    or ``qrels=`` the folder's only file ending in .ALL, .QRY or .REL is taken.
    """

    docs: str
    queries: str
    qrels: str
    columns: str = "qd"
    ids: str = "text"
    query_ids: str = "file"
    grades: str = "as-is"

    def __post_init__(self):
        choices = {"ids": ("text", "int"), "query_ids": ("file", "position"), "grades": ("as-is", "cranfield")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"SMART option {name}={getattr(self, name)!r}: choose from {list(allowed)}")
        if sorted(c for c in self.columns if c in "qdg") not in (["d", "q"], ["d", "g", "q"]):
            raise ValueError(f"SMART option columns={self.columns!r} needs one q, one d and at most one g")
        if self.grades == "cranfield" and "g" not in self.columns:
            raise ValueError("SMART option grades=cranfield needs a g column")

    def normal_id(self, text: str) -> str:
        if self.ids == "text":
            return text
        if not (text.isascii() and text.isdigit()):
            raise ValueError(f"id {text!r} is not a whole number (ids=int)")
        return str(int(text))


SMART_PRESETS = {
    "cranfield": SmartFormat("cran.all.1400", "cran.qry", "cranqrel", columns="qdg", query_ids="position",
                             grades="cranfield"),
    "cisi": SmartFormat("CISI.ALL", "CISI.QRY", "CISI.REL"),
    "adi": SmartFormat("ADI.ALL", "ADI.QRY", "ADI.REL"),
}


def parse_smart_spec(arg: str) -> tuple[Path, SmartFormat]:
    """The folder and `SmartFormat` of the part of a spec after ``smart:``."""
    folder, _, query = arg.partition("?")
    folder = _existing_folder(Path(_named(folder, "smart:<folder>")))
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise ValueError(f"smart: options {query!r} should read name=value&name=value") from None
    known = [f.name for f in fields(SmartFormat)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown smart: option(s) {unknown}; choose from {known}")
    for name, suffix in (("docs", ".ALL"), ("queries", ".QRY"), ("qrels", ".REL")):
        if name not in options:
            options[name] = _only_file(folder, suffix, name)
    return folder, SmartFormat(**options)


def _only_file(folder: Path, suffix: str, option: str) -> str:
    found = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.upper().endswith(suffix))
    if len(found) != 1:
        raise ValueError(f"smart:{folder}: name the {option} file with {option}=<file name> "
                         f"(the folder has {len(found)} *{suffix} files {found[:5]}, not one)")
    return found[0]


def load_smart(folder: Path, fmt: SmartFormat, name: str | None = None) -> Collection:
    """A SMART collection in `folder`, read as `fmt` says; named ``smart:<folder name>`` unless `name`."""
    folder = _existing_folder(Path(folder))
    skipped: list[str] = []
    docs = _smart_docs(folder / fmt.docs, fmt, skipped)
    queries = _smart_queries(folder / fmt.queries, fmt, skipped)
    qrels = _read_qrels(folder / fmt.qrels, queries, docs, skipped, fmt.columns, _smart_gain(fmt), fmt.normal_id)
    return Collection(name or f"smart:{folder.name}", docs.texts, queries.texts, qrels, skipped=reported(skipped))


_FIELD = re.compile(r"^\.([A-Z])(?:\s+(.*))?$")


def read_smart(path: Path) -> list[tuple[str, dict[str, str], int]]:
    """Records of a SMART file as (id, {field letter: text}, line number of its .I)."""
    records, record, current = [], {}, None
    for number, line in enumerate(read_lines(path), start=1):
        match = _FIELD.match(line.rstrip("\n"))
        if match and match.group(1) == "I":
            if not (match.group(2) or "").strip():
                raise DataError(path, number, ".I without an id")
            record = {}
            records.append((match.group(2).strip(), record, number))
            current = None
        elif match:
            if not records:
                raise DataError(path, number, f"field .{match.group(1)} before the first .I record")
            current = match.group(1)  # unknown letters are collected too, and simply not used
            record[current] = (match.group(2) or "")
        elif current is not None:
            record[current] += " " + line.strip()
        elif not records and line.strip():
            raise DataError(path, number, "text before the first .I record: is this a SMART file?")
    return records


def _smart_docs(path: Path, fmt: SmartFormat, skipped: list[str]) -> Items:
    rows = [(_normal_id(fmt, doc_id, path, line), _title_and_text(record.get("T", ""), record.get("W", "")), line)
            for doc_id, record, line in read_smart(path)]
    return _items("document", path, rows, skipped)


def _title_and_text(title: str, text: str) -> str:
    """Title + text, but the title only once: Cranfield's text repeats it as its first line."""
    title, text = _clean(title), _clean(text)
    return text if title and text.startswith(title) else _clean(f"{title} {text}")


def _smart_queries(path: Path, fmt: SmartFormat, skipped: list[str]) -> Items:
    records = read_smart(path)
    # Only the last record may be empty (an end marker, left out by _items): an empty query
    # before it is damage, and with query_ids=position it would shift every later id.
    for qid, record, line in records[:-1]:
        if not _clean(record.get("W", "")):
            raise DataError(path, line, f"query {qid} has no .W text")
    by_position = fmt.query_ids == "position"
    rows = [(str(i) if by_position else _normal_id(fmt, qid, path, line), _clean(record.get("W", "")), line)
            for i, (qid, record, line) in enumerate(records, start=1)]
    return _items("query", path, rows, skipped)


def _normal_id(fmt: SmartFormat, item_id: str, path: Path, line: int) -> str:
    try:
        return fmt.normal_id(item_id)
    except ValueError as err:
        raise DataError(path, line, str(err)) from None


def _smart_gain(fmt: SmartFormat):
    if "g" not in fmt.columns:
        return lambda _: 1
    return _cranfield_gain if fmt.grades == "cranfield" else whole_grade


def _cranfield_gain(code: str) -> int:
    value = int(code)
    if value == -1:
        return 0
    if 1 <= value <= 4:
        return 5 - value
    raise ValueError(f"relevance code {code} is not one of -1, 1, 2, 3, 4")


# --- TREC format (Vaswani) --------------------------------------------------------------------

def read_trec_sgml(path: Path, record: str, id_tag: str) -> list[tuple[str, str, int]]:
    """(id, text, line) for each <record> ... </record> block, tags other than the id stripped.

    One pass over the record tags, so time is linear in the file. A record not closed before
    the next one opens, or before the end of the file (a truncated last record), is a DataError
    naming the line of its opening tag: nothing is dropped without a word."""
    text = read_text(path)
    out, line, last = [], 1, 0
    opened: tuple[int, int] | None = None  # (where the open record's body starts, its line)
    for tag in re.finditer(rf"<(/?){record}>", text, flags=re.I):
        line, last = line + text.count("\n", last, tag.start()), tag.start()
        closing = bool(tag.group(1))
        if closing and opened is None:
            raise DataError(path, line, f"</{record}> without an opening <{record}>")
        if not closing and opened is not None:
            raise DataError(path, opened[1], f"<{record}> is not closed before the next <{record}> at line {line}")
        if closing:
            out.append(_trec_record(path, text[opened[0]:tag.start()], record, id_tag, opened[1]))
        opened = None if closing else (tag.end(), line)
    if opened is not None:
        raise DataError(path, opened[1], f"<{record}> is never closed: is the file truncated?")
    return out


def _trec_record(path: Path, body: str, record: str, id_tag: str, line: int) -> tuple[str, str, int]:
    found = re.search(rf"<{id_tag}>\s*(.*?)\s*(?:</{id_tag}>|\n)", body, flags=re.I)
    if not found or not found.group(1):
        raise DataError(path, line, f"<{record}> without <{id_tag}>")
    return found.group(1), _clean(re.sub(r"<[^>]+>", " ", body[found.end():])), line


def load_vaswani(folder: Path) -> Collection:
    """Vaswani (NPL): TREC SGML documents and queries, qrels ``qid 0 docid 1``."""
    folder = _existing_folder(Path(folder))
    skipped: list[str] = []
    docs_path, query_path = folder / "corpus" / "doc-text.trec", folder / "query-text.trec"
    docs = _items("document", docs_path, read_trec_sgml(docs_path, "DOC", "DOCNO"), skipped)
    queries = _items("query", query_path, read_trec_sgml(query_path, "TOP", "NUM"), skipped)
    qrels = _read_qrels(folder / "qrels", queries, docs, skipped, "q0dg", whole_grade)
    return Collection("vaswani", docs.texts, queries.texts, qrels, skipped=reported(skipped))


# --- BEIR format (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) -----------------------------

def load_beir(folder: Path, qrels_split: str = "test") -> Collection:
    """A BEIR folder. Documents index title + text (either may be empty or missing; a document
    with neither is left out and noted); queries need a text; the qrels' header line
    (``query-id corpus-id score``) is recognised, not assumed, so a file without one keeps its first judgment."""
    folder = _existing_folder(Path(folder))
    skipped: list[str] = []
    corpus, query_file = folder / "corpus.jsonl", folder / "queries.jsonl"
    doc_rows = [(str(row["_id"]), _clean(f"{row.get('title') or ''} {row.get('text') or ''}"), line)
                for line, row in _jsonl_rows(corpus, ("_id",))]
    docs = _items("document", corpus, doc_rows, skipped)
    query_rows = []
    for line, row in _jsonl_rows(query_file, ("_id", "text")):
        if not str(row["text"]).strip():
            raise DataError(query_file, line, "empty text")
        query_rows.append((str(row["_id"]), _clean(str(row["text"])), line))
    queries = _items("query", query_file, query_rows, skipped)
    qrels_file = folder / "qrels" / f"{qrels_split}.tsv"
    qrels = _read_qrels(qrels_file, queries, docs, skipped, "qdg", whole_grade, header=True)
    return Collection(f"beir:{folder.name}", docs.texts, queries.texts, qrels, skipped=reported(skipped))


def _jsonl_rows(path: Path, required: tuple[str, ...]):
    """`read_jsonl`'s rows, each with the `required` fields present."""
    for number, row in read_jsonl(path):
        # null counts as missing: str(None) would otherwise index the word "None"
        missing = [key for key in required if row.get(key) is None]
        if missing:
            raise DataError(path, number, f"missing field(s) {missing}")
        yield number, row


# --- shared helpers -------------------------------------------------------------------------

EMPTY = {"document": "title or text", "query": "text"}  # what an item left out lacks


def _items(kind: str, path: Path, rows, skipped: list[str]) -> Items:
    """`Items` from (id, text, line) rows: a repeated id is a DataError, an empty text is left
    out (and noted), and a file with no text at all is a DataError naming that file."""
    items = Items(kind, path)
    for item_id, text, line in rows:
        if item_id in items.texts or item_id in items.left_out:
            raise DataError(path, line, f"duplicate {kind} id {item_id}")
        if text:
            items.texts[item_id] = text
        else:
            items.left_out.add(item_id)
            skipped.append(f"{path}:{line}: {kind} {item_id} has no {EMPTY[kind]}")
    if not items.texts:
        raise DataError(path, None, f"no {kind} with text: the file is empty or not in the expected format")
    return items


def _read_qrels(path: Path, queries: Items, docs: Items, skipped: list[str], columns: str, gain,
                normal=str, header: bool = False) -> dict[str, dict[str, int]]:
    """Whitespace-separated judgments, one per line, laid out as `columns` (see `SmartFormat`).
    `gain` turns the grade column's text into a gain, `normal` each id into the collection's
    form. With `header`, a first line that names no known query and has no numeric grade is a
    column header and is read past."""
    q_col, d_col = columns.index("q"), columns.index("d")
    g_col = columns.index("g") if "g" in columns else None
    judgments = Judgments(path)
    first = True
    for number, line in enumerate(read_lines(path), start=1):
        parts = line.split()
        if not parts:
            continue
        if first and header and _is_header(parts, q_col, g_col, queries):
            first = False
            continue
        first = False
        if len(parts) <= max(q_col, d_col, g_col or 0):
            raise DataError(path, number, f"judgment {line.strip()!r} has {len(parts)} column(s), "
                                          f"expected {len(columns)} ({columns})")
        try:
            qid, doc_id = normal(parts[q_col]), normal(parts[d_col])
            grade = gain(parts[g_col] if g_col is not None else "")
        except ValueError as err:
            raise DataError(path, number, f"cannot read judgment {line.strip()!r} ({err})") from None
        at = f"{path}:{number}"
        if queries.keeps(qid, at, skipped) and docs.keeps(doc_id, at, skipped):
            judgments.add(qid, doc_id, grade, at)
    queries.check_references()
    docs.check_references()
    return judgments.done()


def _is_header(parts: list[str], q_col: int, g_col: int | None, queries: Items) -> bool:
    if g_col is None or len(parts) <= max(q_col, g_col):
        return False
    try:
        float(parts[g_col])
        return False
    except ValueError:
        return parts[q_col] not in queries.texts and parts[q_col] not in queries.left_out


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# name -> loader of the folder holding that collection
LOCAL = {**{name: partial(load_smart, fmt=fmt, name=name) for name, fmt in SMART_PRESETS.items()},
         "vaswani": load_vaswani}


if __name__ == "__main__":  # `python -m grouprank_mini.data fetch NAME [...]` (see `fetch.main`)
    fetch.main(None, lambda name: LOCAL.get(name, load_beir))
