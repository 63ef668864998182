"""POSTs to one endpoint of an OpenAI-compatible API, as the embeddings client and the
LLM labeller both need them.

The key goes in the ``Authorization`` header only; every message this module makes (and
the server's, quoted in them) is scrubbed of it and of anything shaped like an OpenAI key.
Connection errors, timeouts, 408, 429 and 5xx are retried ``max_retries`` times, waiting
``backoff_s * 2**attempt`` times a jitter in [0.5, 1], or what the server's
``Retry-After`` / ``retry-after-ms`` asks, each wait capped at ``max_backoff_s``. 401 and
403 fail at once naming ``key_hint``; other 4xx fail at once with the server's message.
Failures raise the caller's ``error`` class, the message starting with ``what``.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from typing import Any

import httpx

from tasks.retry_after import retry_after_seconds

log = logging.getLogger("tasks.openai_http")

_KEY_LIKE = re.compile(r"sk-[A-Za-z0-9_\-*.]{3,}")


def _retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


def retry_after_hint(headers: httpx.Headers) -> float | None:
    """The wait the server asks for: ``retry-after-ms``, or ``Retry-After`` (seconds or a date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = (headers.get("retry-after") or "").strip()
    try:  # fractional seconds, which some gateways send
        return max(0.0, float(value))
    except ValueError:
        return retry_after_seconds(value)


class OpenAIHttp:
    def __init__(
        self,
        url: str,
        key: str,
        *,
        what: str,
        key_hint: str,
        error: type[Exception],
        timeout_s: float,
        max_retries: int,
        backoff_s: float,
        max_backoff_s: float,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.url, self.what, self.key_hint, self.error = url, what, key_hint, error
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._sleep = sleep
        self.__key = key
        self.attempts = 0  # requests sent, retries included
        self._client: httpx.Client | None = None

    def __repr__(self) -> str:  # never the key
        return f"OpenAIHttp({self.url!r})"

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def post(self, body: dict[str, Any]) -> Any:
        """The JSON of a 200 response, after retries; ``error`` otherwise."""
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout_s)
        headers = {"Authorization": f"Bearer {self.__key}"}
        tries = self.max_retries + 1
        last = "no attempt"
        for attempt in range(tries):
            hint = None
            self.attempts += 1
            try:
                response = self._client.post(self.url, json=body, headers=headers)
            except httpx.TransportError as exc:
                last = self.scrub(f"{type(exc).__name__}: {exc}")
            else:
                status = response.status_code
                if status == 200:
                    try:
                        return response.json()
                    except ValueError:
                        raise self.error(
                            f"{self.what}: the response is not JSON: {self.message(response)}"
                        ) from None
                if status in (401, 403):
                    raise self.error(
                        f"{self.what}: HTTP {status}: the server refused the key; check "
                        f"{self.key_hint}: {self.message(response)}"
                    )
                if not _retryable(status):
                    raise self.error(f"{self.what}: HTTP {status}: {self.message(response)}")
                last = f"HTTP {status}: {self.message(response)}"
                hint = retry_after_hint(response.headers)
            if attempt + 1 < tries:
                delay = hint
                if delay is None:
                    delay = self.backoff_s * 2**attempt * random.uniform(0.5, 1.0)
                delay = min(delay, self.max_backoff_s)
                log.warning(
                    "%s: %s; retry %d of %d in %.1f s",
                    self.what,
                    last,
                    attempt + 1,
                    self.max_retries,
                    delay,
                )
                self._sleep(delay)
        raise self.error(f"{self.what}: gave up after {tries} attempts; last failure: {last}")

    def message(self, response: httpx.Response, limit: int = 300) -> str:
        """The server's error message (OpenAI's ``error.message``, else the body's start)."""
        text = ""
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            error = payload.get("error")
            if isinstance(error, dict) and error.get("message"):
                text = str(error["message"])
            elif isinstance(error, str):
                text = error
        if not text:
            text = response.content[:limit].decode("utf-8", "replace")
        return self.scrub(" ".join(text.split())[:limit]) or "(empty body)"

    def scrub(self, text: str) -> str:
        if self.__key:
            text = text.replace(self.__key, "***")
        return _KEY_LIKE.sub("sk-***", text)
