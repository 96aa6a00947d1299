"""A chat backend for any OpenAI-compatible server (vLLM, llama.cpp, Ollama, hosted APIs).

It offers what rerankers and teachers ask of a backend, as `llm.LLM` does for a local model:
``generate(list of chat prompts, max_new_tokens=None) -> list of replies`` and `stats`. A
server only returns text, so token-probability scoring needs a local model.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import timezone
from email.utils import parsedate_to_datetime
from http.client import HTTPException
from urllib.parse import urlsplit

from .llm import GenerationStats

log = logging.getLogger(__name__)

# An echoed key cut short anywhere leaves a piece of it: pieces this long that start or end the key are hidden too.
KEY_PIECE = 8
SCRUB_WINDOW = 4096  # bytes of a reply or error body searched for the key; messages show far less


class EndpointError(RuntimeError):
    """The endpoint refused the request, or failed `max_retries` + 1 times in a row."""


class _Transient(Exception):
    """A failure worth retrying: timeout, deadline, connection error, HTTP 429/5xx, malformed reply.
    `retry_after`: the seconds the server asked to wait (429/503 with Retry-After), if it did."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class EndpointBackend:
    """A chat backend for any OpenAI-compatible server (vLLM, llama.cpp, Ollama, hosted APIs).

    POSTs to ``<url>/chat/completions`` with urllib (greedy: temperature 0). The API key is
    read from the environment variable `api_key_env` at each request and never kept on the
    object; any piece of it a server echoes back is hidden before a reply or an error text is
    cut short, kept or shown (`scrub_key`), so it cannot reach a log line, an error message or a cache file.

    Time: `timeout` bounds connecting and each wait for bytes; `deadline` bounds a whole
    request, however slowly a server trickles its reply. Transient failures (timeouts, the
    deadline, connection errors, HTTP 429/5xx, malformed replies) are retried `max_retries`
    times, after ``backoff·2^attempt`` seconds or, on 429/503, after the server's Retry-After
    (capped at `max_retry_after`); then reported as `EndpointError`. Other HTTP errors (401,
    404, ...) are reported at once, and so is every redirect (see `_RefuseRedirects`).
    """

    def __init__(self, url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 max_retries: int = 3, backoff: float = 1.0, workers: int = 4, max_tokens: int = 256,
                 deadline: float = 300.0, max_retry_after: float = 30.0):
        self.url, self.model, self.api_key_env = url.rstrip("/"), model, api_key_env
        self.timeout, self.deadline = timeout, deadline
        self.max_retries, self.backoff, self.max_retry_after = max_retries, backoff, max_retry_after
        self.workers, self.max_tokens = workers, max_tokens
        self.requests = 0  # HTTP requests sent, retries included
        self.stats = GenerationStats()  # calls, batches and seconds (token counts stay with the server)

    def __repr__(self) -> str:
        return f"EndpointBackend(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    @property
    def model_id(self) -> str:
        return self.model

    def generate(self, prompts_: list[list[dict]], max_new_tokens: int | None = None) -> list[str]:
        """Replies in prompt order; up to `workers` requests in flight (the server batches them)."""
        replies = dict(self.replies_as_completed(prompts_, max_new_tokens))
        return [replies[i] for i in range(len(prompts_))]

    def replies_as_completed(self, prompts_: list[list[dict]], max_new_tokens: int | None = None):
        """(prompt index, reply) pairs as the requests finish, up to `workers` in flight.

        After a failure no further request starts, the replies of those in flight are still
        given, and then the failure is raised: a caller that keeps each reply as it comes
        (`teachers.CachedBackend`) loses no finished call.
        """
        tokens, start, failure = max_new_tokens or self.max_tokens, time.perf_counter(), None
        pool = ThreadPoolExecutor(max_workers=self.workers)
        futures = {pool.submit(self.complete, messages, tokens): i for i, messages in enumerate(prompts_)}
        try:
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                if future.exception() is None:
                    self.stats.calls += 1
                    yield futures[future], future.result()
                elif failure is None:
                    failure = future.exception()
                    _cancel(futures)
        finally:
            _cancel(futures)  # also when the caller stops early
            pool.shutdown()
            self.stats.batches += 1
            self.stats.seconds += time.perf_counter() - start
        if failure is not None:
            raise failure

    def complete(self, messages: list[dict], max_tokens: int) -> str:
        """One chat completion, retried on transient failures."""
        for attempt in range(self.max_retries + 1):
            try:
                return self._post(messages, max_tokens)
            except _Transient as err:
                failure = self._scrub(str(err))
                if attempt < self.max_retries:
                    pause = self._pause(attempt, err.retry_after)
                    log.warning("%s: attempt %d failed (%s); retrying in %.1f s", self.url, attempt + 1, failure, pause)
                    time.sleep(pause)
        raise EndpointError(f"{self.url}: gave up after {self.max_retries + 1} attempts; last error: {failure}")

    def _pause(self, attempt: int, retry_after: float | None) -> float:
        """The server's Retry-After when it gave one (it knows when it will cope), capped; else backoff."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return self.backoff * 2 ** attempt

    def _post(self, messages: list[dict], max_tokens: int) -> str:
        body = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": max_tokens}
        request = urllib.request.Request(f"{self.url}/chat/completions", data=json.dumps(body).encode("utf-8"),
                                         headers=self._headers(), method="POST")
        self.requests += 1
        with _Watchdog(self.deadline) as watchdog:
            opener = urllib.request.build_opener(_RefuseRedirects, _WatchedHTTP(watchdog), _WatchedHTTPS(watchdog))
            try:
                with opener.open(request, timeout=min(self.timeout, self.deadline)) as response:
                    raw = response.read()
            except urllib.error.HTTPError as err:
                raise self._http_failure(err, request.full_url) from None
            except (OSError, HTTPException) as err:  # URLError, timeouts, resets, a socket the watchdog shut
                failure = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
                raise _Transient(self._late() if watchdog.fired else failure) from None
        if watchdog.fired:  # a reply without Content-Length ends quietly when its socket is shut
            raise _Transient(self._late())
        return self._reply_text(raw)

    def _late(self) -> str:
        return f"no complete reply within the deadline of {self.deadline:g} s"

    def _http_failure(self, err: urllib.error.HTTPError, url: str) -> Exception:
        """What an HTTP error status means for the call: retry it, or report it at once."""
        if 300 <= err.code < 400:
            return EndpointError(self._scrub(f"{url}: HTTP {err.code} {err.reason}; the API key is only sent to the "
                                            "configured URL, so set it to the address the server points to"))
        try:
            detail = self._excerpt(err.read(SCRUB_WINDOW), 200)
        except (OSError, HTTPException):  # the body broke off, or the deadline shut it
            detail = "(no readable body)"
        if err.code == 429 or err.code >= 500:
            wait = retry_after_seconds(err.headers.get("Retry-After")) if err.code in (429, 503) else None
            return _Transient(f"HTTP {err.code}: {detail}", wait)
        return EndpointError(self._scrub(f"{url}: HTTP {err.code}: {detail}"))

    def _reply_text(self, raw: bytes) -> str:
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Transient(f"malformed reply: {self._excerpt(raw, 80)!r}") from None
        if not isinstance(content, str):
            raise _Transient("malformed reply: message content is not text")
        return self._scrub(content)  # a server echoing the request must not put the key into a cache file

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:  # local servers usually need none
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _excerpt(self, raw: bytes, limit: int) -> str:
        """The start of a server's text for a message: scrubbed first, then cut, so a cut never splits a key."""
        return self._scrub(raw[:SCRUB_WINDOW].decode("utf-8", "replace"))[:limit]

    def _scrub(self, text: str) -> str:
        return scrub_key(text, os.environ.get(self.api_key_env))


