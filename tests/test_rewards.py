"""The GroupRank GRPO reward: each term by hand, the gate, the switches, TRL's calling convention."""
import itertools
import math
import random

import ir_measures
import pytest

from grouprank_mini import rewards
from grouprank_mini.config import get_preset
from grouprank_mini.parsing import STATUSES
from grouprank_mini.prompts import answer_text
from grouprank_mini.rewards import (
    EPSILON, GAMMA, format_score, group_alignment, js_divergence, make_reward_func,
    ndcg_at_k, normalized_ndcg, prompt_order_ndcg, ranking_utility, recall_at_k, score_completion,
    score_distribution)

TARGETS = [3, 1, 0]  # gains default to these: doc 1 best, doc 3 irrelevant
LOG3 = math.log2(3)
IDEAL_DCG = 3 + 1 / LOG3  # 3/log2(2) + 1/log2(3) + 0/log2(4) = 3.63093
REVERSED_NDCG = (0 + 1 / LOG3 + 3 / 2) / IDEAL_DCG  # order 3,2,1: 0/1 + 1/log2(3) + 3/log2(4) = 0.58688
# P of (0,1,3) and Q of (3,1,0), each +0.5 and divided by 5.5: (1,3,7)/11 and (7,3,1)/11; M = (4,3,4)/11.
# KL(P‖M) = 1/11·log2(1/4) + 3/11·log2(1) + 7/11·log2(7/4) = (-2 + 7·log2(1.75))/11; KL(Q‖M) is the same.
REVERSED_JS = (-2 + 7 * math.log2(1.75)) / 11  # 0.33195


def chat(text):
    return [{"role": "assistant", "content": text}]


# --- each term by hand ----------------------------------------------------------------------------

def test_format_gate_values():
    assert [format_score(s) for s in ("ok", "ids_extra")] == [0.0, 0.0]
    assert format_score("ids_missing") == format_score("json_invalid") == -0.1
    assert format_score("tags_missing") == -0.5
    assert set(rewards.FORMAT_SCORES) == set(STATUSES)  # a new parser status must get a gate value


def test_ndcg_by_hand():
    assert ndcg_at_k([3, 1, 0], TARGETS) == pytest.approx(1.0)
    assert ndcg_at_k([0, 1, 3], TARGETS) == pytest.approx(REVERSED_NDCG)
    assert REVERSED_NDCG == pytest.approx(0.586883, abs=1e-6)
    # k=1: only rank 1 counts. Predicted top is doc 3 (gain 0): 0/3.
    assert ndcg_at_k([0, 1, 3], TARGETS, k=1) == 0.0
    assert ndcg_at_k([1, 2, 3], [0, 0, 0]) == 0.0  # nothing relevant: 0, whatever the order


def test_ties_get_the_mean_discount_of_their_block():
    # Docs 1 and 2 tie at ranks 1-2: doc 1 (gain 1) expects (1/log2(2) + 1/log2(3))/2 = 0.81546; ideal is 1.
    assert ndcg_at_k([5, 5, 0], [1, 0, 0]) == pytest.approx((1 + 1 / LOG3) / 2)
    # All tied: each doc expects (1 + 1/log2(3) + 1/2)/3 = 0.71031 of discount; DCG = 4·0.71031.
    assert ndcg_at_k([7, 7, 7], TARGETS) == pytest.approx(4 * (1 + 1 / LOG3 + 0.5) / 3 / IDEAL_DCG)
    # Recall@1: the tie block of docs 1 and 2 has 1 rank inside the cutoff: doc 1 is there half the time.
    assert recall_at_k([5, 5, 0], [1, 0, 0], k=1) == 0.5


