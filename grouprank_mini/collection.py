"""The one type every loader returns, `Collection`, its train/dev/test split, and the error and
warning conventions all loaders share: `DataError` names the file and line (or hub row) of bad
input; what a loader leaves out is listed in `Collection.skipped` and announced once."""
from __future__ import annotations

import random
import re
import warnings
from dataclasses import dataclass, field

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
    excluded: dict[str, set[str]] = field(default_factory=dict)  # query id -> ids never to rank
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
