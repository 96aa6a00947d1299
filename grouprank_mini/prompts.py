"""Prompt builders for the three paradigms, and the answer text the groupwise parser reads.

Chat messages (``[{"role": ..., "content": ...}]``) are returned, so the same prompt
works with any instruct model's chat template and with TRL's conversational datasets.
The wording is this kit's own; the format follows GroupRank (docs/paper.md §2).
"""
from __future__ import annotations

import json
import re

PROMPT_VERSION = "grouprank-mini/v1"  # part of every teacher-cache key: bump it when wording changes

RUBRIC = (
    "Score each document from 0 to 10 for how much it helps answer the query. "
    "Usefulness matters most, topical relevance second.\n"
    "10-9: answers the query directly. 8-7: much of what is needed. 6-5: part of an answer. "
    "4-3: on topic but of little help. 2-1: only touches the topic. 0: no help at all.\n"
    "Read all documents before scoring and compare them with each other, "
    "so that a better document always gets a higher score."
)


def truncate(text: str, max_chars: int) -> str:
    """Collapse whitespace and newlines, then cut to `max_chars` at a word boundary."""
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut) + " ..."


def numbered_documents(docs: list[str], max_chars: int) -> str:
    """Documents as ``[1]. text`` lines, the way the model refers to them."""
    return "\n".join(f"[{i}]. {truncate(doc, max_chars)}" for i, doc in enumerate(docs, start=1))


def groupwise_messages(query: str, docs: list[str], max_chars: int, reasoning: bool = False) -> list[dict]:
    """The GroupRank prompt: one query, a group of documents, an integer score for each."""
    n = len(docs)
    if reasoning:
        form = ("First think briefly inside <reason> </reason>, comparing the documents. "
                "Then give the scores as a JSON object inside <answer> </answer>:")
    else:
        form = "Reply with only the scores, as a JSON object inside <answer> </answer>:"
    user = (f"Query: {truncate(query, 1000)}\n\nDocuments:\n{numbered_documents(docs, max_chars)}\n\n"
            f"Score all {n} document{'s' if n > 1 else ''}. {form}\n"
            f'<answer>{{"[1]": 6, "[2]": 2, ...}}</answer> with one entry for each document from [1] to [{n}].')
    return [{"role": "system", "content": RUBRIC}, {"role": "user", "content": user}]


def listwise_messages(query: str, docs: list[str], max_chars: int, reasoning: bool = False) -> list[dict]:
    """A RankGPT-style window prompt: order the documents from most to least useful."""
    n = len(docs)
    if reasoning:  # the same thinking step as the groupwise prompt, so the two compare like for like
        form = ("First think briefly inside <reason> </reason>, comparing the documents. "
                "Then give the order inside <answer> </answer>")
    else:
        form = "Reply with only the order inside <answer> </answer>"
    user = (f"Query: {truncate(query, 1000)}\n\nDocuments:\n{numbered_documents(docs, max_chars)}\n\n"
            f"Order all {n} documents from most to least useful for the query. {form}, "
            f"for example <answer>[2] > [1] > [3]</answer>.")
    return [{"role": "system", "content": "You rank search results by how much they help answer a query."},
            {"role": "user", "content": user}]


def answer_text(scores: list[int], reasoning: str | None = None) -> str:
    """The completion a perfect student writes: what SFT trains on and the parser reads."""
    answer = "<answer>" + json.dumps({f"[{i}]": int(s) for i, s in enumerate(scores, start=1)}) + "</answer>"
    return f"<reason>{reasoning.strip()}</reason>\n{answer}" if reasoning else answer
