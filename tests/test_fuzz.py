"""Fuzzing the output parser and the GRPO reward with generated and mutated model outputs.

Both read raw model text, so no output may make them raise, and the reward must stay finite and
within [MIN_REWARD, MAX_REWARD] whatever the text. Outputs start from a cheap seed (a groupwise
answer whose JSON is built entry by entry, so that ids can go missing, repeat or be out of range
and values can be of any JSON type, NaN, Infinity or far beyond a float) and are then cut,
spliced, repeated and wrapped in stray tags. Each test states its example count; together they
run about 12,000 outputs (see `pytest --hypothesis-show-statistics`). Examples are derandomized,
so a failure reproduces on every run.
"""
import math
import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from grouprank_mini.config import get_preset
from grouprank_mini.parsing import STATUSES, parse_group_scores, parse_permutation
from grouprank_mini.prompts import answer_text
from grouprank_mini.rewards import (
    GATE_FAILURES, MAX_REWARD, MIN_REWARD, format_score, make_reward_func, score_completion)


def fuzz(examples: int):
    return settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- what model outputs are made of ------------------------------------------------------------

HUGE_INT = "9" * 5000  # longer than int() converts
# JSON values a model might write for a score: right, out of range, of the wrong type, not finite.
VALUES = st.one_of(st.integers(0, 10).map(str), st.sampled_from([
    "-3", "15", "7.5", "1e400", "-1e400", "1e-400", HUGE_INT, "NaN", "Infinity", "-Infinity",
    '"7"', '" 3 "', '"high"', '"NaN"', "true", "null", "[7]", '{"score": 7}', "[]", "-0", "1_000"]))
ID_FORMS = ['"[{}]"', '"{}"', '"[[{}]]"', '" [ {} ] "', "[{}]", '"[{}]]"']
# Pieces spliced into an output: tags, JSON punctuation, literals, control and invisible characters.
PIECES = st.sampled_from([
    "<answer>", "</answer>", "<reason>", "</reason>", "<ANSWER>", "{", "}", "[", "]", '"', ":", ",",
    "NaN", "Infinity", "1e400", HUGE_INT, "null", "\x00", "\ufeff", "```json\n", "```", " " * 40, "\n",
    '"[0]": 5', '"[99]": 5', '"[1]": 7, ', "[1] > [2]", "1" * 400])


@st.composite
def answer_json(draw, n: int) -> str:
    """A JSON-ish object scoring documents 1..n: ids may be dropped, repeated, misspelt or foreign."""
    ids = [i for i in range(1, n + 1) if draw(st.integers(0, 9))]  # each id dropped 1 time in 10
    ids += draw(st.lists(st.integers(0, 10**12), max_size=2))  # extra ids, mostly far out of range
    ids += draw(st.lists(st.sampled_from(ids), max_size=2)) if ids else []  # duplicate keys
    ids = draw(st.permutations(ids))
    entries = [draw(st.sampled_from(ID_FORMS)).format(i) + ": " + draw(VALUES) for i in ids]
    body = "{" + ", ".join(entries) + draw(st.sampled_from(["}", "", ",}", "}}"]))
    wrong_type = draw(st.sampled_from([None, None, None, "[{}]", "{}", '"{}"', "7"]))
    return wrong_type.replace("{}", body) if wrong_type else body


@st.composite
def seed_output(draw) -> tuple[str, int]:
    """A whole completion for a group of n documents, before any mutation."""
    n = draw(st.integers(1, 12))
    body = draw(answer_json(n))
    if draw(st.booleans()):
        body = "```json\n" + body + "\n```"
    reason = draw(st.sampled_from(["", "<reason>[1] is closer to the query.</reason>\n", "<reason>unclosed "]))
    echo = draw(st.sampled_from(["", '<answer>{"[1]": 6, "[2]": 2, ...}</answer> ']))  # the prompt's example
    return echo + reason + "<answer>" + body + "</answer>", n


