"""Teachers, their disk cache (grouprank_mini.teachers), and the OpenAI-compatible endpoint backend
(grouprank_mini.endpoint) they can run on.

The endpoint is tested against a scripted HTTP server on 127.0.0.1 started by the tests;
nothing here touches the outside network.
"""
import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from grouprank_mini import get_preset, groups, llm, prompts, runs, teachers
from grouprank_mini.data import Collection
from grouprank_mini.endpoint import EndpointBackend, EndpointError
from grouprank_mini.llm import LLM
from grouprank_mini.retrieval import BM25
from grouprank_mini.teachers import (BM25Teacher, CachedTeacher, DenseTeacher, HumanTeacher, ListwiseLLMTeacher,
                                     PointwiseLLMTeacher)

KEY_ENV, SECRET = "GROUPRANK_TEST_API_KEY", "sk-test-very-secret-4711"
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


# --- endpoint backend -------------------------------------------------------------------------------------

class Script:
    """What the fake server does for each request, in turn; the last action repeats."""

    def __init__(self, *actions):
        self.actions, self.seen = list(actions), []

    def next(self):
        return self.actions.pop(0) if len(self.actions) > 1 else self.actions[0]


def reply_json(content: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.script.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        action, arg = self.server.script.next()
        if action == "sleep":
            time.sleep(arg)
            action, arg = "echo", None
        if action == "status":  # echo the Authorization header back, as a careless server might
            payload = f"error; you sent {self.headers.get('Authorization')}".encode()
            self.send_response(arg)
        elif action == "raw":
            payload = arg
            self.send_response(200)
        else:  # echo: the last user message, so a test can check the order of replies
            payload = reply_json(body["messages"][-1]["content"])
            self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.script = Script(("echo", None))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def endpoint(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    host, port = server.server_address
    return EndpointBackend(f"http://{host}:{port}/v1/", "teacher-model", api_key_env=KEY_ENV, timeout=2.0,
                           max_retries=2, backoff=0.0, workers=3)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_endpoint_success_replies_in_prompt_order(server, endpoint):
    # Requests run in parallel threads, so they may *arrive* in any order; replies must not.
    assert endpoint.generate([user("one"), user("two"), user("three")], max_new_tokens=7) == ["one", "two", "three"]
    bodies = sorted((s["body"]["messages"][0]["content"], s) for s in server.script.seen)
    assert [content for content, _ in bodies] == ["one", "three", "two"]
    for _, seen in bodies:
        assert seen["path"] == "/v1/chat/completions" and seen["auth"] == f"Bearer {SECRET}"
        assert seen["body"]["model"] == "teacher-model" and seen["body"]["max_tokens"] == 7
        assert seen["body"]["temperature"] == 0


def test_endpoint_without_key_sends_no_authorization(server, endpoint, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    endpoint.generate([user("x")])
    assert server.script.seen[0]["auth"] is None


def test_endpoint_retries_http_500_then_succeeds(server, endpoint):
    server.script = Script(("status", 500), ("status", 503), ("echo", None))
    assert endpoint.generate([user("hello")]) == ["hello"]
    assert len(server.script.seen) == 3 and endpoint.requests == 3


def test_endpoint_gives_up_after_the_retry_bound(server, endpoint, caplog):
    server.script = Script(("status", 500))
    with caplog.at_level(logging.DEBUG), pytest.raises(EndpointError, match="gave up after 3 attempts") as error:
        endpoint.generate([user("hello")])
    assert len(server.script.seen) == 3
    assert SECRET not in str(error.value) and "***" in str(error.value)  # the echoed key is scrubbed
    assert SECRET not in caplog.text and "attempt 1 failed" in caplog.text


def test_endpoint_timeout_is_retried_then_reported(server, endpoint):
    server.script = Script(("sleep", 1.0))
    endpoint.timeout = 0.2
    start = time.perf_counter()
    with pytest.raises(EndpointError, match="gave up after 3 attempts.*(timed out|Timeout)"):
        endpoint.generate([user("slow")])
    assert time.perf_counter() - start < 3.0 and len(server.script.seen) == 3


def test_endpoint_timeout_then_success(server, endpoint):
    server.script = Script(("sleep", 1.0), ("echo", None))
    endpoint.timeout = 0.3
    assert endpoint.generate([user("eventually")]) == ["eventually"]


MALFORMED = [b"not json at all", b'{"choices": []}', b'{"choices": [{"message": {"content": null}}]}']


@pytest.mark.parametrize("raw", MALFORMED)
def test_endpoint_malformed_reply_reported_after_the_bound(server, endpoint, raw):
    server.script = Script(("raw", raw))
    with pytest.raises(EndpointError, match="malformed reply"):
        endpoint.generate([user("x")])
    assert len(server.script.seen) == 3


def test_endpoint_client_error_is_not_retried(server, endpoint):
    server.script = Script(("status", 401))
    with pytest.raises(EndpointError, match="HTTP 401") as error:
        endpoint.generate([user("x")])
    assert len(server.script.seen) == 1 and SECRET not in str(error.value)


def test_endpoint_never_exposes_the_key(endpoint):
    assert SECRET not in repr(endpoint) and SECRET not in str(vars(endpoint))
    assert KEY_ENV in repr(endpoint)


def test_endpoint_failure_loses_nothing_cached(server, endpoint, tmp_path):
    """Pool A is cached; the server then fails on pool B; A survives, and once the server is
    back A costs no request while B is computed."""
    server.script = Script(("raw", reply_json('<answer>{"[1]": 4}</answer>')))
    teacher = CachedTeacher(PointwiseLLMTeacher(endpoint, TEACH), tmp_path)
    pool_a, pool_b = pool([1, 2, 3]), pool([4, 5])
    first = teacher.rank("query a", *pool_a)
    server.script = Script(("status", 500))
    with pytest.raises(EndpointError):
        teacher.rank("query b", *pool_b)
    assert len(list(tmp_path.rglob("*.json"))) == 1
    server.script = Script(("raw", reply_json('<answer>{"[1]": 6}</answer>')))
    before = endpoint.requests
    assert teacher.rank("query a", *pool_a) == first and endpoint.requests == before
    teacher.rank("query b", *pool_b)
    assert endpoint.requests == before + 2 and teacher.misses == 2
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or SECRET not in path.read_text()


def test_teacher_backend_uses_the_preset_endpoint(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    backend = teachers.teacher_backend(get_preset("gpu", teacher_endpoint="http://127.0.0.1:9/v1"))
    assert isinstance(backend, EndpointBackend) and backend.model_id == "Qwen/Qwen2.5-7B-Instruct"
    assert backend.url == "http://127.0.0.1:9/v1" and SECRET not in repr(backend)
