"""Teachers and their disk caches (grouprank_mini.teachers): rankings per pool, replies per call.

The OpenAI-compatible endpoint backend they can run on is tested in test_endpoint.py.
"""
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest

from grouprank_mini import get_preset, groups, llm, prompts, runs, synthesis, teachers
from grouprank_mini.data import Collection
from grouprank_mini.llm import LLM
from grouprank_mini.retrieval import BM25, Dense
from grouprank_mini.teachers import (BM25PRFTeacher, BM25Teacher, CachedBackend, CachedTeacher, DenseTeacher, HumanTeacher,
                                     ListwiseLLMTeacher, PointwiseLLMTeacher)

TEACH = get_preset("smoke", doc_max_chars=100)  # what the LLM teachers read of a preset


# --- fakes -------------------------------------------------------------------------------------

def value_of(text: str) -> int:
    """Test documents carry their true usefulness as 'value N'."""
    return int(re.search(r"value (\d+)", text).group(1))


def docs_in_prompt(messages: list[dict]) -> list[str]:
    return re.findall(r"^\[\d+\]\. (.*)$", messages[-1]["content"], flags=re.M)


class OracleBackend:
    """A chat backend that answers perfectly from the 'value N' in each document, and counts calls."""

    def __init__(self):
        self.calls = 0

    def generate(self, prompts_, max_new_tokens=None):
        self.calls += len(prompts_)
        return [self.reply(messages) for messages in prompts_]

    def reply(self, messages):
        values = [value_of(doc) for doc in docs_in_prompt(messages)]
        if "Order all" in messages[-1]["content"]:
            order = sorted(range(len(values)), key=lambda i: -values[i])
            return "<answer>" + " > ".join(f"[{i + 1}]" for i in order) + "</answer>"
        return prompts.answer_text([min(v, 10) for v in values])


def pool(values: list[int]) -> tuple[list[str], list[str]]:
    return [f"d{i}" for i in range(len(values))], [f"document with value {v}" for v in values]


# --- ranking helpers and LLM teachers ------------------------------------------------------------

def test_rank_by_scores_keeps_pool_order_for_ties():
    assert runs.rank_by_scores(["a", "b", "c", "d"], [1.0, 3.0, 1.0, 3.0]) == ["b", "d", "a", "c"]


def test_window_starts_back_to_front():
    assert groups.window_starts(50, 20, 10) == [30, 20, 10, 0]
    assert groups.window_starts(15, 20, 10) == [0]
    assert groups.window_starts(6, 4, 2) == [2, 0]


def test_pointwise_llm_teacher_one_document_per_call():
    backend = OracleBackend()
    ids, texts = pool([3, 9, 0, 9, 5])
    ranking = PointwiseLLMTeacher(backend, TEACH).rank("q", ids, texts)
    assert ranking == ["d1", "d3", "d4", "d0", "d2"]  # the tie 9/9 keeps pool order
    assert backend.calls == 5


def test_pointwise_llm_teacher_unreadable_reply_scores_zero():
    class Garbage(OracleBackend):
        def reply(self, messages):
            return "no idea" if value_of(docs_in_prompt(messages)[0]) == 8 else super().reply(messages)

    ids, texts = pool([2, 8, 1])
    assert PointwiseLLMTeacher(Garbage(), TEACH).rank("q", ids, texts) == ["d0", "d2", "d1"]


def test_listwise_sliding_window_merge_hand_computed():
    """Pool values [1..6] worst first, window 4, step 2: windows at 2 then 0.
    [3,4,5,6] -> [6,5,4,3] gives 1,2,6,5,4,3; then [1,2,6,5] -> [6,5,2,1] gives 6,5,2,1,4,3:
    the top window-step = 2 are exact, the rest keeps the known sliding-window approximation."""
    backend = OracleBackend()
    ids, texts = pool([1, 2, 3, 4, 5, 6])
    ranking = ListwiseLLMTeacher(backend, TEACH, window=4, step=2).rank("q", ids, texts)
    assert ranking == ["d5", "d4", "d1", "d0", "d3", "d2"]
    assert backend.calls == 2


def test_listwise_single_window_when_pool_fits():
    backend = OracleBackend()
    ids, texts = pool([4, 1, 7, 2])
    assert ListwiseLLMTeacher(backend, TEACH).rank("q", ids, texts) == ["d2", "d0", "d3", "d1"]
    assert backend.calls == 1