@st.composite
def mutated(draw, text: str) -> str:
    """`text` after a few cuts, duplications, splices, repetitions and wrappings."""
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 30)))
        kind = draw(st.sampled_from(["truncate", "delete", "duplicate", "insert", "insert", "repeat", "wrap"]))
        if kind == "truncate":  # cut off by the token budget
            text = text[:i]
        elif kind == "delete":
            text = text[:i] + text[j:]
        elif kind == "duplicate":  # duplicate tags or entries
            text = text[:j] + text[i:j] + text[j:]
        elif kind == "insert":
            text = text[:i] + draw(PIECES) + text[i:]
        elif kind == "repeat":  # a small model looping on a few tokens
            text = text[:j] + text[i:j] * draw(st.integers(2, 300)) + text[j:]
        else:  # nested tags
            tag = draw(st.sampled_from(["answer", "reason"]))
            text = f"<{tag}>" + text + f"</{tag}>" * draw(st.integers(0, 2))
    return text


@st.composite
def model_output(draw) -> tuple[str, int]:
    """A mutated seed, or now and then unrelated text of the parser's favourite characters."""
    if draw(st.integers(0, 4)) == 0:
        text = draw(st.one_of(st.text(max_size=200), st.lists(PIECES | st.sampled_from(list("[]{}:,0123456789 ")),
                                                                      max_size=60).map("".join)))
        return text, draw(st.integers(0, 12))
    text, n = draw(seed_output())
    return draw(mutated(text)), n


TARGETS = st.lists(st.integers(0, 10), min_size=1, max_size=12) | st.lists(
    st.floats(0, 10, allow_nan=False), min_size=1, max_size=12)
SWITCHES = st.fixed_dictionaries(dict(utility=st.booleans(), alignment=st.booleans(), normalized_gain=st.booleans(),
                                      require_reason=st.booleans()))


def perfect_answer(targets, reason: bool) -> str:
    return answer_text([round(t) for t in targets], "[1] and [2] compared." if reason else None)


def check_reward(result, perfect) -> None:
    """What every reward must satisfy, whatever the completion."""
    assert math.isfinite(result.total) and MIN_REWARD <= result.total <= MAX_REWARD
    assert result.status in STATUSES
    assert result.total == pytest.approx(result.format + result.ndcg + result.recall + result.alignment)
    if result.status in GATE_FAILURES:
        assert result.total == format_score(result.status) < 0 <= perfect.total
    else:
        assert result.total >= 0.0  # an answer passing the gate always beats one failing it


# --- the parsers -------------------------------------------------------------------------------

@fuzz(4000)
@given(model_output(), st.booleans())
def test_no_output_breaks_the_parsers(case, require_reason):
    text, n = case
    parsed = parse_group_scores(text, n, require_reason)
    assert len(parsed.scores) == n and parsed.status in STATUSES
    assert all(isinstance(s, float) and math.isfinite(s) and 0.0 <= s <= 10.0 for s in parsed.scores)
    assert sorted(parse_permutation(text, n)) == list(range(n))


ONE_MB = 1_000_000


@fuzz(40)
@given(st.sampled_from(["<reason>", "<answer>", "<answer></answer>", "{", "[", "[[1]", '"[1]": ', "[1]: 5, ",
                        "9", " ", "\x00", "<reason></reason", "</answer>", '{"[1]": 1e400, ', "[1] > "]),
       st.sampled_from(["", answer_text([3, 9]), "<reason>"]), st.booleans())
