"""The groupwise score parser and the listwise permutation parser (grouprank_mini.parsing).

Hand-written cases pin every status and every repair, and every valid answer must read back
as written; tests/test_fuzz.py throws thousands of generated and mutated outputs at both parsers.
"""
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grouprank_mini import prompts
from grouprank_mini.parsing import FALLBACK_SCORE, parse_group_scores, parse_permutation

# --- statuses -------------------------------------------------------------------------------


def test_clean_answer_is_ok():
    parsed = parse_group_scores(prompts.answer_text([7, 2, 0, 10]), 4)
    assert (parsed.scores, parsed.status, parsed.ok) == ([7.0, 2.0, 0.0, 10.0], "ok", True)


def test_answer_with_reasoning_is_ok_when_reasoning_required():
    text = prompts.answer_text([3, 9], reasoning="[2] defines the term, [1] only mentions it.")
    assert parse_group_scores(text, 2, require_reason=True).status == "ok"


def test_missing_reasoning_is_tags_missing_but_scores_are_kept():
    parsed = parse_group_scores(prompts.answer_text([3, 9]), 2, require_reason=True)
    assert (parsed.scores, parsed.status) == ([3.0, 9.0], "tags_missing")


def test_unclosed_reason_tag_is_tags_missing():
    text = '<reason>[1] is better' + prompts.answer_text([8, 1])
    assert parse_group_scores(text, 2, require_reason=True).status == "tags_missing"


@pytest.mark.parametrize("text", [
    '{"[1]": 4, "[2]": 6}',  # no tags at all
    '<answer>{"[1]": 4, "[2]": 6}',  # never closed (cut off by the token budget)
    '{"[1]": 4, "[2]": 6}</answer>',  # never opened
])
def test_broken_tags_are_tags_missing_but_scores_are_kept(text):
    parsed = parse_group_scores(text, 2)
    assert (parsed.scores, parsed.status) == ([4.0, 6.0], "tags_missing")


@pytest.mark.parametrize("text", ["", None, "I cannot rank these documents.", "<reason>x</reason>"])
def test_text_without_any_answer_gives_fallback_scores(text):
    parsed = parse_group_scores(text, 3)
    assert (parsed.scores, parsed.status) == ([FALLBACK_SCORE] * 3, "tags_missing")


def test_no_json_inside_tags_is_json_invalid():
    parsed = parse_group_scores("<answer>all of them are good</answer>", 2)
    assert (parsed.scores, parsed.status) == ([FALLBACK_SCORE] * 2, "json_invalid")


def test_unreadable_json_is_json_invalid_but_pairs_are_salvaged():
    # Unquoted keys are not JSON; the scores are still there to be read.
    parsed = parse_group_scores("<answer>{[1]: 7, [2]: 3}</answer>", 2)
    assert (parsed.scores, parsed.status) == ([7.0, 3.0], "json_invalid")


def test_forgotten_document_is_ids_missing_with_fallback():
    parsed = parse_group_scores('<answer>{"[1]": 4, "[3]": 8}</answer>', 3)
    assert (parsed.scores, parsed.status) == ([4.0, FALLBACK_SCORE, 8.0], "ids_missing")


@pytest.mark.parametrize("text", ['<answer>{"[1]": 4, "[2]": 5, "[3]": 1}</answer>',
                                  '<answer>{"[0]": 9, "[1]": 4, "[2]": 5}</answer>'])
def test_ids_outside_the_group_are_ids_extra(text):
    parsed = parse_group_scores(text, 2)
    assert (parsed.scores, parsed.status) == ([4.0, 5.0], "ids_extra")


def test_missing_wins_over_extra():
    parsed = parse_group_scores('<answer>{"[1]": 4, "[5]": 5}</answer>', 2)
    assert (parsed.scores, parsed.status) == ([4.0, FALLBACK_SCORE], "ids_missing")


@pytest.mark.parametrize("score", ['"high"', "true", "null", "NaN", "Infinity", "[7]"])
def test_a_value_that_is_not_a_score_counts_as_missing(score):
    parsed = parse_group_scores(f'<answer>{{"[1]": {score}, "[2]": 3}}</answer>', 2)
    assert (parsed.scores, parsed.status) == ([FALLBACK_SCORE, 3.0], "ids_missing")


# --- repairs --------------------------------------------------------------------------------

@pytest.mark.parametrize("body, expected", [
    ('{"[1]]": 7, "[[2]]": 3}', [7.0, 3.0]),  # doubled brackets
    ('{"[1]": 7, "[2]": 3', [7.0, 3.0]),  # missing closing brace
    ('{"[1]": 7, "[2]": 3,}', [7.0, 3.0]),  # trailing comma
    ('{"[1]": 7, "[2]": 3, ', [7.0, 3.0]),  # trailing comma and missing brace
    ('{"[1]": "7", "[2]": " 3 "}', [7.0, 3.0]),  # scores as strings
    ('{"[1]": 7.5, "[2]": 3.25}', [7.5, 3.25]),  # floats are kept, not rounded
    ('{"[1]": 15, "[2]": -2}', [10.0, 0.0]),  # out of range: clamped
    ('{"[1]": "12.5", "[2]": "-0.5"}', [10.0, 0.0]),  # out-of-range strings: clamped too
    ('{"1": 7, "2": 3}', [7.0, 3.0]),  # ids without brackets
    ('{" [ 1 ] ": 7, "[2]": 3}', [7.0, 3.0]),  # stray spaces in ids
    ('```json\n{"[1]": 7, "[2]": 3}\n```', [7.0, 3.0]),  # fenced json block, as the paper's format asks
    ('draft {"[1]": 1, "[2]": 1} final {"[1]": 7, "[2]": 3}', [7.0, 3.0]),  # the last object wins
])
def test_small_damage_is_repaired(body, expected):
    parsed = parse_group_scores(f"<answer>{body}</answer>", 2)
    assert (parsed.scores, parsed.status) == (expected, "ok")


