"""The one type every loader returns, `Collection`, its train/dev/test split, and the error and
warning conventions all loaders share: `DataError` names the file and line (or hub row) of bad
input; what a loader leaves out is listed in `Collection.skipped` and announced once; files are
read as strict UTF-8 (`read_text`); judgments are collected by `Judgments`."""
from __future__ import annotations

import io
import json
import math
import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .runtime import KitWarning


class DataError(ValueError):
    """Bad input in a collection file; the message names the file and line."""

    def __init__(self, path, line: int | None, message: str):
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {message}")


@dataclass
class Collection:
    name: str
    docs: dict[str, str]  # doc id -> text
    queries: dict[str, str]  # query id -> text
    qrels: dict[str, dict[str, int]]  # query id -> doc id -> graded gain (0 = judged not relevant)
    # query id -> ids it must never rank (BRIGHT's excluded_ids): every first-stage search, pool and
    # reranking drops them before cutting to top k, and evaluation drops them again
    excluded: dict[str, set[str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # what the loader left out, and why

    def judged_queries(self) -> list[str]:
        """Query ids with at least one relevant document, in collection order."""
        return [q for q in self.queries if any(g > 0 for g in self.qrels.get(q, {}).values())]

    def __repr__(self) -> str:
        return (f"Collection({self.name!r}: {len(self.docs)} docs, {len(self.queries)} queries, "
                f"{len(self.judged_queries())} judged, {len(self.skipped)} skipped)")


@dataclass(frozen=True)
class Split:
    train: list[str]
    dev: list[str]
    test: list[str]


def split_queries(collection: Collection, seed: int, test_fraction: float, dev_fraction: float) -> Split:
    """Deterministic train/dev/test split of the judged queries (same seed, same split)."""
    qids = sorted(collection.judged_queries(), key=_natural_key)
    random.Random(seed).shuffle(qids)
    n_test = round(len(qids) * test_fraction)
    n_dev = round(len(qids) * dev_fraction)
    return Split(train=qids[n_test + n_dev:], dev=qids[n_test:n_test + n_dev], test=qids[:n_test])


def preset_split(collection: Collection, preset) -> Split:
    """The preset's split; `eval_queries` keeps only the first N test queries (for fast presets)."""
    split = split_queries(collection, preset.split_seed, preset.test_fraction, preset.dev_fraction)
    test = split.test[:preset.eval_queries] if preset.eval_queries else split.test
    return Split(train=split.train, dev=split.dev, test=test)


def _natural_key(text: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


# --- what every loader does the same way ------------------------------------------------------------

def unique_id(seen: dict, item_id, where, line: int | None = None) -> str:
    """`item_id` as a string, or a DataError at `where` (a file and line, or a hub row) if `seen` has it."""
    item_id = str(item_id)
    if item_id in seen:
        raise DataError(where, line, f"duplicate id {item_id!r}")
    return item_id


def reported(skipped: list[str]) -> list[str]:
    """Announce what a loader left out (one warning for all of it) and hand the list on."""
    if skipped:
        warnings.warn(f"{len(skipped)} item(s) skipped while loading; first: {skipped[0]}", KitWarning, stacklevel=3)
    return skipped


def read_text(path) -> str:
    """A whole UTF-8 file as text, newlines read as `open` reads them ("\\r\\n" and "\\r" become "\\n").

    A byte-order mark is dropped (editors on Windows write one; left in, it would glue itself
    to the first id). Bytes that are not UTF-8 are a DataError naming the line: replacing them
    silently would index garbage and hide a file saved in another encoding."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise DataError(path, None, f"cannot read file ({err.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(path, line, f"byte {data[err.start]:#04x} is not UTF-8: convert the file to UTF-8 "
                                    "(e.g. from Latin-1)") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_lines(path) -> list[str]:
    """The lines of `read_text`, each with its "\\n" (the last one may lack it). Split at "\\n"
    only, as `open` does: str.splitlines would also split at form feeds and other separators."""
    return io.StringIO(read_text(path)).readlines()


def read_jsonl(path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON-lines file."""
    lines = read_lines(path)
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            cut = number == len(lines) and not line.endswith("\n")
            hint = "; the file ends inside this line: is it truncated?" if cut else ""
            raise DataError(path, number, f"not valid JSON ({err.msg}){hint}") from None
        if not isinstance(row, dict):
            raise DataError(path, number, "not a JSON object")
        rows.append((number, row))
    return rows


# --- judgments ----------------------------------------------------------------------------------------

MAX_GRADE = 2**31 - 1  # evaluators store grades as C ints


def whole_grade(value) -> int:
    """A relevance grade as an int: "2", "2.0" and 2.0 are 2.

    A fraction ("0.5"), inf, nan, a number past a C int or a non-number is a ValueError:
    trec_eval and ir-measures take integer grades, and rounding a fraction would guess at the
    author's scale (is 0.5 relevant?), so the file is better fixed where its meaning is known."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"grade {value!r} is not a number") from None
    if not math.isfinite(number) or abs(number) > MAX_GRADE:
        raise ValueError(f"grade {value!r} is not a finite number within ±{MAX_GRADE}")
    if not number.is_integer():
        raise ValueError(f"grade {value!r} is not a whole number (qrels grades are integers)")
    return int(number)


class Judgments:
    """The qrels of one file or hub config, collected the way TREC and BEIR files are meant:

    - a negative grade (TREC's -1 "not relevant", -2 "junk") means judged not relevant: kept as 0;
    - a (query, document) pair judged twice keeps its later grade, as a reader into a dict would.

    Neither is silent: each is counted and announced in one KitWarning per source (`done`)."""

    def __init__(self, source):
        self.source = source
        self.qrels: dict[str, dict[str, int]] = {}
        self._first: dict[tuple[str, str], str] = {}
        self.duplicates: list[str] = []
        self.negatives: list[str] = []

    def add(self, qid: str, doc_id: str, grade: int, at: str) -> None:
        """Record a judgment read at `at` (a file and line, or a hub row)."""
        if grade < 0:
            self.negatives.append(f"{at}: grade {grade}")
            grade = 0
        first = self._first.setdefault((qid, doc_id), at)
        if first != at:
            self.duplicates.append(f"{at}: query {qid!r}, document {doc_id!r} already judged at {first}")
        self.qrels.setdefault(qid, {})[doc_id] = grade

    def done(self) -> dict[str, dict[str, int]]:
        """The qrels, after one warning per kind of repair made."""
        for notes, what in ((self.duplicates, "duplicate judgment(s), the later grade kept"),
                            (self.negatives, "negative grade(s) read as 0 (judged not relevant)")):
            if notes:
                warnings.warn(f"{self.source}: {len(notes)} {what}; first: {notes[0]}", KitWarning, stacklevel=3)
        return self.qrels


@dataclass
class Items:
    """The documents or the queries of a collection as read from one file (or hub config):
    texts by id, the ids left out for an empty text, and the ids judgments named that it
    never held (collected by `keeps`, reported together by `check_references`)."""

    kind: str  # "document" or "query"
    source: object  # the file or config, as errors name it
    texts: dict[str, str] = field(default_factory=dict)
    left_out: set[str] = field(default_factory=set)
    unknown: list[tuple[str, str]] = field(default_factory=list)  # (id, where a judgment named it)

    def keeps(self, item_id: str, at: str, skipped: list[str]) -> bool:
        """Whether a judgment at `at` (a file and line, or a hub row) naming `item_id` is kept:
        not for an item left out (noted in `skipped`) nor for one never held (`check_references`)."""
        if item_id in self.texts:
            return True
        if item_id in self.left_out:
            skipped.append(f"{at}: judgment for skipped {self.kind} {item_id}")
        else:
            self.unknown.append((item_id, at))
        return False

    def check_references(self) -> None:
        """A DataError if judgments named ids this source never held, blaming the damaged file.

        Several distinct numeric ids, all after the last one held, mean this source was cut
        short (the qrels are fine): then it is named, not the qrels line that noticed."""
        if not self.unknown:
            return
        item_id, at = self.unknown[0]
        ids = {i for i, _ in self.unknown}
        last = next(reversed(self.texts), "")
        if len(ids) > 1 and last.isdigit() and all(i.isdigit() and int(i) > int(last) for i in ids):
            raise DataError(self.source, None, f"its last {self.kind} is {last!r}, but {len(self.unknown)} "
                                               f"judgment(s) name {len(ids)} later ones (first: {at}, {self.kind} "
                                               f"{item_id!r}): is the file truncated?")
        more = f"; {len(self.unknown) - 1} more judgment(s) name unknown ids" if len(self.unknown) > 1 else ""
        raise DataError(at, None, f"judgment names unknown {self.kind} {item_id!r} (not in {self.source}){more}")