def test_llm_teachers_on_tiny_random_model(tmp_path):
    """Real generation path (rerank.LLM, chat template, parsing) with random weights: the
    rankings are permutations of the pool, and the cache makes the second pass free."""
    tokenizer = llm.load_tokenizer()
    engine = LLM(llm.tiny_random_model(tokenizer), tokenizer, get_preset("smoke"))
    ids, texts = pool([1, 5, 3, 8, 2, 6])
    short = get_preset("smoke", doc_max_chars=80)
    for teacher in (PointwiseLLMTeacher(engine, short), PointwiseLLMTeacher(engine, short, scoring="logprob"),
                    ListwiseLLMTeacher(engine, short, window=4, step=2)):
        cached = CachedTeacher(teacher, tmp_path)
        first = cached.rank("wing flutter", ids, texts)
        calls = engine.stats.calls
        assert sorted(first) == sorted(ids)
        assert cached.rank("wing flutter", ids, texts) == first
        assert engine.stats.calls == calls and (cached.hits, cached.misses) == (1, 1)
    assert teacher.identity()["model"] == "embedded"


# --- offline teachers ---------------------------------------------------------------------------------

@pytest.fixture
def small() -> Collection:
    docs = {"a": "wing experiments at supersonic speed in wind tunnels", "b": "boundary layer heat transfer",
            "c": "supersonic wing flutter", "d": "cooking pasta"}
    queries = {"1": "supersonic wing flutter", "2": "heat transfer"}
    return Collection("small", docs, queries, {"1": {"c": 3, "a": 1, "d": 0}, "2": {"b": 2}})


def test_bm25_teacher_uses_collection_scores(small):
    ranking = BM25Teacher(BM25(small)).rank(small.queries["1"], ["d", "b", "a", "c"], ["", "", "", ""])
    assert ranking[:2] == ["c", "a"] and set(ranking[2:]) == {"b", "d"}


def test_rm3_feedback_reaches_a_document_without_query_terms():
    docs = {"a": "supersonic wing flutter tests", "b": "supersonic wing flutter model",
            "c": "flutter of panels", "d": "cooking pasta"}
    index = BM25(Collection("fb", docs, {"1": "supersonic wing"}, {}))
    plain, expanded = index.all_scores("supersonic wing"), index.rm3_scores("supersonic wing", feedback_docs=2)
    c, d = index.row["c"], index.row["d"]
    assert plain[c] == 0 and expanded[c] > 0 and expanded[d] == 0  # "flutter" came from the feedback documents
    assert np.argsort(-expanded)[:2].tolist() == np.argsort(-plain)[:2].tolist()  # the query's own matches stay first


def test_rocchio_vector_moves_toward_the_feedback_documents():
    stub = SimpleNamespace(encode=lambda texts: np.array([[1.0, 0.0]]), matrix=np.array([[0.0, 1.0], [1.0, 0.0]]))
    moved = Dense.rocchio_vector(stub, "q", [0])
    assert np.allclose(moved, np.array([0.6, 0.4]) / np.hypot(0.6, 0.4))
    assert np.allclose(Dense.rocchio_vector(stub, "q", []), [1.0, 0.0])  # no feedback: the query itself


def test_prf_teachers_from_preset_strings(small):
    preset = get_preset("smoke")
    prf = teachers.make_teacher("bm25-prf", "pointwise", preset, collection=small)
    assert isinstance(prf, BM25PRFTeacher) and prf.identity()["stemmer"] == "english"
    assert prf.rank(small.queries["1"], ["d", "b", "a", "c"], [""] * 4)[0] == "c"
    dense = SimpleNamespace(doc_ids=list(small.docs), matrix=None)
    listwise = teachers.make_teacher("minilm-prf", "listwise", preset, collection=small, dense=dense)
    assert listwise.name == "minilm-prf" and listwise.identity()["feedback"]["name"] == "bm25-prf"
    with pytest.raises(ValueError, match="collection"):
        teachers.make_teacher("bm25-prf", "pointwise", preset)


def test_dense_teacher_reuses_stored_vectors_and_encodes_unknown_docs():
    import numpy as np

    class Encoder:
        doc_ids = ["x", "y"]
        matrix = np.array([[1.0, 0.0], [0.0, 1.0]])
        vectors = {"q": [0.6, 0.8], "text of x": [0.0, 1.0], "text of z": [1.0, 0.0]}

        def encode(self, texts):
            return np.array([self.vectors[t] for t in texts])  # KeyError for a text it should not see

    teacher = DenseTeacher(Encoder())
    assert teacher.rank("q", ["x", "y"], ["not encodable", "not encodable"]) == ["y", "x"]  # stored rows
    assert teacher.rank("q", ["z", "x"], ["text of z", "text of x"]) == ["x", "z"]  # z unknown: encode the texts