def test_ties_equal_the_mean_over_all_orders_of_the_tied_documents():
    rng = random.Random(3)
    for _ in range(20):
        n = rng.randint(2, 6)
        pred = [rng.randint(0, 3) for _ in range(n)]
        gains = [rng.randint(0, 3) for _ in range(n)]
        k = rng.randint(1, n)
        # Every strict order consistent with the scores, each scored with distinct scores n, n-1, ...
        orders = [o for o in itertools.permutations(range(n)) if all(pred[a] >= pred[b] for a, b in zip(o, o[1:]))]
        strict = [[n - o.index(i) for i in range(n)] for o in orders]
        assert ndcg_at_k(pred, gains, k) == pytest.approx(sum(ndcg_at_k(s, gains, k) for s in strict) / len(strict))
        assert recall_at_k(pred, gains, k) == pytest.approx(sum(recall_at_k(s, gains, k) for s in strict) / len(strict))


def test_recall_by_hand():
    # Relevant = positive gain = docs 1 and 2. Order 3,2,1: top-1 has none, top-2 has doc 2 (1 of 2).
    assert recall_at_k([0, 1, 3], TARGETS, k=1) == 0.0
    assert recall_at_k([0, 1, 3], TARGETS, k=2) == 0.5
    assert recall_at_k([0, 1, 3], TARGETS) == 1.0  # a group of <= 10 docs is all inside the top 10
    assert recall_at_k([0, 1, 3], [0, 0, 0]) == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_ndcg_and_recall_match_ir_measures(seed):
    rng = random.Random(seed)
    n = rng.randint(3, 15)
    gains = [rng.randint(0, 3) for _ in range(n)]
    gains[rng.randrange(n)] = rng.randint(1, 3)  # at least one relevant document
    pred = [rng.random() for _ in range(n)]  # distinct: ir-measures breaks ties by doc id
    qrels = {"q": {f"d{i}": g for i, g in enumerate(gains)}}
    run = {"q": {f"d{i}": s for i, s in enumerate(pred)}}
    for k in (3, 10):
        expected = ir_measures.calc_aggregate([ir_measures.nDCG @ k, ir_measures.R @ k], qrels, run)
        assert ndcg_at_k(pred, gains, k) == pytest.approx(expected[ir_measures.nDCG @ k])
        assert recall_at_k(pred, gains, k) == pytest.approx(expected[ir_measures.R @ k])


def test_score_distribution_and_js_by_hand():
    assert score_distribution([3, 1, 0]) == pytest.approx([7 / 11, 3 / 11, 1 / 11])  # (3.5, 1.5, 0.5)/5.5
    assert score_distribution([0, 0, 0, 0]) == pytest.approx([0.25] * 4)  # all zero: uniform, not 0/0
    assert js_divergence([7 / 11, 3 / 11, 1 / 11], [1 / 11, 3 / 11, 7 / 11]) == pytest.approx(REVERSED_JS)
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)  # disjoint supports: 1 bit, the maximum
    assert js_divergence([0.5, 0.5], [0.5, 0.5]) == 0.0


def test_alignment_is_epsilon_when_p_equals_q_and_smaller_otherwise():
    assert group_alignment([3, 1, 0], TARGETS) == pytest.approx(EPSILON)
    assert group_alignment([0, 1, 3], TARGETS) == pytest.approx(EPSILON * (1 - REVERSED_JS))  # 0.06680
    assert group_alignment([3, 1, 1], TARGETS) < EPSILON


def test_ranking_utility_by_hand():
    assert ranking_utility([3, 1, 0], TARGETS).total == pytest.approx(1 + GAMMA)
    assert ranking_utility([0, 1, 3], TARGETS).total == pytest.approx(REVERSED_NDCG + GAMMA)
    ndcg_at_2 = ndcg_at_k([0, 1, 3], TARGETS, 2)
    assert ranking_utility([0, 1, 3], TARGETS, k=2).total == pytest.approx(ndcg_at_2 + GAMMA * 0.5)
    # Relevance marks replace the positive gains for Recall: only doc 3 is relevant, and it is ranked first.
    assert ranking_utility([0, 1, 3], TARGETS, [0, 0, 1], k=2).total == pytest.approx(ndcg_at_2 + GAMMA)


