"""A local stand-in for an OpenAI-compatible ``/v1/embeddings`` endpoint, for tests.

    with StubEmbeddingsServer(dim=8) as stub:
        stub.script.append((429, {"Retry-After": "1"}, {"error": {"message": "slow down"}}))
        ... OpenAIEmbedder("stub-model", api_base=stub.url) ...
        stub.requests  # what it was sent

Runs a real HTTP server on 127.0.0.1 (a free port) in a thread. Each POST is recorded; the
next scripted response is sent if there is one, else a success whose vectors are a
deterministic function of each input text (:meth:`vector`). ``shuffle`` returns the data
items out of order (with correct ``index`` fields); ``mutate`` edits a success payload.
Clearing ``gate`` holds each answer (after recording its request) until it is set again.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

#: (status, headers, body): a dict body is sent as JSON, bytes as they are.
Scripted = tuple[int, dict[str, str], Any]


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: Any


class StubEmbeddingsServer:
    def __init__(self, dim: int = 8) -> None:
        self.dim = dim
        self.requests: list[Request] = []
        self.script: list[Scripted] = []
        self.shuffle = False
        self.mutate: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def vector(self, text: str, dim: int | None = None) -> list[float]:
        """The (unnormalised) vector the stub returns for ``text``."""
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).normal(size=dim or self.dim).tolist()

    def __enter__(self) -> StubEmbeddingsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _respond(self, request: Request) -> Scripted:
        with self._lock:
            self.requests.append(request)
            if self.script:
                return self.script.pop(0)
        body = request.body if isinstance(request.body, dict) else {}
        inputs = body.get("input", [])
        dim = body.get("dimensions") or self.dim
        data = [
            {"object": "embedding", "index": i, "embedding": self.vector(text, dim)}
            for i, text in enumerate(inputs)
        ]
        if self.shuffle:
            random.Random(len(self.requests)).shuffle(data)
        payload: dict[str, Any] = {"object": "list", "data": data, "model": body.get("model")}
        if self.mutate is not None:
            payload = self.mutate(payload)
        return 200, {}, payload

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw
                request = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                status, headers, out = stub._respond(request)
                # Only a bound on a forgotten gate: tests set it whatever happens, and
                # opening it on a timer would change what a slow test observes.
                stub.gate.wait(timeout=600)
                data = out if isinstance(out, bytes) else json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        return Handler