def test_human_teacher_is_labelled_not_answer_free(small):
    teacher = HumanTeacher(small)
    assert teacher.rank(small.queries["1"], ["d", "b", "a", "c"], [""] * 4) == ["c", "a", "d", "b"]
    assert teacher.answer_free is False and "NOT answer-free" in teacher.name
    with pytest.raises(KeyError):
        teacher.rank("a query it never saw", ["a"], [""])


def test_make_teacher_maps_preset_strings(small):
    preset = get_preset("smoke")
    backend = OracleBackend()
    assert isinstance(teachers.make_teacher("llm", "pointwise", preset, backend=backend), PointwiseLLMTeacher)
    assert isinstance(teachers.make_teacher("llm", "listwise", preset, backend=backend), ListwiseLLMTeacher)
    assert isinstance(teachers.make_teacher("human", "listwise", preset, collection=small), HumanTeacher)
    assert isinstance(teachers.make_teacher("bm25", "pointwise", preset, bm25=BM25(small)), BM25Teacher)
    with pytest.raises(KeyError):
        teachers.make_teacher("gpt", "pointwise", preset)
    with pytest.raises(ValueError):
        teachers.make_teacher("llm", "pointwise", preset)  # no backend
    with pytest.raises(ValueError):
        teachers.make_teacher("bm25", "groupwise", preset)


# --- cache ----------------------------------------------------------------------------------------------

def test_cache_rerun_costs_no_call_and_key_covers_inputs(tmp_path, monkeypatch):
    backend = OracleBackend()
    cached = CachedTeacher(PointwiseLLMTeacher(backend, TEACH), tmp_path)
    ids, texts = pool([2, 7, 4])
    first = cached.rank("q", ids, texts)
    assert backend.calls == 3
    assert CachedTeacher(PointwiseLLMTeacher(backend, TEACH), tmp_path).rank("q", ids, texts) == first
    assert backend.calls == 3  # a new process (new wrapper) finds it on disk
    cached.rank("another query", ids, texts)
    cached.rank("q", ids, texts[:2] + ["document with value 9"])
    monkeypatch.setattr(prompts, "PROMPT_VERSION", "changed-wording")
    cached.rank("q", ids, texts)
    assert backend.calls == 12 and cached.misses == 4
    assert len(list(tmp_path.rglob("*.json"))) == 4


@pytest.mark.parametrize("damage", ["truncate", "garbage", "checksum", "not a permutation", "other key"])
def test_cache_corruption_is_recomputed(tmp_path, damage):
    backend = OracleBackend()
    ids, texts = pool([2, 7, 4])
    first = CachedTeacher(PointwiseLLMTeacher(backend, TEACH), tmp_path).rank("q", ids, texts)
    path = next(tmp_path.rglob("*.json"))
    entry = json.loads(path.read_text())
    if damage == "truncate":
        path.write_text(path.read_text()[:25])
    elif damage == "garbage":
        path.write_bytes(b"\x00\xff not json")
    elif damage == "checksum":
        path.write_text(json.dumps({**entry, "ranking": list(reversed(entry["ranking"]))}))
    elif damage == "not a permutation":
        ranking = entry["ranking"][:2]
        path.write_text(json.dumps({**entry, "ranking": ranking, "checksum": teachers._checksum(ranking)}))
    else:
        path.write_text(json.dumps({**entry, "key": "0" * 64}))
    again = CachedTeacher(PointwiseLLMTeacher(backend, TEACH), tmp_path)
    assert again.rank("q", ids, texts) == first
    assert (again.recovered, again.misses, backend.calls) == (1, 1, 6)
    assert json.loads(path.read_text())["ranking"] == first  # repaired on disk
    assert not list(tmp_path.rglob("*.tmp"))


# --- call cache ----------------------------------------------------------------------------------------------

class DyingBackend(OracleBackend):
    """Answers `lives` prompts, then fails every call, like a process killed in the middle of a pool."""

    def __init__(self, lives: int, preset=None):
        super().__init__()
        self.lives, self.batches = lives, []
        if preset is not None:
            self.preset = preset

    def generate(self, prompts_, max_new_tokens=None):
        if self.calls + len(prompts_) > self.lives:
            raise KeyboardInterrupt
        self.batches.append(len(prompts_))
        return super().generate(prompts_, max_new_tokens)


def behind_both_caches(backend, root):
    return CachedTeacher(PointwiseLLMTeacher(CachedBackend(backend, root / "calls"), TEACH), root / "teachers")