# --- whole completions ---------------------------------------------------------------------------

def test_perfect_and_reversed_completions_by_hand():
    perfect = score_completion(answer_text(TARGETS), TARGETS)
    assert (perfect.status, perfect.format, perfect.total) == ("ok", 0.0, pytest.approx(1 + GAMMA + EPSILON))
    reversed_ = score_completion(answer_text([0, 1, 3]), TARGETS)
    # 0.58688 + 0.2·1 + 0.1·(1 - 0.33195) = 0.85369 (0.853687 unrounded)
    assert reversed_.ndcg == pytest.approx(REVERSED_NDCG)
    assert reversed_.recall == pytest.approx(GAMMA)
    assert reversed_.alignment == pytest.approx(EPSILON * (1 - REVERSED_JS))
    assert reversed_.total == pytest.approx(0.853687, abs=1e-6)
    assert perfect.total > reversed_.total


def test_gate_gives_exactly_minus_point_one_and_minus_point_five():
    broken_json = score_completion("<answer>[1] beats [2]</answer>", TARGETS)
    assert (broken_json.status, broken_json.total) == ("json_invalid", -0.1)
    no_tags = score_completion('{"[1]": 3, "[2]": 1, "[3]": 0}', TARGETS)  # valid JSON, but no tags
    assert (no_tags.status, no_tags.total) == ("tags_missing", -0.5)
    assert (no_tags.ndcg, no_tags.recall, no_tags.alignment) == (0.0, 0.0, 0.0)
    no_reason = score_completion(answer_text(TARGETS), TARGETS, require_reason=True)
    assert (no_reason.status, no_reason.total) == ("tags_missing", -0.5)
    with_reason = score_completion(answer_text(TARGETS, reasoning="[1] defines it."), TARGETS, require_reason=True)
    assert with_reason.total == pytest.approx(1.3)


def test_a_missing_id_fails_the_gate_and_an_extra_id_is_ignored():
    partial = score_completion('<answer>{"[1]": 3, "[2]": 1}</answer>', TARGETS)
    assert (partial.status, partial.format, partial.total) == ("ids_missing", -0.1, -0.1)
    assert (partial.ndcg, partial.recall, partial.alignment) == (0.0, 0.0, 0.0)
    extra = score_completion('<answer>{"[1]": 3, "[2]": 1, "[3]": 0, "[9]": 10}</answer>', TARGETS)
    assert extra.status == "ids_extra" and extra.total == pytest.approx(1.3)  # the unknown id is ignored


GROUP = [8, 5, 2, 0]  # the worked example's targets


@pytest.mark.parametrize("text", ["<answer>{}</answer>", "<answer>{</answer>", '<answer>{"[1]": 8}</answer>',
                                  '<answer>{"[1]": 8, "[2]": 5, "[3]": 2}</answer>'])
def test_an_incomplete_answer_earns_less_than_any_complete_one(text):
    # Before: {} and a lone { earned 1.079 (a complete tie), [1] alone 1.245, and leaving out
    # the document of target 0 scored exactly like writing its 0 (1.3).
    reward = score_completion(text, GROUP).total
    assert reward == -0.1
    complete = [score_completion(answer_text(list(scores)), GROUP).total
                for scores in itertools.product([0, 4, 8], repeat=4)]
    assert reward < min(complete)
    assert score_completion(answer_text(GROUP[::-1]), GROUP).total == pytest.approx(0.852, abs=1e-3)


def test_explicit_gains_replace_the_targets_for_ndcg_and_recall_only():
    gains = [0, 0, 1]  # the teacher scores doc 3 lowest, yet the gains call only doc 3 relevant
    result = score_completion(answer_text([0, 1, 3]), TARGETS, gains)
    assert result.ndcg == 1.0 and result.recall == pytest.approx(GAMMA)
    assert result.alignment == pytest.approx(EPSILON * (1 - REVERSED_JS))  # alignment still uses the targets
    with pytest.raises(ValueError):
        score_completion(answer_text(TARGETS), TARGETS, [1, 0])