def scrub_key(text: str, key: str | None) -> str:
    """`text` with `key` replaced by ***, and every piece of at least KEY_PIECE characters that
    starts or ends it (what a cut leaves of an echoed key), longest first."""
    if not key:
        return text
    lengths = range(min(KEY_PIECE, len(key)), len(key) + 1)
    pieces = sorted({key[:n] for n in lengths} | {key[-n:] for n in lengths}, key=len, reverse=True)
    return re.sub("|".join(map(re.escape, pieces)), "***", text)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """The wait a Retry-After header asks for (RFC 9110 §10.2.3: delay-seconds or an HTTP-date),
    or None when it is absent or unreadable."""
    value = (value or "").strip()
    if value.isascii() and value.isdigit():  # str.isdigit alone also takes "²", which float() does not
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _cancel(futures) -> None:
    for future in futures:
        future.cancel()  # those already running finish; as_completed still sees the rest as cancelled


def _origin(url: str) -> str:
    """scheme://host[:port] of a URL, without any user:password@ or path."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


# --- urllib extension points: no redirects, a deadline per request ------------------------------

class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Follow no redirect, to the same origin or another.

    urllib's default handler re-sends every header, the bearer key included, to wherever a
    301/302/303 points, and turns the POST into a GET without its body, so a followed redirect
    can only leak the key and fetch something that is not an answer to the prompt (307/308
    of a POST it already refuses). Following same-origin redirects only would keep the key
    safe but still needs the method and body preserved and the origin compared exactly; an
    API base URL that redirects is a setting to correct once (http -> https, a moved host,
    a missing /v1), so the error names where the server points.
    """

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {_origin(newurl)} refused", headers, fp)


class _Watchdog:
    """Ends one request at its deadline, whatever it waits for (headers or body): when the
    time is up it shuts the request's socket, so the blocked read returns at once. A socket
    timeout cannot do this: it restarts with every byte, so a trickling server never trips it."""

    def __init__(self, seconds: float):
        self.fired, self._socket, self._lock = False, None, threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()

    def watch(self, sock) -> None:
        """Called by the connection once connected (connecting is bounded by the socket timeout)."""
        with self._lock:
            self._socket = sock
            if self.fired:
                _shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            if self._socket is not None:
                _shut(self._socket)


def _shut(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed: the request is over
        pass


class _Watched:
    """For urllib's HTTP and HTTPS handlers: each connection hands its socket to the request's watchdog."""

    def __init__(self, watchdog: _Watchdog):
        super().__init__()
        self.watchdog = watchdog

    def do_open(self, http_class, req, **kwargs):
        watchdog = self.watchdog

        class WatchedConnection(http_class):
            def connect(self):
                super().connect()
                watchdog.watch(self.sock)

        return super().do_open(WatchedConnection, req, **kwargs)


class _WatchedHTTP(_Watched, urllib.request.HTTPHandler):
    pass


class _WatchedHTTPS(_Watched, urllib.request.HTTPSHandler):
    pass