def test_a_megabyte_of_repetition_parses_in_bounded_time(unit, answer, answer_first):
    # A regression guard against backtracking, not a speed target: each case takes ~0.1 s, and a
    # loaded CI machine has taken 2.3 s once; backtracking over a megabyte would take minutes.
    loop = unit * (ONE_MB // len(unit))
    text = answer + loop if answer_first else loop + answer
    start = time.perf_counter()
    parsed = parse_group_scores(text, 2, require_reason=True)
    parse_permutation(text, 2)
    result = score_completion(text, [3, 9], require_reason=True)
    assert time.perf_counter() - start < 10.0
    assert len(parsed.scores) == 2 and math.isfinite(result.total)


# --- the reward --------------------------------------------------------------------------------

@fuzz(3000)
@given(model_output(), TARGETS, SWITCHES, st.integers(0, 11))
def test_no_output_breaks_the_reward(case, targets, switches, threshold):
    text, _ = case
    relevant = [int(t >= threshold) for t in targets]  # synthesis-style 0/1 marks, sometimes none
    result = score_completion(text, targets, relevant=relevant, **switches)
    check_reward(result, score_completion(perfect_answer(targets, switches["require_reason"]), targets,
                                          relevant=relevant, **switches))


@fuzz(400)
@given(st.lists(st.tuples(model_output(), st.booleans()), min_size=1, max_size=6), TARGETS, st.booleans())
def test_the_trl_reward_function_scores_every_completion_like_score_completion(batch, targets, reasoning):
    func = make_reward_func(get_preset("smoke", reasoning=reasoning))
    texts = [text for (text, _), _ in batch]
    completions = [[{"role": "assistant", "content": text}] if chat else text for (text, _), chat in batch]
    logged = {}
    totals = func([""] * len(batch), completions, target_scores=[targets] * len(batch),
                  gains=[targets] * len(batch), log_metric=logged.__setitem__)
    assert totals == [score_completion(t, targets, require_reason=reasoning).total for t in texts]
    assert all(math.isfinite(v) for v in logged.values())


def flipped(targets) -> list[int]:
    """Scores that rank the group in exactly the reverse order of its targets (a complete answer)."""
    return [10 - round(t) for t in targets]


@fuzz(600)
@given(st.lists(st.integers(0, 10), min_size=2, max_size=12), SWITCHES)
def test_a_perfect_answer_beats_the_reversed_one(targets, switches):
    assume(len(set(targets)) > 1)  # all equal: every order is perfect
    switches["alignment"] = True  # without alignment and utility, both answers earn exactly 0
    reason = "[1] and [2] compared." if switches["require_reason"] else None
    perfect = score_completion(answer_text(targets, reason), targets, **switches)
    reversed_ = score_completion(answer_text(flipped(targets), reason), targets, **switches)
    assert perfect.status == reversed_.status == "ok"
    assert perfect.total > reversed_.total


@st.composite
def with_ids_dropped(draw) -> tuple[list[int], list[int], str]:
    """Targets, a complete answer's scores, and that answer with at least one id left out (maybe mutated)."""
    targets = draw(st.lists(st.integers(0, 10), min_size=1, max_size=12))
    scores = draw(st.lists(st.integers(0, 10), min_size=len(targets), max_size=len(targets)))
    dropped = draw(st.sets(st.integers(1, len(targets)), min_size=1))
    kept = [f'"[{i}]": {s}' for i, s in enumerate(scores, start=1) if i not in dropped]
    kept += draw(st.sampled_from([[], ['"[99]": 10'], ['"[0]": 10']]))  # unknown ids make up for nothing
    return targets, scores, "<answer>{" + ", ".join(kept) + "}</answer>"


@fuzz(2000)
@given(with_ids_dropped(), SWITCHES)
def test_an_incomplete_answer_never_beats_the_complete_one(case, switches):
    # Before the gate asked for every id, leaving out a document scored 0 earned exactly what writing the 0 did.
    targets, scores, incomplete = case
    switches["require_reason"] = False
    complete = score_completion(answer_text(scores), targets, **switches)
    perfect = score_completion(answer_text(targets), targets, **switches)
    partial = score_completion(incomplete, targets, **switches)
    assert partial.status == "ids_missing"
    assert partial.total < complete.total and partial.total < perfect.total


@fuzz(1500)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 10), min_size=1, max_size=8),
       model_output())
def test_targets_that_are_not_finite_scores_never_earn_a_reward(targets, case):
    text, _ = case
    try:
        result = score_completion(text, targets)
    except ValueError:
        assert not all(math.isfinite(t) and t >= 0 for t in targets)
    else:
        assert all(math.isfinite(t) and t >= 0 for t in targets)
        assert math.isfinite(result.total) and MIN_REWARD <= result.total <= MAX_REWARD