def test_relevant_marks_replace_positive_gains_for_recall_only():
    text = answer_text([0, 1, 3])  # order 3,2,1
    # Positive gains: docs 1 and 2 relevant; the top 2 (docs 3, 2) hold one of them: Recall@2 = 0.5.
    assert score_completion(text, TARGETS, k=2).recall == pytest.approx(GAMMA * 0.5)
    # Marks: only doc 3 relevant, and it is in the top 2: Recall@2 = 1. NDCG still uses the gains.
    marked = score_completion(text, TARGETS, relevant=[0, 0, 1], k=2)
    assert marked.recall == pytest.approx(GAMMA)
    assert marked.ndcg == pytest.approx(ndcg_at_k([0, 1, 3], TARGETS, 2))
    assert score_completion(text, TARGETS, relevant=[0, 0, 0]).recall == 0.0  # nothing relevant
    with pytest.raises(ValueError):
        score_completion(text, TARGETS, relevant=[1])


def test_switches_zero_out_their_terms():
    text = answer_text([0, 1, 3])
    no_utility = score_completion(text, TARGETS, utility=False)
    assert (no_utility.ndcg, no_utility.recall) == (0.0, 0.0)
    assert no_utility.total == pytest.approx(EPSILON * (1 - REVERSED_JS))
    no_alignment = score_completion(text, TARGETS, alignment=False)
    assert no_alignment.alignment == 0.0 and no_alignment.total == pytest.approx(REVERSED_NDCG + GAMMA)
    neither = score_completion(text, TARGETS, utility=False, alignment=False)
    assert neither.total == 0.0
    assert score_completion("no answer", TARGETS, utility=False, alignment=False).total == -0.5  # gate stays


def test_normalized_gain_by_hand():
    gains = [1, 0, 3]  # prompt order 1,2,3 puts the best document last
    # NDCG_initial = (1/1 + 0/log2(3) + 3/2) / (3 + 1/log2(3)) = 2.5/3.63093 = 0.68853
    initial = 2.5 / IDEAL_DCG
    assert prompt_order_ndcg(gains) == pytest.approx(initial)
    # Order 3,2,1: DCG = 3 + 0 + 1/2 = 3.5, NDCG = 0.96394; gain = (0.96394-0.68853)/(1-0.68853) = 0.88423
    assert normalized_ndcg([0, 5, 9], gains) == pytest.approx((3.5 / IDEAL_DCG - initial) / (1 - initial))
    assert normalized_ndcg([0, 5, 9], gains) == pytest.approx(0.884228, abs=1e-6)
    assert normalized_ndcg([5, 0, 9], gains) == pytest.approx(1.0)  # the ideal order 3,1,2
    assert normalized_ndcg([9, 5, 0], gains) == 0.0  # same as the prompt order
    assert normalized_ndcg([0, 9, 5], gains) == 0.0  # order 2,3,1 is worse than the prompt order: clipped to 0
    # Degenerate: the prompt order is already ideal (best == initial), so the plain NDCG is used.
    assert normalized_ndcg([0, 1, 3], TARGETS) == pytest.approx(REVERSED_NDCG)
    assert normalized_ndcg([1, 1, 1], [0, 0, 0]) == 0.0
    result = score_completion(answer_text([0, 5, 9]), [1, 0, 3], normalized_gain=True)
    assert result.ndcg == pytest.approx(0.884228, abs=1e-6)
    assert ranking_utility([0, 5, 9], gains, normalized=True).total == pytest.approx(0.884228 + GAMMA, abs=1e-6)


# --- the TRL reward function ---------------------------------------------------------------------