def test_interrupted_pool_resends_only_the_unfinished_calls(tmp_path):
    ids, texts = pool([3, 9, 0, 8, 5, 1, 7])  # n = 7 different calls
    with pytest.raises(KeyboardInterrupt):
        behind_both_caches(DyingBackend(lives=4), tmp_path).rank("q", ids, texts)  # dies after k = 4
    assert len(list((tmp_path / "calls").rglob("*.json"))) == 4 and not (tmp_path / "teachers").exists()
    backend = DyingBackend(lives=100)  # the same model (class name) back again
    again = behind_both_caches(backend, tmp_path)
    assert again.rank("q", ids, texts) == PointwiseLLMTeacher(OracleBackend(), TEACH).rank("q", ids, texts)
    assert backend.calls == 7 - 4
    again.rank("q", ids, texts)
    assert backend.calls == 3 and again.hits == 1  # a finished pool: the ranking cache answers


def test_call_cache_keeps_a_local_model_batch_by_batch(tmp_path):
    """A backend with a preset (llm.LLM) gets `batch_size` prompts per call, each batch kept when done."""
    ids, texts = pool([3, 9, 0, 8, 5, 1, 7, 2])
    dying = DyingBackend(lives=7, preset=get_preset("smoke", batch_size=3))
    with pytest.raises(KeyboardInterrupt):
        behind_both_caches(dying, tmp_path).rank("q", ids, texts)
    assert dying.batches == [3, 3]  # the third batch of 3 would pass the 7th call
    backend = DyingBackend(lives=100, preset=dying.preset)
    behind_both_caches(backend, tmp_path).rank("q", ids, texts)
    assert backend.calls == 8 - 6 and backend.batches == [2]


def test_call_cache_key_covers_model_messages_budget_and_prompt_version(tmp_path, monkeypatch):
    backend = OracleBackend()
    cached = CachedBackend(backend, tmp_path)
    messages = [prompts.groupwise_messages("q", ["document with value 4"], 100)]
    first = cached.generate(messages, max_new_tokens=20)
    assert CachedBackend(backend, tmp_path).generate(messages, max_new_tokens=20) == first and backend.calls == 1
    cached.generate(messages, max_new_tokens=30)
    backend.model_id = "another-model"
    cached.generate(messages, max_new_tokens=20)
    monkeypatch.setattr(prompts, "PROMPT_VERSION", "changed-wording")
    cached.generate(messages, max_new_tokens=20)
    assert backend.calls == 4 and (cached.hits, cached.misses) == (0, 4)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "checksum", "not text", "other key"])
def test_call_cache_corruption_is_recomputed(tmp_path, damage):
    backend = OracleBackend()
    messages = [prompts.groupwise_messages("q", ["document with value 4"], 100)]
    first = CachedBackend(backend, tmp_path).generate(messages)
    path = next(tmp_path.rglob("*.json"))
    entry = json.loads(path.read_text())
    damaged = {"truncate": path.read_text()[:25], "garbage": "\x00 not json",
               "checksum": json.dumps({**entry, "reply": "<answer>{}</answer>"}),
               "not text": json.dumps({**entry, "reply": 4, "checksum": teachers._checksum(4)}),
               "other key": json.dumps({**entry, "key": "0" * 64})}[damage]
    path.write_text(damaged)
    again = CachedBackend(backend, tmp_path)
    assert again.generate(messages) == first and (again.cache.recovered, backend.calls) == (1, 2)
    assert json.loads(path.read_text())["reply"] == first[0]  # repaired on disk
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [path.name]  # no temporary file left


def test_call_cache_passes_on_the_backend_model_and_stats(tmp_path):
    engine = SimpleNamespace(model_id="m", stats=llm.GenerationStats(calls=3), generate=None)
    cached = CachedBackend(engine, tmp_path)
    assert cached.model_id == "m" and cached.stats is engine.stats
    assert teachers.model_id_of(CachedBackend(OracleBackend(), tmp_path)) == "OracleBackend"


def test_make_teachers_puts_llm_teachers_behind_one_call_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUPRANK_CACHE", str(tmp_path))
    preset = get_preset("smoke", pointwise_teacher="llm", listwise_teacher="llm")
    oracle = OracleBackend()
    point, listwise = synthesis.make_teachers(preset, None, SimpleNamespace(bm25=None, dense=None), oracle)
    backend = point.teacher.reranker.backend
    assert isinstance(backend, CachedBackend) and backend is listwise.teacher.reranker.backend
    assert backend.backend is oracle and backend.cache.root == tmp_path / "calls"
    assert point.identity()["model"] == "OracleBackend"  # the wrapped backend names the model
