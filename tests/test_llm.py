"""The batched engine (grouprank_mini.llm.LLM): the shared-prefix cache changes what is computed,
never what comes out."""
import pytest
import torch

from grouprank_mini import get_preset, llm, prompts

PRESET = get_preset("smoke", batch_size=4)
QUERY = "what is the flutter speed of a swept wing at supersonic mach numbers"
DOCS = [f"document {i} about {topic}" for i, topic in enumerate(
    ["wing flutter", "boundary layers", "heat transfer", "swept wings", "supersonic flow", "shells", "buckling"])]


@pytest.fixture(scope="module")
def tokenizer():
    return llm.load_tokenizer()


@pytest.fixture(scope="module")
def tiny(tokenizer):
    torch.set_num_threads(1)
    return llm.tiny_random_model(tokenizer)


def groups_of_one_query(sizes=(3, 2, 2)):
    out, start = [], 0
    for n in sizes:
        out.append(prompts.groupwise_messages(QUERY, DOCS[start:start + n], 80))
        start += n
    return out, list(sizes)


class Pair:
    """One model behind two engines, without and with the prefix cache."""

    def __init__(self, model, tokenizer):
        self.plain = llm.LLM(model, tokenizer, PRESET)
        self.cached = llm.LLM(model, tokenizer, PRESET, prefix_cache=True)


def flat(rows):
    return [x for row in rows for x in row]


def test_prefix_cache_gives_the_same_token_probability_scores(tiny, tokenizer):
    pair = Pair(tiny, tokenizer)
    messages, sizes = groups_of_one_query()
    plain, cached = pair.plain.slot_scores(messages, sizes), pair.cached.slot_scores(messages, sizes)
    assert [len(row) for row in cached] == sizes
    for a, b in zip(plain, cached):
        assert b == pytest.approx(a, abs=1e-4)
    assert pair.plain.stats.cached_tokens == 0
    # The instructions and the query are shared: computed once instead of three times.
    assert pair.cached.stats.cached_tokens > 2 * len(tokenizer(QUERY)["input_ids"])
    assert pair.cached.stats.prompt_tokens == pair.plain.stats.prompt_tokens  # the same prompts, counted alike


def test_prefix_cache_gives_the_same_greedy_text(tiny, tokenizer):
    pair = Pair(tiny, tokenizer)
    messages, _ = groups_of_one_query()
    assert pair.cached.generate(messages, max_new_tokens=12) == pair.plain.generate(messages, max_new_tokens=12)
    assert pair.cached.stats.cached_tokens > 0
    # One batch of three prompts: the first new token comes from the prefill, at most 11 more steps.
    assert pair.plain.stats.batches == 1 and 0 < pair.plain.stats.decode_steps <= 11


def test_identical_prompts_and_single_prompts_are_safe(tiny, tokenizer):
    pair = Pair(tiny, tokenizer)
    same = [prompts.groupwise_messages(QUERY, DOCS[:2], 80)] * 3
    assert flat(pair.cached.slot_scores(same, [2] * 3)) == pytest.approx(flat(pair.plain.slot_scores(same, [2] * 3)), abs=1e-4)
    pair.cached.stats.reset()
    pair.cached.slot_scores(same[:1], [2])
    assert pair.cached.stats.cached_tokens == 0  # one row: nothing to share


def test_shared_length_leaves_every_row_a_token_and_ignores_short_overlaps():
    assert llm.LLM._shared_length([list(range(20)), list(range(20))]) == 19
    assert llm.LLM._shared_length([list(range(20)), list(range(10)) + [99] * 10]) == 10
    assert llm.LLM._shared_length([[1, 2, 3, 4], [1, 2, 3, 5]]) == 0  # below the minimum: not worth a pass
    assert llm.LLM._shared_length([list(range(20))]) == 0


def test_embedded_model_scores_and_text_agree_with_and_without_the_cache(tokenizer):
    model = llm.load_model()
    pair = Pair(model, tokenizer)
    messages, sizes = groups_of_one_query()
    for a, b in zip(pair.plain.slot_scores(messages, sizes), pair.cached.slot_scores(messages, sizes)):
        assert b == pytest.approx(a, abs=1e-3)
    assert pair.cached.generate(messages, max_new_tokens=24) == pair.plain.generate(messages, max_new_tokens=24)