def test_reward_func_takes_chat_completions_and_string_completions():
    func = make_reward_func(get_preset("smoke"))
    assert func.__name__ == "grouprank_reward"
    texts = [answer_text(TARGETS), answer_text([0, 1, 3]), "<answer>oops</answer>", "nothing"]
    expected = [pytest.approx(1.3), pytest.approx(0.853687, abs=1e-6), -0.1, -0.5]
    columns = dict(target_scores=[TARGETS] * 4, doc_ids=[["a", "b", "c"]] * 4, trainer_state=None,
                   log_extra=lambda *a: None)  # columns the reward does not use are ignored
    assert func(prompts=[[]] * 4, completions=[chat(t) for t in texts], **columns) == expected
    assert func(prompts=[""] * 4, completions=texts, completion_ids=[[]] * 4, **columns) == expected


def test_reward_func_reads_gains_and_the_preset_switches():
    text = [answer_text([0, 1, 3])]
    plain = make_reward_func(get_preset("smoke"))
    assert plain([""], text, target_scores=[TARGETS], gains=[[0, 0, 1]]) == [
        pytest.approx(1 + GAMMA + 0.0668047, abs=1e-6)]
    # synthesis.py's rows carry `relevant` too: with nothing marked relevant, Recall (and its 0.2) is gone.
    assert plain([""], text, target_scores=[TARGETS], gains=[TARGETS], relevant=[[0, 0, 0]]) == [
        pytest.approx(REVERSED_NDCG + 0.0668047, abs=1e-6)]
    assert make_reward_func(get_preset("smoke", reward_utility=False))([""], text, target_scores=[TARGETS]) == [
        pytest.approx(EPSILON * (1 - REVERSED_JS))]
    assert make_reward_func(get_preset("smoke", reward_alignment=False))([""], text, target_scores=[TARGETS]) == [
        pytest.approx(REVERSED_NDCG + GAMMA)]
    needs_reason = make_reward_func(get_preset("smoke", reasoning=True))
    assert needs_reason([""], [answer_text(TARGETS)], target_scores=[TARGETS]) == [-0.5]
    normalized = make_reward_func(get_preset("smoke", reward_normalized_gain=True))
    assert normalized([""], [answer_text([0, 5, 9])], target_scores=[[1, 0, 3]]) == [
        pytest.approx(0.884228 + GAMMA + group_alignment([0, 5, 9], [1, 0, 3]), abs=1e-6)]


def test_log_metric_receives_every_term_as_batch_means():
    logged = {}
    func = make_reward_func(get_preset("smoke"))
    texts = [answer_text(TARGETS), answer_text([0, 1, 3]), "<answer>oops</answer>", "nothing"]
    totals = func([""] * 4, [chat(t) for t in texts], target_scores=[TARGETS] * 4,
                  log_metric=lambda name, value: logged.__setitem__(name, value))
    assert set(logged) == {"reward/format", "reward/ndcg", "reward/recall", "reward/alignment", "format_failure"}
    assert logged["reward/format"] == pytest.approx((0 + 0 - 0.1 - 0.5) / 4)
    assert logged["reward/ndcg"] == pytest.approx((1 + REVERSED_NDCG) / 4)
    assert logged["reward/recall"] == pytest.approx(2 * GAMMA / 4)
    assert logged["reward/alignment"] == pytest.approx((EPSILON + EPSILON * (1 - REVERSED_JS)) / 4)
    assert logged["format_failure"] == 0.5  # two of four answers fail the gate
    terms = sum(logged[f"reward/{t}"] for t in ("format", "ndcg", "recall", "alignment"))
    assert terms == pytest.approx(sum(totals) / 4)  # the logged terms add up to the mean reward


def test_worked_example_table():
    table = rewards.worked_example()
    assert list(table.index) == ["perfect", "reversed", "all tied", "first doc only", "empty answer",
                                 "broken JSON", "no tags"]
    assert list(table["total"]) == [1.3, 0.852, 1.079, -0.1, -0.1, -0.1, -0.5]
    total = table["total"]  # what notebook 03 asserts
    assert total.iloc[0] == total.max() and total.iloc[0] > total.iloc[1] > 0 > total.iloc[-1]
    terms = table[["format", "ndcg", "recall", "alignment"]].sum(axis=1)
    assert list(terms) == pytest.approx(list(total), abs=2e-3)  # each column is rounded to 3 places


