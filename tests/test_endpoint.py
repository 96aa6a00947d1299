"""The OpenAI-compatible endpoint backend (grouprank_mini.endpoint), alone and behind the teachers'
caches, against scripted and misbehaving HTTP servers on 127.0.0.1 started and stopped by the
tests (500s, 429 with Retry-After, slowness, trickling, malformed JSON, resets, redirects, a key
echoed back). Nothing here touches the outside network; every server loop is bounded.
"""
import json
import logging
import socket
import struct
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from grouprank_mini import get_preset, teachers
from grouprank_mini.endpoint import EndpointBackend, EndpointError, retry_after_seconds, scrub_key
from grouprank_mini.teachers import CachedBackend, CachedTeacher, PointwiseLLMTeacher

KEY_ENV, SECRET = "GROUPRANK_TEST_API_KEY", "sk-test-very-secret-4711"
TEACH = get_preset("smoke", doc_max_chars=100)  # what the LLM teachers read of a preset
TRICKLE_BYTES, TRICKLE_GAP = 100, 0.05  # a trickle lasts 5 s at most, whatever the client does


def leaked(text: str) -> list[str]:
    """Every 8-character piece of the key found in `text` (what a cut key leaves behind)."""
    return [SECRET[i:i + 8] for i in range(len(SECRET) - 7) if SECRET[i:i + 8] in text]


def pool(values: list[int]) -> tuple[list[str], list[str]]:
    return [f"d{i}" for i in range(len(values))], [f"document with value {v}" for v in values]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# --- the scripted server ------------------------------------------------------------------------

class Script:
    """What the fake server does for each request, in turn; the last action repeats."""

    def __init__(self, *actions):
        self.actions, self.seen, self.lock = list(actions), [], threading.Lock()

    def next(self):
        with self.lock:  # requests arrive on several threads at once
            return self.actions.pop(0) if len(self.actions) > 1 else self.actions[0]


