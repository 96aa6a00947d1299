"""Reading model output: groupwise scores and listwise permutations. Never raises, never evals.

Statuses (reused by the GRPO format gate, see rewards.py):

- ``ok``            tags right, JSON readable (after small repairs), ids exactly [1]..[n]
- ``tags_missing``  no ``<answer>…</answer>`` (or no ``<reason>…</reason>`` when reasoning is required)
- ``json_invalid``  tags right but no JSON object could be read, even after repairs
- ``ids_missing``   JSON read, but some of [1]..[n] have no score (they get `FALLBACK_SCORE`)
- ``ids_extra``     JSON read, every id present, plus ids that are not in the group

Scores are recovered whenever possible, whatever the status, because a reranker should use
every score the model gave; the status only tells how clean the answer was.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

FALLBACK_SCORE = 0.0  # a document the model forgot ranks with the ones it judged useless
STATUSES = ("ok", "ids_extra", "ids_missing", "json_invalid", "tags_missing")

_ANSWER = re.compile(r"<answer>(.*?)(</answer>|$)", re.S | re.I)
_REASON_OPEN, _REASON_CLOSE = re.compile(r"<reason>", re.I), re.compile(r"</reason>", re.I)
# Patterns read model text, so none may backtrack badly: no two adjacent quantifiers that can
# match the same characters, and a digit run is only tried from its first digit. (The earlier
# `\[*\s*"?\s*\[*...` form took minutes on a few thousand "[" - a degenerate model's output.)
_PAIR = re.compile(r'(?<!\d)(\d+)[\s\]"]*:[\s"]*(-?\d+(?:\.\d+)?)')


@dataclass(frozen=True)
class ParsedGroup:
    scores: list[float]  # one per document, each in [0, 10]
    status: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def answer_region(text: str) -> tuple[str, bool]:
    """Text inside the last <answer> (to </answer> or the end), and whether both tags are there."""
    matches = list(_ANSWER.finditer(text))
    if not matches:
        return text, False
    last = matches[-1]
    return last.group(1), bool(last.group(2))


def _has_reason(text: str) -> bool:
    """Whether a <reason> tag is closed somewhere after it opens.

    Two literal searches from the first opening tag, rather than one ``<reason>.*?</reason>``
    search: that pattern restarts at every "<reason>" and scans to the end of the text from
    each, which took 30 s on 256 KB of a model looping on the tag.
    """
    opening = _REASON_OPEN.search(text)
    return opening is not None and _REASON_CLOSE.search(text, opening.end()) is not None


def tags_ok(text: str, require_reason: bool = False) -> bool:
    _, closed = answer_region(text)
    return closed and (not require_reason or _has_reason(text))


def parse_group_scores(text: str, n_docs: int, require_reason: bool = False) -> ParsedGroup:
    """One score per document of the group from a groupwise answer, plus a status."""
    text = text or ""
    region, _ = answer_region(text)
    found = _read_json_scores(region)
    valid_json = found is not None
    if found is None:
        found = _salvage_pairs(region)
    scores, missing, extra = _align(found, n_docs)
    if not tags_ok(text, require_reason):
        status = "tags_missing"
    elif not valid_json:
        status = "json_invalid"
    else:
        status = "ids_missing" if missing else "ids_extra" if extra else "ok"
    return ParsedGroup(scores, status)


def _read_json_scores(region: str) -> dict[int, float] | None:
    """The last JSON object in `region`, repaired for small damage; None if unreadable."""
    start = region.rfind("{")
    if start < 0:
        return None
    end = region.find("}", start)
    body = region[start:end + 1] if end >= 0 else region[start:] + "}"  # a missing closing brace
    body = re.sub(r"(?<!\[)\[+(\d+)\]+", r"[\1]", body)  # doubled brackets: [[7]] or [7]]
    body = re.sub(r",\s*}", "}", body)  # trailing comma
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):  # ValueError also covers ints longer than Python converts
        return None
    if not isinstance(obj, dict):
        return None
    return {k: v for k, v in ((_doc_number(k), _number(v)) for k, v in obj.items()) if k is not None and v is not None}


def _salvage_pairs(region: str) -> dict[int, float]:
    """`[k]: score` pairs found anywhere in broken text (the last one wins)."""
    return {_id(k): float(v) for k, v in _PAIR.findall(region)}


def _doc_number(key) -> int | None:
    match = re.fullmatch(r"[\s\[]*(\d+)[\s\]]*", str(key))
    return _id(match.group(1)) if match else None


def _id(digits: str) -> int:
    """A document number; absurdly long ones become an out-of-range id, because int()
    refuses strings over 4300 digits and no group is that large anyway."""
    return int(digits) if len(digits.lstrip("0")) <= 9 else 10**9


def _number(value) -> float | None:
    """Scores written as numbers or numeric strings; anything else is not a score."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float
        return None
    return number if math.isfinite(number) else None


def _align(found: dict[int, float], n_docs: int) -> tuple[list[float], bool, bool]:
    """Scores for ids 1..n (clamped to 0..10, fallback when absent), and whether ids were missing/extra."""
    scores = [min(10.0, max(0.0, found[i])) if i in found else FALLBACK_SCORE for i in range(1, n_docs + 1)]
    missing = any(i not in found for i in range(1, n_docs + 1))
    extra = any(not 1 <= k <= n_docs for k in found)
    return scores, missing, extra


def parse_permutation(text: str, n_docs: int) -> list[int]:
    """A listwise answer like ``[3] > [1] > [2]`` as 0-based indices covering every document.

    Out-of-range ids and repeats are dropped; documents the model left out are appended in
    their original order, so the result is always a permutation of range(n_docs).
    """
    region, _ = answer_region(text or "")
    order: list[int] = []
    for number in re.findall(r"\[\s*(\d+)\s*\]", region):
        index = _id(number) - 1
        if 0 <= index < n_docs and index not in order:
            order.append(index)
    return order + [i for i in range(n_docs) if i not in order]