# --- the columns are checked ------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("columns, message", [
    (dict(target_scores=[3, NAN, 0]), r"target_scores\[1\] is nan"),
    (dict(target_scores=[INF, 1, 0]), r"target_scores\[0\] is inf"),
    (dict(target_scores=[3, 1, -INF]), r"target_scores\[2\] is -inf"),
    (dict(target_scores=TARGETS, gains=[1, NAN, 0]), r"gains\[1\] is nan"),
    (dict(target_scores=TARGETS, gains=[INF, 1, 0]), r"gains\[0\] is inf"),
    (dict(target_scores=TARGETS, relevant=[0, NAN, 1]), r"relevant\[1\] is nan"),
    (dict(target_scores=TARGETS, relevant=[0, 0, INF]), r"relevant\[2\] is inf"),
    (dict(target_scores=[-0.5]), r"target_scores\[0\] is -0.5"),  # sums to 0 after smoothing
    (dict(target_scores=[]), "target_scores is empty"),
    (dict(target_scores=TARGETS, gains=[1, 0]), "gains has 2 entries for a group of 3"),
    (dict(target_scores=TARGETS, relevant=[1, 0, 0, 1]), "relevant has 4 entries for a group of 3"),
    (dict(target_scores=None), "target_scores must be a list of numbers"),
    (dict(target_scores="310"), "target_scores must be a list of numbers, got the text"),
    (dict(target_scores=[3, "high", 0]), "target_scores must be a list of numbers"),
    (dict(target_scores=[3, 10**400, 0]), "target_scores must be a list of numbers"),
])
def test_bad_columns_raise_a_clear_error(columns, message):
    # Before: NaN or infinite values earned every readable answer the full 1.3, [-0.5] raised
    # ZeroDivisionError, and the length check blamed gains and marks together.
    for text in (answer_text([3, 1, 0]), "no answer"):
        with pytest.raises(ValueError, match=message):
            score_completion(text, **columns)


def test_a_distribution_needs_non_negative_smoothed_scores_with_a_positive_sum():
    with pytest.raises(ValueError, match="no distribution"):
        score_distribution([0, 0], smoothing=0)  # was ZeroDivisionError
    with pytest.raises(ValueError, match="no distribution"):
        group_alignment([1, 2], [-1, 3])  # was a math domain error in the logarithm
    assert score_distribution([1, 0], smoothing=0) == [1.0, 0.0]


def test_reward_func_names_the_missing_column_and_the_bad_row():
    func = make_reward_func(get_preset("smoke"))
    texts = [answer_text(TARGETS)] * 3
    with pytest.raises(ValueError, match="needs a target_scores column"):  # was a TypeError
        func([""] * 3, texts)
    with pytest.raises(ValueError, match="column target_scores has 2 rows for 3 completions"):  # zip(strict)
        func([""] * 3, texts, target_scores=[TARGETS] * 2)
    with pytest.raises(ValueError, match="column gains has 4 rows for 3 completions"):
        func([""] * 3, texts, target_scores=[TARGETS] * 3, gains=[TARGETS] * 4)
    with pytest.raises(ValueError, match=r"row 2: target_scores\[0\] is nan"):  # was 1.3
        func([""] * 3, texts, target_scores=[TARGETS, TARGETS, [NAN, 1, 0]])
    with pytest.raises(ValueError, match="row 1: target_scores must be a list of numbers"):
        func([""] * 3, texts, target_scores=[TARGETS, None, TARGETS])
    with pytest.raises(ValueError, match=r"row 0: relevant\[1\] is inf"):
        func([""] * 3, texts, target_scores=[TARGETS] * 3, relevant=[[0, INF, 1], None, None])
    # A None row of an optional column gets the default, as if the column were absent.
    assert func([""], texts[:1], target_scores=[TARGETS], gains=[None], relevant=[None]) == [pytest.approx(1.3)]