def test_fenced_block_with_reasoning_is_ok():
    text = '<reason>[2] is on topic.</reason>\n<answer>\n```json\n{"[1]": 2, "[2]": 9}\n```\n</answer>'
    assert parse_group_scores(text, 2, require_reason=True) == parse_group_scores(text, 2)
    assert parse_group_scores(text, 2).scores == [2.0, 9.0]


def test_last_answer_block_is_read():
    # A model that echoes the prompt's example before answering must be scored on its answer.
    text = '<answer>{"[1]": 6, "[2]": 2, ...}</answer> then <answer>{"[1]": 1, "[2]": 8}</answer>'
    assert parse_group_scores(text, 2).scores == [1.0, 8.0]


def test_tags_are_case_insensitive():
    assert parse_group_scores('<ANSWER>{"[1]": 5}</Answer>', 1).status == "ok"


@pytest.mark.parametrize("text", [
    '<answer>{"[1]": 1' + "0" * 400 + "}</answer>",  # an int too large for a float
    '<answer>{"[1]": 1' + "0" * 5000 + "}</answer>",  # longer than int() converts
    '<answer>{"[' + "1" * 5000 + ']": 3}</answer>',  # an absurd id
    "<answer>[" + "1" * 5000 + "]: 3</answer>",  # the same, through the salvage path
    '<answer>{"[1]": ' + "[" * 5000 + "}</answer>",  # nesting deeper than the JSON parser recurses
])
def test_huge_numbers_and_deep_nesting_do_not_raise(text):
    parsed = parse_group_scores(text, 2)
    assert len(parsed.scores) == 2 and all(0 <= s <= 10 for s in parsed.scores)


@pytest.mark.parametrize("unit", ["[", "[1", "1", " ", '"', "[1] ", "<reason>", "<answer>", '"[1]": '])
def test_degenerate_repetition_parses_in_linear_time(unit):
    # Small models loop on one token; the old salvage pattern needed minutes for 3,000 "[".
    text = "<answer>{" + unit * (20_000 // len(unit))
    start = time.perf_counter()
    parse_group_scores(text, 5, require_reason=True), parse_permutation(text, 5)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("unit", ["<reason>", "<ReAsOn> ", "<reason><answer>"])
def test_reason_search_is_linear_in_repeated_opening_tags(unit):
    # Every "<reason>" used to start a scan to the end of the text: 30 s for 256 KB.
    text = unit * (256_000 // len(unit)) + prompts.answer_text([3, 9])
    start = time.perf_counter()
    parsed = parse_group_scores(text, 2, require_reason=True)
    assert time.perf_counter() - start < 2.0
    assert (parsed.scores, parsed.status) == ([3.0, 9.0], "tags_missing")


@pytest.mark.parametrize("reason, status", [
    ("<REASON>[2] wins.</Reason>", "ok"),  # case does not matter
    ("<reason><reason>[2] wins.</reason>", "ok"),  # a repeated opening tag is harmless
    ("</reason><reason>[2] wins.", "tags_missing"),  # closed only before it opens
    ("<reason>[2] wins.</reason><reason>", "ok"),  # one closed block is enough
])
def test_reason_block_must_close_after_it_opens(reason, status):
    assert parse_group_scores(reason + prompts.answer_text([3, 9]), 2, require_reason=True).status == status


# --- permutations ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, n, expected", [
    ("<answer>[3] > [1] > [2]</answer>", 3, [2, 0, 1]),
    ("<answer>[3] > [1]</answer>", 5, [2, 0, 1, 3, 4]),  # missing ids appended in original order
    ("<answer>[2] > [2] > [1] > [2]</answer>", 3, [1, 0, 2]),  # repeats dropped
    ("<answer>[0] > [7] > [2]</answer>", 3, [1, 0, 2]),  # out of range dropped
    ("<answer>[ 2 ]>[1]</answer>", 2, [1, 0]),  # spacing does not matter
    ("[2] > [3] > [1]", 3, [1, 2, 0]),  # no tags: the whole text is read
    ("Documents [1] and [2]. <answer>[2] > [1]</answer>", 2, [1, 0]),  # only the answer counts
    ("<answer>no order given</answer>", 3, [0, 1, 2]),
    ("", 2, [0, 1]),
    (None, 2, [0, 1]),
    ("<answer>[" + "1" * 5000 + "] > [2]</answer>", 3, [1, 0, 2]),  # absurd id dropped, no raise
])
def test_parse_permutation(text, n, expected):
    assert parse_permutation(text, n) == expected


# --- every valid answer reads back ---------------------------------------------------------

@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(st.lists(st.integers(0, 10), min_size=1, max_size=20), st.booleans())
def test_every_valid_answer_round_trips(scores, with_reason):
    text = prompts.answer_text(scores, "short reasoning" if with_reason else None)
    parsed = parse_group_scores(text, len(scores), require_reason=with_reason)
    assert (parsed.scores, parsed.status) == ([float(s) for s in scores], "ok")
