"""A chat backend for any OpenAI-compatible server (vLLM, llama.cpp, Ollama, hosted APIs).

It offers what rerankers and teachers ask of a backend, as `llm.LLM` does for a local model:
``generate(list of chat prompts, max_new_tokens=None) -> list of replies`` and `stats`. A
server only returns text, so token-probability scoring needs a local model.
"""
from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPException

from .llm import GenerationStats

log = logging.getLogger(__name__)


class EndpointError(RuntimeError):
    """The endpoint refused the request, or failed `max_retries` + 1 times in a row."""


class _Transient(Exception):
    """A failure worth retrying: timeout, connection error, HTTP 429/5xx, malformed reply."""


class EndpointBackend:
    """A chat backend for any OpenAI-compatible server (vLLM, llama.cpp, Ollama, hosted APIs).

    POSTs to ``<url>/chat/completions`` with urllib (greedy: temperature 0). The API key is
    read from the environment variable `api_key_env` at each request and never kept on the
    object, so it cannot appear in its repr, a log line, an error message or a cache file.
    Transient failures are retried `max_retries` times with exponential backoff, then
    reported as `EndpointError`; other HTTP errors (401, 404, ...) are reported at once.
    """

    def __init__(self, url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 max_retries: int = 3, backoff: float = 1.0, workers: int = 4, max_tokens: int = 256):
        self.url, self.model, self.api_key_env = url.rstrip("/"), model, api_key_env
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
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
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            replies = list(pool.map(lambda messages: self.complete(messages, max_new_tokens or self.max_tokens), prompts_))
        self.stats.calls += len(prompts_)
        self.stats.batches += 1
        self.stats.seconds += time.perf_counter() - start
        return replies

    def complete(self, messages: list[dict], max_tokens: int) -> str:
        for attempt in range(self.max_retries + 1):
            try:
                return self._post(messages, max_tokens)
            except _Transient as err:
                failure = self._scrub(str(err))
                if attempt < self.max_retries:
                    log.warning("%s: attempt %d failed (%s); retrying", self.url, attempt + 1, failure)
                    time.sleep(self.backoff * 2 ** attempt)
        raise EndpointError(f"{self.url}: gave up after {self.max_retries + 1} attempts; last error: {failure}")

    def _post(self, messages: list[dict], max_tokens: int) -> str:
        body = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": max_tokens}
        request = urllib.request.Request(f"{self.url}/chat/completions", data=json.dumps(body).encode("utf-8"),
                                         headers=self._headers(), method="POST")
        self.requests += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:200].decode("utf-8", "replace")
            if err.code == 429 or err.code >= 500:
                raise _Transient(f"HTTP {err.code}: {detail}") from None
            raise EndpointError(self._scrub(f"{self.url}: HTTP {err.code}: {detail}")) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, HTTPException) as err:
            raise _Transient(f"{type(err).__name__}: {getattr(err, 'reason', err)}") from None
        return _reply_text(raw)

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:  # local servers usually need none
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _scrub(self, text: str) -> str:
        """Hide the key should a server echo it back in an error."""
        key = os.environ.get(self.api_key_env)
        return text.replace(key, "***") if key else text


def _reply_text(raw: bytes) -> str:
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise _Transient(f"malformed reply: {raw[:80]!r}") from None
    if not isinstance(content, str):
        raise _Transient("malformed reply: message content is not text")
    return content