def reply_json(content: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()


class Handler(BaseHTTPRequestHandler):
    """Runs the server's script: ``act_<name>(arg)`` for each (name, arg) action."""

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.body = json.loads(self.rfile.read(length)) if length else None
        self.auth = self.headers.get("Authorization")
        self.server.script.seen.append({"method": self.command, "path": self.path, "auth": self.auth,
                                        "body": self.body})
        action, arg = self.server.script.next()
        getattr(self, f"act_{action}")(arg)

    do_GET = do_POST  # urllib turns a redirected POST into a GET

    def send(self, code: int, payload: bytes, headers: dict | None = None):
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def act_echo(self, _):  # the last user message, so a test can check the order of replies
        self.send(200, reply_json(self.body["messages"][-1]["content"]))

    def act_sleep(self, seconds):
        time.sleep(seconds)
        self.act_echo(None)

    def act_status(self, code):  # echo the Authorization header back, as a careless server might
        self.send(code, f"error; you sent {self.auth}".encode())

    def act_raw(self, payload):
        self.send(200, payload)

    def act_reply(self, spec):  # (status, body, headers), body may hold "{auth}"
        code, payload, headers = spec
        self.send(code, payload.replace(b"{auth}", (self.auth or "").encode()), headers)

    def act_echo_key(self, _):
        self.send(200, reply_json(f"<answer>{{}}</answer> you sent {self.auth}"))

    def act_redirect(self, spec):
        code, location = spec
        self.send(code, b"moved", {"Location": location})

    def act_trickle(self, where):
        """One byte every TRICKLE_GAP: of a header line ("headers") or of the body ("body")."""
        start = b"X-Slow: " if where == "headers" else f"Content-Length: {TRICKLE_BYTES}\r\n\r\n".encode()
        self.wfile.write(b"HTTP/1.1 200 OK\r\n" + start)
        self.close_connection = True
        try:
            for _ in range(TRICKLE_BYTES):
                time.sleep(TRICKLE_GAP)
                self.wfile.write(b"a")
        except OSError:  # the client hung up
            pass

    def act_reset(self, _):
        """Drop the connection with a TCP reset, before any reply."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """Start scripted servers on 127.0.0.1 (port 0); all are stopped when the test ends."""
    started = []

    def start(*actions):
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.script, httpd.daemon_threads = Script(*actions), True
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        started.append(httpd)
        return httpd

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server(serve):
    return serve(("echo", None))


@pytest.fixture
def endpoint(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    host, port = server.server_address
    return EndpointBackend(f"http://{host}:{port}/v1/", "teacher-model", api_key_env=KEY_ENV, timeout=2.0,
                           max_retries=2, backoff=0.0, workers=3)


# --- requests, retries and errors ----------------------------------------------------------------

def test_endpoint_success_replies_in_prompt_order(server, endpoint):
    # Requests run in parallel threads, so they may *arrive* in any order; replies must not.
    assert endpoint.generate([user("one"), user("two"), user("three")], max_new_tokens=7) == ["one", "two", "three"]
    bodies = sorted((s["body"]["messages"][0]["content"], s) for s in server.script.seen)
    assert [content for content, _ in bodies] == ["one", "three", "two"]
    for _, seen in bodies:
        assert seen["path"] == "/v1/chat/completions" and seen["auth"] == f"Bearer {SECRET}"
        assert seen["body"]["model"] == "teacher-model" and seen["body"]["max_tokens"] == 7
        assert seen["body"]["temperature"] == 0
    assert (endpoint.stats.calls, endpoint.stats.batches) == (3, 1)


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


MALFORMED = [b"not json at all", b'{"choices": []}', b'{"choices": [{"message": {"content": null}}]}',
             b'{"id": "no choices"}', b'{"choices": [{"message": {}}]}', b'{"choices": "text"}', b"[]", b"",
             b'{"choices": [{"message": {"content": "cut sh']


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


def test_endpoint_connection_reset_is_retried_then_reported(server, endpoint):
    server.script = Script(("reset", None), ("echo", None))
    assert endpoint.generate([user("again")]) == ["again"] and len(server.script.seen) == 2
    server.script = Script(("reset", None))
    with pytest.raises(EndpointError, match="gave up after 3 attempts"):
        endpoint.generate([user("x")])
    assert len(server.script.seen) == 3


def test_endpoint_stops_sending_after_a_failure(server, endpoint):
    """Once one prompt has failed for good, the prompts still queued are not sent."""
    server.script = Script(("status", 401), ("echo", None))
    endpoint.workers = 1
    with pytest.raises(EndpointError, match="HTTP 401"):
        endpoint.generate([user(str(i)) for i in range(5)])
    assert len(server.script.seen) < 5


def test_endpoint_never_exposes_the_key(endpoint):
    assert SECRET not in repr(endpoint) and SECRET not in str(vars(endpoint))
    assert KEY_ENV in repr(endpoint)


def test_teacher_backend_uses_the_preset_endpoint(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    backend = teachers.teacher_backend(get_preset("gpu", teacher_endpoint="http://127.0.0.1:9/v1"))
    assert isinstance(backend, EndpointBackend) and backend.model_id == "Qwen/Qwen2.5-7B-Instruct"
    assert backend.url == "http://127.0.0.1:9/v1" and SECRET not in repr(backend)


# --- redirects: the key goes to the configured URL only --------------------------------------------

@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_endpoint_refuses_a_redirect_to_another_origin(serve, server, endpoint, caplog, code):
    other = serve(("raw", reply_json("an answer from somewhere else")))
    target = f"http://127.0.0.1:{other.server_address[1]}"
    server.script = Script(("redirect", (code, f"{target}/v1/chat/completions?token=x")))
    with caplog.at_level(logging.DEBUG), pytest.raises(EndpointError) as error:
        endpoint.generate([user("x")])
    message = str(error.value)
    assert f"{endpoint.url}/chat/completions: HTTP {code} redirect to {target} refused" in message
    assert "token=x" not in message and not leaked(message) and not leaked(caplog.text)
    assert other.script.seen == []  # neither the key nor the prompt reached it
    assert len(server.script.seen) == 1  # a refused redirect is not retried


def test_endpoint_refuses_same_origin_redirects_too_and_hides_a_key_in_the_target(server, endpoint):
    server.script = Script(("redirect", (302, "/v2/chat/completions")))
    with pytest.raises(EndpointError, match="HTTP 302 redirect to http://127.0.0.1:"):
        endpoint.generate([user("x")])
    assert len(server.script.seen) == 1
    server.script = Script(("redirect", (301, f"https://{SECRET}.invalid/v1")))
    with pytest.raises(EndpointError, match=r"redirect to https://\*\*\*.invalid refused") as error:
        endpoint.generate([user("x")])
    assert not leaked(str(error.value))


# --- the key in what a server sends back -----------------------------------------------------------

KEY_ECHOES = {  # how the echoed key meets a cut: each leaked a piece of it before scrubbing came first
    "error body, key across the 200-byte cut": (500, b"e" * (200 - 7 - 12) + b"{auth} and more"),
    "client error, key across the cut": (400, b"e" * (200 - 7 - 12) + b"{auth}"),
    "malformed reply, key across the 80-byte cut": (200, b"m" * (80 - 7 - 12) + b"{auth}"),
    "server cut the key itself": (500, b"you sent " + f"Bearer {SECRET[:14]}".encode()),
    "only the end of the key": (500, b"...key ends " + SECRET[-10:].encode()),
    "key past the scrub window": (500, b"e" * 4090 + b"{auth}"),
}


@pytest.mark.parametrize("case", KEY_ECHOES)
def test_no_piece_of_an_echoed_key_reaches_an_error_or_a_log(server, endpoint, caplog, case):
    code, body = KEY_ECHOES[case]
    server.script = Script(("reply", (code, body, {})))
    with caplog.at_level(logging.DEBUG), pytest.raises(EndpointError) as error:
        endpoint.generate([user("x")])
    assert not leaked(str(error.value)) and not leaked(caplog.text)
    if case != "key past the scrub window":
        assert "***" in str(error.value)


def test_a_key_echoed_in_a_reply_is_not_cached(server, endpoint, tmp_path):
    server.script = Script(("echo_key", None))
    reply = CachedBackend(endpoint, tmp_path).generate([user("x")])[0]
    assert reply == "<answer>{}</answer> you sent Bearer ***"
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert len(files) == 1 and not leaked(files[0].read_text())


def test_scrub_key_hides_the_key_and_its_cut_ends():
    key = "abcdefghijklmnop"
    assert scrub_key(f"x{key}y {key[:9]}| |{key[-8:]} {key[3:10]} {key[:7]}", key) == f"x***y ***| |*** {key[3:10]} {key[:7]}"
    assert scrub_key("short key abc", "abc") == "short key ***" and scrub_key("text", None) == "text"


# --- time: a whole-request deadline, Retry-After ------------------------------------------------------

@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_trickling_server_is_cut_off_at_the_deadline_and_retried(server, endpoint, where):
    """Each byte comes well within `timeout`, so only a whole-request deadline ends the call:
    2 attempts of 0.5 s must end within twice that, not after the 5 s trickle."""
    server.script = Script(("trickle", where))
    endpoint.timeout, endpoint.deadline, endpoint.max_retries = 1.0, 0.5, 1
    start = time.perf_counter()
    with pytest.raises(EndpointError, match="gave up after 2 attempts.*deadline of 0.5 s"):
        endpoint.generate([user("x")])
    assert 0.9 < time.perf_counter() - start < 2 * 2 * 0.5
    assert len(server.script.seen) == 2


def test_a_request_cut_off_at_the_deadline_is_retried_to_success(server, endpoint):
    server.script = Script(("trickle", "body"), ("echo", None))
    endpoint.deadline = 0.3
    assert endpoint.generate([user("after a trickle")]) == ["after a trickle"]


def test_retry_after_seconds_is_honoured(server, endpoint, caplog):
    server.script = Script(("reply", (429, b"slow down", {"Retry-After": "1"})), ("echo", None))
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        assert endpoint.generate([user("x")]) == ["x"]
    assert 0.95 < time.perf_counter() - start < 3.0  # backoff is 0: only Retry-After made it wait
    assert "retrying in 1.0 s" in caplog.text


def test_retry_after_is_capped_and_bounded_by_the_retry_count(server, endpoint):
    server.script = Script(("reply", (503, b"busy", {"Retry-After": "3600"})))
    endpoint.max_retry_after = 0.2
    start = time.perf_counter()
    with pytest.raises(EndpointError, match="gave up after 3 attempts; last error: HTTP 503"):
        endpoint.generate([user("x")])
    assert 0.35 < time.perf_counter() - start < 2.0 and len(server.script.seen) == 3  # 2 capped waits


def test_retry_after_only_counts_on_429_and_503(server, endpoint):
    server.script = Script(("reply", (500, b"oops", {"Retry-After": "60"})), ("echo", None))
    start = time.perf_counter()
    assert endpoint.generate([user("x")]) == ["x"] and time.perf_counter() - start < 1.0


def test_retry_after_header_forms():
    now = time.time()
    assert retry_after_seconds("120") == 120.0 and retry_after_seconds(" 7 ") == 7.0
    assert retry_after_seconds(formatdate(now + 60, usegmt=True), now) == pytest.approx(60, abs=1)
    assert retry_after_seconds(formatdate(now - 60, usegmt=True), now) == 0.0  # a date already past
    for unreadable in (None, "", "soon", "-5", "1.5", "²", "Mon, 99 Foo 2024"):
        assert retry_after_seconds(unreadable) is None


# --- behind the teachers' caches -------------------------------------------------------------------

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


FAILURES = {"HTTP 500": ("status", 500), "HTTP 429": ("reply", (429, b"{auth}", {"Retry-After": "0"})),
            "malformed JSON": ("raw", b'{"choices": ['), "no choices": ("raw", b'{"choices": []}'),
            "connection reset": ("reset", None), "trickle": ("trickle", "body"),
            "client error echoing the key": ("status", 403)}


@pytest.mark.parametrize("failure", FAILURES)
def test_an_interrupted_pool_resumes_without_repeating_finished_calls(server, endpoint, tmp_path, caplog, failure):
    """n = 8 pointwise calls; the server answers k = 5, then fails. Nothing damaged is kept, the
    re-run sends exactly n - k requests, a third run none, and no file or message holds the key."""
    n, k = 8, 5
    answer = ("raw", reply_json('<answer>{"[1]": 4}</answer>'))
    server.script = Script(*[answer] * k, FAILURES[failure])
    endpoint.deadline = 0.3

    def teacher():
        return CachedTeacher(PointwiseLLMTeacher(CachedBackend(endpoint, tmp_path / "calls"), TEACH),
                             tmp_path / "teachers")

    ids, texts = pool(list(range(n)))
    with caplog.at_level(logging.DEBUG), pytest.raises(EndpointError) as error:
        teacher().rank("q", ids, texts)
    assert len(server.script.seen) <= k + endpoint.workers * (endpoint.max_retries + 1)  # bounded
    kept = list((tmp_path / "calls").rglob("*.json"))
    assert len(kept) == k and not (tmp_path / "teachers").exists()
    for path in kept:  # every kept reply is whole and is an answer the server really gave
        entry = json.loads(path.read_text())
        assert entry["reply"] == '<answer>{"[1]": 4}</answer>' and entry["checksum"] == teachers._checksum(entry["reply"])
    server.script = Script(answer)
    again = teacher()
    again.rank("q", ids, texts)
    assert len(server.script.seen) == n - k
    teacher().rank("q", ids, texts)
    assert len(server.script.seen) == n - k  # the finished pool costs nothing
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert len(files) == n + 1 and not any(path.name.endswith(".partial") for path in files)
    assert not any(leaked(path.read_text()) for path in files)
    assert not leaked(str(error.value)) and not leaked(caplog.text)
