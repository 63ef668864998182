"""A local stand-in for an OpenAI-compatible ``/v1/chat/completions`` endpoint, for tests.

    with StubChatServer() as stub:
        stub.faults += ["429", None, "malformed"]
        ... ChatClient(stub.url, "stub-model", KEY) ...
        stub.requests, stub.usage  # what it was sent, the usage it answered

Runs a real HTTP server on 127.0.0.1 (a free port) in a thread and answers by reading the
prompt, as a model would: an *explain* request (its messages ask for ``"label"``) gets the
label ``"<keyword> research"``, the keyword being one of ``keywords`` found in every
abstract listed before the "does not fire" line and in none after it; a *predict* request
(it asks for ``"predictions"``) scores each numbered abstract 9 when it holds the label's
first word, else 1. Usage: the words of the messages in, the words of the answer out.

Each request takes the next entry of ``faults`` if there is one: ``None`` answers normally;
a name from :data:`FAULTS` plays that fault; a ``(status, headers, body)`` tuple is sent as is.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: (status, headers, body): a dict body is sent as JSON, bytes as they are.
Scripted = tuple[int, dict[str, str], Any]

FAULTS = (
    "429",  # Retry-After: ``retry_after``
    "500",
    "503",
    "401",  # its message echoes the key it was sent, as OpenAI's does
    "malformed",  # content that is not JSON
    "wrong_count",  # one prediction short
    "out_of_range",  # a score of 11
    "refusal",  # {"label": "I cannot help with that request."}
    "refusal_field",  # content null, message.refusal set
    "content_filter",  # finish_reason content_filter, content null
)

#: Words a test may plant in the firing abstracts of a feature.
KEYWORDS = ("quasar", "lensing", "pulsar", "diffusion", "graphene", "protein")

_NUMBERED = re.compile(r"^(\d+)\. (.*)$")
_WORD = re.compile(r"[a-z]{4,}")


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def user(self) -> str:
        return self.body["messages"][-1]["content"]


class StubChatServer:
    def __init__(self, retry_after: str = "7", keywords: tuple[str, ...] = KEYWORDS) -> None:
        self.keywords = keywords
        self.requests: list[Request] = []
        self.usage: list[dict[str, int]] = []
        self.faults: list[str | Scripted | None] = []
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> StubChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # --- what a model would answer ---------------------------------------------------------

    def keyword(self, user: str) -> str | None:
        """The planted keyword in every firing abstract and in no other, if one is."""
        top, _, other = user.partition("does not fire")
        firing = [set(_WORD.findall(m.group(2).lower())) for m in _items(top)]
        quiet = set().union(*(_WORD.findall(m.group(2).lower()) for m in _items(other)))
        found = [w for w in self.keywords if firing and all(w in f for f in firing)]
        return next((w for w in found if w not in quiet), None)

    def _answer(self, body: dict[str, Any], fault: str | None) -> Scripted:
        messages = body.get("messages") or []
        text = "\n".join(str(m.get("content", "")) for m in messages)
        user = str(messages[-1].get("content", "")) if messages else ""
        finish, content, refusal = "stop", None, None
        if fault == "malformed":
            content = "Sure! The feature is about quasars."
        elif fault == "refusal":
            content = json.dumps({"label": "I cannot help with that request."})
        elif fault == "refusal_field":
            refusal = "I'm sorry, I can't assist with that."
        elif fault == "content_filter":
            finish = "content_filter"
        elif '"predictions"' in text:
            match = re.search(r"^Label: (.*)$", user, re.MULTILINE)
            word = (match.group(1).split() or [""])[0].lower() if match else ""
            scores = [
                {"i": int(m.group(1)), "score": 9 if word and word in m.group(2).lower() else 1}
                for m in _items(user)
            ]
            if fault == "wrong_count":
                scores = scores[:-1]
            if fault == "out_of_range" and scores:
                scores[0]["score"] = 11
            content = json.dumps({"predictions": scores})
        else:
            word = self.keyword(user)
            content = json.dumps({"label": f"{word} research" if word else "miscellaneous"})
        usage = {
            "prompt_tokens": len(text.split()),
            "completion_tokens": len((content or refusal or "").split()),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        with self._lock:
            self.usage.append(usage)
        message = {"role": "assistant", "content": content}
        if refusal is not None:
            message["refusal"] = refusal
        payload = {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage,
        }
        return 200, {}, payload

    def _respond(self, request: Request) -> Scripted:
        with self._lock:
            self.requests.append(request)
            fault = self.faults.pop(0) if self.faults else None
        if isinstance(fault, tuple):
            return fault
        if fault == "429":
            return 429, {"Retry-After": self.retry_after}, {"error": {"message": "slow down"}}
        if fault in ("500", "503"):
            return int(fault), {}, {"error": {"message": "the server is having a bad day"}}
        if fault == "401":
            key = request.headers.get("authorization", "").removeprefix("Bearer ")
            return 401, {}, {"error": {"message": f"Incorrect API key provided: {key}."}}
        if request.path.rstrip("/") != "/v1/chat/completions":
            return 404, {}, {"error": {"message": f"no route {request.path}"}}
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        body = request.body if isinstance(request.body, dict) else {}
        return self._answer(body, fault)

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


def _items(section: str) -> list[re.Match[str]]:
    return [m for line in section.splitlines() if (m := _NUMBERED.match(line.strip()))]
