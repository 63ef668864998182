"""An OpenAI-compatible ``/v1/embeddings`` endpoint as an :class:`Embedder`.

Works with OpenAI and with servers that speak its embeddings API (vLLM, TEI, LiteLLM, ...).

- Base URL: the ``api_base`` option, else ``$SAE_EMBED_API_BASE``, else
  ``https://api.openai.com/v1``. Key: ``$SAE_EMBED_API_KEY``, else ``$OPENAI_API_KEY``; it is
  sent only in the ``Authorization`` header, and never logged, shown in ``repr`` or put in an
  error message (server messages are scrubbed of it).
- Texts go ``batch_size`` (default 256) to a request; ``data[i].index`` puts the vectors back
  in input order.
- Connection errors, timeouts, 408, 429 and 5xx are retried ``max_retries`` times with
  exponential backoff (with jitter), or after the wait the server's ``Retry-After`` /
  ``retry-after-ms`` asks for; both capped at ``max_backoff_s``. 401/403 and other 4xx fail
  at once with the server's message. This is the only retry of a request to the endpoint
  (its budget: :mod:`infra.retries`; the requests: :mod:`tasks.openai_http`).
- ``dimensions`` is passed through (models that can shorten their vectors); the expected
  ``dim`` comes from the ``dim`` option, ``dimensions``, a table of OpenAI's models, or else
  the first response. Wrong counts, dims, or non-finite values end in EmbedderError.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from infra.retries import EMBEDDINGS_API
from tasks.embed.embedders import (
    EmbedderError,
    check_texts,
    check_vectors,
    openai_name,
    storage_name,
)
from tasks.openai_http import OpenAIHttp

log = logging.getLogger("tasks.embed.openai_api")

DEFAULT_API_BASE = "https://api.openai.com/v1"
KEY_ENVS = ("SAE_EMBED_API_KEY", "OPENAI_API_KEY")
#: Output sizes of OpenAI's models (without ``dimensions``).
KNOWN_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
#: OpenAI's embedding models take at most this many tokens per input.
OPENAI_MAX_TOKENS = 8191


class OpenAIEmbedder:
    """Embeddings from an OpenAI-compatible endpoint; see the module docstring."""

    def __init__(
        self,
        model: str,
        *,
        name: str | None = None,
        api_base: str | None = None,
        dim: int | None = None,
        dimensions: int | None = None,
        batch_size: int | None = None,
        max_tokens: int = OPENAI_MAX_TOKENS,
        max_retries: int = EMBEDDINGS_API.retries,
        backoff_s: float = EMBEDDINGS_API.first_s,
        max_backoff_s: float = EMBEDDINGS_API.max_s,
        timeout_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.model = model
        self.name = storage_name(name) if name else openai_name(model, dimensions)
        base = api_base or os.environ.get("SAE_EMBED_API_BASE") or DEFAULT_API_BASE
        if not base.startswith(("http://", "https://")):
            raise EmbedderError(f"{self.name}: api_base must be an http(s) URL, got {base!r}")
        self.api_base = base.rstrip("/")
        self.url = f"{self.api_base}/embeddings"
        if dimensions is not None and dimensions < 1:
            raise EmbedderError(f"{self.name}: dimensions must be >= 1, got {dimensions}")
        if dim is not None and dimensions is not None and dim != dimensions:
            raise EmbedderError(f"{self.name}: dim={dim} contradicts dimensions={dimensions}")
        self.dimensions = dimensions
        self._dim = dim or dimensions or KNOWN_DIMS.get(model)
        self.batch_size = batch_size or 256
        if self.batch_size < 1:
            raise EmbedderError(f"{self.name}: batch_size must be >= 1, got {batch_size}")
        if max_retries < 0:
            raise EmbedderError(f"{self.name}: max_retries must be >= 0, got {max_retries}")
        self.max_tokens = max_tokens
        key = next((os.environ[e] for e in KEY_ENVS if os.environ.get(e, "").strip()), "")
        if not key.strip():
            raise EmbedderError(
                f"{self.name}: no API key: set OPENAI_API_KEY (or SAE_EMBED_API_KEY; any "
                "non-empty value for a server that needs none)"
            )
        self.http = OpenAIHttp(
            self.url,
            key.strip(),
            what=f"{self.name}: {self.url}",
            key_hint="OPENAI_API_KEY (or SAE_EMBED_API_KEY)",
            error=EmbedderError,
            timeout_s=timeout_s,
            max_retries=max_retries,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
            sleep=sleep,
        )

    def __repr__(self) -> str:
        return (
            f"OpenAIEmbedder(name={self.name!r}, model={self.model!r}, "
            f"api_base={self.api_base!r}, batch_size={self.batch_size})"
        )

    @property
    def dim(self) -> int:
        """The vector size; when not known up front, one small request finds it out."""
        if self._dim is None:
            self._embed_batch(["dimension probe"])
        assert self._dim is not None
        return self._dim

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> OpenAIEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """shape: [len(texts), dim], float32, unit rows; ``batch_size`` texts per request."""
        items = check_texts(texts, self.name)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [
            self._embed_batch(items[start : start + self.batch_size])
            for start in range(0, len(items), self.batch_size)
        ]
        return check_vectors(np.concatenate(parts), len(items), self.dim, self.name)

    def _embed_batch(self, batch: list[str]) -> np.ndarray:
        """One request's vectors in input order, shape: [len(batch), dim] (not yet normalised)."""
        body: dict[str, Any] = {"model": self.model, "input": batch}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        payload = self.http.post(body)
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise EmbedderError(f"{self.name}: {self.url}: the response has no 'data' list")
        if len(data) != len(batch):
            raise EmbedderError(
                f"{self.name}: {self.url}: sent {len(batch)} inputs, got {len(data)} vectors"
            )
        vectors = [item.get("embedding") if isinstance(item, dict) else None for item in data]
        indices = [item.get("index") if isinstance(item, dict) else None for item in data]
        if any(i is not None for i in indices):
            if sorted(i for i in indices if isinstance(i, int)) != list(range(len(batch))):
                raise EmbedderError(
                    f"{self.name}: {self.url}: the response's indices are not 0..{len(batch) - 1}"
                )
            vectors = [v for _, v in sorted(zip(indices, vectors, strict=True))]
        if not all(isinstance(v, list) for v in vectors):
            raise EmbedderError(
                f"{self.name}: {self.url}: an embedding is not a list of floats "
                "(a base64 encoding_format is not supported)"
            )
        lengths = {len(v) for v in vectors}
        if len(lengths) != 1:
            raise EmbedderError(
                f"{self.name}: {self.url}: vectors of different lengths {sorted(lengths)}"
            )
        if self._dim is None:
            self._dim = lengths.pop()
            log.info("%s: dimension %d, from the first response", self.name, self._dim)
        try:
            arr = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError):
            msg = f"{self.name}: {self.url}: non-numeric values in a vector"
            raise EmbedderError(msg) from None
        if arr.shape[1] != self._dim:
            raise EmbedderError(
                f"{self.name}: {self.url}: expected dimension {self._dim}, got {arr.shape[1]}"
            )
        return arr
