"""Feature labels written and scored by an LLM behind any OpenAI-compatible chat API.

The protocol of O'Neill et al. (arXiv 2408.00657), two chat requests per feature:

1. *explain*: the model sees the feature's top-activating abstracts and some non-activating
   ones and answers ``{"label": "..."}``, a few words.
2. *predict*: it sees only that label and numbered held-out abstracts (a mix, shown in an
   order shuffled per feature) and answers ``{"predictions": [{"i": 1, "score": 0-10}, ...]}``.
3. *score*: an abstract fires when its true activation is > 0, and is predicted to fire when
   its score is >= 5 (:data:`FIRES_AT`, the scale's midpoint). F1 is over firing; Pearson r is
   between scores and true activations (0.0 when either is constant). F1 is ``None`` when no
   held-out abstract fires (undefined), both are ``None`` with no held-out abstracts.

Settings the caller wires (suggested names): ``SAE_LABEL_API_BASE``, ``SAE_LABEL_MODEL``,
prices per million tokens. The key is ``api_key``, else ``$SAE_LABEL_API_KEY``, else
``$OPENAI_API_KEY``; it is sent only in the ``Authorization`` header, and never logged, shown
in ``repr`` or put in an error message (server messages are scrubbed of it).

Retries, two layers that never retry the same failure:

- HTTP (:class:`ChatClient`): connection errors, timeouts, 408, 429 and 5xx, ``1 + 6`` tries
  waiting 1, 2, 4, 8, 16, 32 s times a jitter in [0.5, 1] (63 s at worst), or the server's
  ``Retry-After`` / ``retry-after-ms``, each wait capped at 60 s (``CHAT_API`` of
  :mod:`infra.retries`' table; the requests: :mod:`tasks.openai_http`). 401, 403 and other
  4xx fail at once with the server's message. What is left raises :class:`LabelAPIError`,
  naming the endpoint.
- Content (:class:`LLMLabeler`): a malformed answer (not JSON, wrong keys, wrong count of
  predictions, a score out of range) is asked once more, with a note appended to the prompt,
  then recorded as ``error="malformed answer: ..."``. A refusal (empty or "I cannot ..."
  label, ``finish_reason == "content_filter"``, a ``refusal`` message) is recorded as
  ``error="refused"`` without a retry.

:class:`LabelCache` keeps complete results only: errors are not cached, so a rerun asks again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from infra.retries import CHAT_API
from tasks.openai_http import OpenAIHttp

log = logging.getLogger("tasks.features.llm_labels")

#: Bump when a prompt or its parsing changes: cached labels of other versions are not reused.
PROMPT_VERSION = 1
KEY_ENVS = ("SAE_LABEL_API_KEY", "OPENAI_API_KEY")
#: Each abstract is cut to this many characters: 40 abstracts stay near 15k tokens.
MAX_ABSTRACT_CHARS = 1200
#: A longer "label" is an essay, not the few words asked for.
MAX_LABEL_CHARS = 200
#: A score at or above this predicts that the feature fires.
FIRES_AT = 5.0
SCORE_MIN, SCORE_MAX = 0.0, 10.0

_REFUSAL = re.compile(
    r"^\W*(i\s*(cannot|can\s*not|can't|can’t|am\s+unable|'m\s+unable|’m\s+unable|"
    r"am\s+sorry|'m\s+sorry|’m\s+sorry|won't|will\s+not)|sorry\b|as\s+an\s+ai\b)",
    re.IGNORECASE,
)

EXPLAIN_SYSTEM = (
    "You are a meticulous researcher interpreting one feature of a sparse autoencoder trained "
    "on embeddings of arXiv paper abstracts. A feature fires on abstracts that share some "
    "topic, method, object or property. Find the simplest explanation that fits all the "
    "abstracts on which it fires and none of those on which it does not. "
    'Answer with a JSON object only: {"label": "<a few words>"}.'
)
EXPLAIN_USER = """Abstracts on which the feature fires most strongly:

{top}

Abstracts on which the feature does not fire:

{other}

Give the label, 1 to 8 words, as the JSON object {{"label": "..."}} and nothing else."""

PREDICT_SYSTEM = (
    "You predict where one feature of a sparse autoencoder trained on embeddings of arXiv "
    "paper abstracts fires, knowing only its label. For each numbered abstract, score from "
    "0 (certainly does not fire) to 10 (certainly fires strongly). "
    'Answer with a JSON object only: {"predictions": [{"i": 1, "score": 7}, ...]}.'
)
PREDICT_USER = """Label: {label}

Abstracts:

{abstracts}

Score every abstract, i from 1 to {n}, as the JSON object \
{{"predictions": [{{"i": 1, "score": 0}}, ...]}} with one item per abstract and nothing else."""

RETRY_NOTE = (
    "\n\nYour previous answer could not be used ({problem}). "
    "Answer again with only the JSON object asked for."
)


class LabelAPIError(RuntimeError):
    """The chat endpoint failed for good (after retries, or a 4xx); the run should stop."""


class ChatReply(NamedTuple):
    content: str | None
    #: ``prompt_tokens`` and ``completion_tokens``, 0 when the server does not say.
    usage: dict[str, int]
    finish_reason: str | None
    #: OpenAI's ``message.refusal``: set when the model declined.
    refusal: str | None = None


class ChatClient:
    """``POST {api_base}/chat/completions`` in JSON mode; see the module docstring."""

    def __init__(
        self,
        api_base: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 120.0,
        max_retries: int = CHAT_API.retries,
        backoff_s: float = CHAT_API.first_s,
        max_backoff_s: float = CHAT_API.max_s,
        temperature: float | None = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not api_base.startswith(("http://", "https://")):
            raise LabelAPIError(f"api_base must be an http(s) URL, got {api_base!r}")
        if not model.strip():
            raise LabelAPIError("model must be named")
        if max_retries < 0:
            raise LabelAPIError(f"max_retries must be >= 0, got {max_retries}")
        self.api_base = api_base.rstrip("/")
        self.url = f"{self.api_base}/chat/completions"
        self.model = model
        # None leaves it out: some reasoning models refuse any temperature but their own.
        self.temperature = temperature
        key = (api_key or "").strip() or next(
            (os.environ[e].strip() for e in KEY_ENVS if os.environ.get(e, "").strip()), ""
        )
        if not key:
            raise LabelAPIError(
                f"{self.url}: no API key: set SAE_LABEL_API_KEY (or OPENAI_API_KEY; any "
                "non-empty value for a server that needs none)"
            )
        self.http = OpenAIHttp(
            self.url,
            key,
            what=self.url,
            key_hint="SAE_LABEL_API_KEY (or OPENAI_API_KEY)",
            error=LabelAPIError,
            timeout_s=timeout_s,
            max_retries=max_retries,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
            sleep=sleep,
        )

    @property
    def attempts(self) -> int:
        """HTTP requests sent, retries included."""
        return self.http.attempts

    def __repr__(self) -> str:
        return f"ChatClient(api_base={self.api_base!r}, model={self.model!r})"

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def complete(self, messages: Sequence[dict[str, str]]) -> ChatReply:
        """The first choice of one chat completion, after HTTP retries."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages),
            "response_format": {"type": "json_object"},
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        payload = self.http.post(body)
        choices = payload.get("choices") if isinstance(payload, dict) else None
        first = choices[0] if isinstance(choices, list) and choices else None
        message = first.get("message") if isinstance(first, dict) else None
        if not isinstance(message, dict):
            raise LabelAPIError(f"{self.url}: the response has no choices[0].message")
        content = message.get("content")
        refusal = message.get("refusal")
        raw_usage = payload.get("usage")
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        if isinstance(raw_usage, dict):
            for name in usage:
                value = raw_usage.get(name)
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    usage[name] = value
        return ChatReply(
            content if isinstance(content, str) else None,
            usage,
            first.get("finish_reason") if isinstance(first.get("finish_reason"), str) else None,
            refusal if isinstance(refusal, str) and refusal.strip() else None,
        )


# --- the cache ---------------------------------------------------------------------------


class CacheKey(NamedTuple):
    cell: str
    latent: int
    prompt_version: int
    model: str


class LabelCache:
    """Complete results as JSON lines in ``path``, keyed by :class:`CacheKey`.

    Each record is one ``os.write`` of one line to a file opened for appending, then fsync:
    a crash leaves at most a torn last line, which reading skips (as any unreadable line),
    and the next append starts on a fresh line so the torn piece never swallows it. A key
    written twice keeps its last record.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._records: dict[CacheKey, dict[str, Any]] | None = None
        self.skipped_lines = 0

    def get(self, key: CacheKey) -> dict[str, Any] | None:
        return self._load().get(key)

    def put(self, key: CacheKey, result: dict[str, Any]) -> None:
        records = self._load()
        record = {
            **key._asdict(),
            **result,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        line = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if not created and not self._ends_with_newline():
                line = "\n" + line
            data = line.encode("utf-8")
            # One write: O_APPEND places it whole at the end, never interleaved mid-line.
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(f"{self.path}: short write ({written} of {len(data)} bytes)")
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            self._fsync_dir()
        records[key] = record

    def __len__(self) -> int:
        return len(self._load())

    def _load(self) -> dict[CacheKey, dict[str, Any]]:
        if self._records is not None:
            return self._records
        records: dict[CacheKey, dict[str, Any]] = {}
        if self.path.exists():
            with self.path.open("rb") as f:
                for raw in f:
                    key, record = self._parse(raw)
                    if key is None:
                        self.skipped_lines += 1
                        continue
                    records[key] = record
        if self.skipped_lines:
            log.warning(
                "%s: skipped %d unreadable line(s) (a write cut off by a crash)",
                self.path,
                self.skipped_lines,
            )
        self._records = records
        return records

    @staticmethod
    def _parse(raw: bytes) -> tuple[CacheKey | None, dict[str, Any]]:
        if not raw.endswith(b"\n"):  # torn: even if it parses, its write never finished
            return None, {}
        try:
            record = json.loads(raw)
            key = CacheKey(
                str(record["cell"]),
                int(record["latent"]),
                int(record["prompt_version"]),
                str(record["model"]),
            )
        except (ValueError, KeyError, TypeError):
            return None, {}
        if not isinstance(record.get("label"), str):
            return None, {}
        return key, record

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return True
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def _fsync_dir(self) -> None:
        try:
            fd = os.open(self.path.parent, os.O_RDONLY)
        except OSError:  # not every platform opens folders
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


# --- prompts and answers -----------------------------------------------------------------


def clip(text: str, limit: int = MAX_ABSTRACT_CHARS) -> str:
    """One line of at most ``limit`` characters: numbered items stay one per line."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _numbered(texts: Sequence[str]) -> str:
    return "\n".join(f"{i}. {clip(t)}" for i, t in enumerate(texts, start=1)) or "(none)"


def explain_messages(top_texts: Sequence[str], other_texts: Sequence[str]) -> list[dict[str, str]]:
    user = EXPLAIN_USER.format(top=_numbered(top_texts), other=_numbered(other_texts))
    return [{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": user}]


def predict_messages(label: str, texts: Sequence[str]) -> list[dict[str, str]]:
    user = PREDICT_USER.format(
        label=clip(label, MAX_LABEL_CHARS), abstracts=_numbered(texts), n=len(texts)
    )
    return [{"role": "system", "content": PREDICT_SYSTEM}, {"role": "user", "content": user}]


class MalformedAnswerError(ValueError):
    """An answer that does not follow the format asked for; the message says how."""


class RefusedAnswerError(ValueError):
    """The model declined to answer."""


def _json_object(reply: ChatReply) -> dict[str, Any]:
    if reply.finish_reason == "content_filter" or reply.refusal:
        raise RefusedAnswerError
    content = (reply.content or "").strip()
    if not content:
        raise MalformedAnswerError("an empty answer")
    # Some servers wrap JSON mode answers in a Markdown fence anyway.
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", content, re.DOTALL)
    try:
        value = json.loads(fenced.group(1) if fenced else content)
    except ValueError:
        if _REFUSAL.match(content):
            raise RefusedAnswerError from None
        raise MalformedAnswerError(f"not JSON: {clip(content, 80)!r}") from None
    if not isinstance(value, dict):
        raise MalformedAnswerError(f"not a JSON object but {type(value).__name__}")
    return value


def parse_label(reply: ChatReply) -> str:
    """The label of an explain answer; raises MalformedAnswerError or RefusedAnswerError."""
    value = _json_object(reply)
    if "label" not in value:
        raise MalformedAnswerError(f"no 'label' key (keys: {sorted(value)[:5]})")
    label = value["label"]
    if label is None:
        raise RefusedAnswerError
    if not isinstance(label, str):
        raise MalformedAnswerError(f"'label' is a {type(label).__name__}, not a string")
    label = " ".join(label.split())
    if not label or _REFUSAL.match(label):
        raise RefusedAnswerError
    if len(label) > MAX_LABEL_CHARS:
        raise MalformedAnswerError(
            f"a label of {len(label)} characters (at most {MAX_LABEL_CHARS})"
        )
    return label


def parse_scores(reply: ChatReply, n: int) -> list[float]:
    """Scores 1..n of a predict answer, in that order."""
    value = _json_object(reply)
    items = value.get("predictions")
    if not isinstance(items, list):
        raise MalformedAnswerError("no 'predictions' list")
    if len(items) != n:
        raise MalformedAnswerError(f"{len(items)} predictions for {n} abstracts")
    scores: dict[int, float] = {}
    for item in items:
        if not isinstance(item, dict):
            raise MalformedAnswerError("a prediction is not an object")
        i, score = item.get("i"), item.get("score")
        if isinstance(i, float) and i.is_integer():
            i = int(i)
        if not isinstance(i, int) or isinstance(i, bool) or not 1 <= i <= n or i in scores:
            raise MalformedAnswerError(f"bad or repeated index i={i!r}")
        if not isinstance(score, int | float) or isinstance(score, bool):
            raise MalformedAnswerError(f"score of i={i} is not a number")
        if not (math.isfinite(score) and SCORE_MIN <= score <= SCORE_MAX):
            raise MalformedAnswerError(f"score {score!r} of i={i} outside 0-10")
        scores[i] = float(score)
    return [scores[i] for i in range(1, n + 1)]


def f1_score(fires: Sequence[bool], predicted: Sequence[bool]) -> float | None:
    """F1 of predicting firing; None when nothing fires (the positive class is absent)."""
    if not any(fires):
        return None
    tp = sum(f and p for f, p in zip(fires, predicted, strict=True))
    fp = sum(p and not f for f, p in zip(fires, predicted, strict=True))
    fn = sum(f and not p for f, p in zip(fires, predicted, strict=True))
    return 2 * tp / (2 * tp + fp + fn)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson r; 0.0 when either side is constant (a flat guess explains nothing)."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    if denom == 0.0 or not math.isfinite(denom):
        return 0.0
    return float(np.clip((a @ b) / denom, -1.0, 1.0))


# --- the labeler -------------------------------------------------------------------------


@dataclass(frozen=True)
class LLMLabel:
    latent: int
    label: str | None
    f1: float | None
    pearson: float | None
    #: Tokens this call spent: 0 for a cached result.
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    #: "refused", "malformed answer: ...", or None.
    error: str | None


@dataclass(frozen=True)
class Totals:
    prompt_tokens: int
    completion_tokens: int
    #: Chat completions answered (each billed), not counting HTTP retries.
    requests: int
    cached: int
    features: int
    errors: int
    #: In the prices' currency; None without prices.
    cost: float | None


class LLMLabeler:
    """Labels and scores features of one cell; see the module docstring."""

    def __init__(
        self,
        client: ChatClient,
        cache: LabelCache | None,
        *,
        cell: str,
        price_in_per_mtok: float | None = None,
        price_out_per_mtok: float | None = None,
    ) -> None:
        if (price_in_per_mtok is None) != (price_out_per_mtok is None):
            raise ValueError("give both prices per million tokens (input and output) or neither")
        self.client = client
        self.cache = cache
        self.cell = cell
        self.price_in_per_mtok = price_in_per_mtok
        self.price_out_per_mtok = price_out_per_mtok
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._requests = 0
        self._cached = 0
        self._features = 0
        self._errors = 0

    def key(self, latent: int) -> CacheKey:
        # The module's PROMPT_VERSION at call time, so that a bump reaches a live labeler.
        return CacheKey(self.cell, int(latent), PROMPT_VERSION, self.client.model)

    def label(
        self,
        latent: int,
        top_texts: Sequence[str],
        other_texts: Sequence[str],
        heldout: Sequence[tuple[str, float]],
    ) -> LLMLabel:
        """Explain, predict and score one feature. HTTP failures raise :class:`LabelAPIError`."""
        if not top_texts:
            raise ValueError(f"latent {latent}: no top-activating abstracts to explain")
        acts = [float(a) for _, a in heldout]
        if not all(math.isfinite(a) for a in acts):
            raise ValueError(f"latent {latent}: a held-out activation is not finite")
        key = self.key(latent)
        self._features += 1
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None:
            self._cached += 1
            result = LLMLabel(
                key.latent, hit["label"], hit.get("f1"), hit.get("pearson"), 0, 0, True, None
            )
            self._log(result)
            return result

        spent = [0, 0]
        label, error = self._ask(explain_messages(top_texts, other_texts), parse_label, spent)
        f1 = r = None
        if label is not None and heldout:
            # A fixed shuffle per feature, so that position never hints at firing.
            order = list(range(len(heldout)))
            random.Random(f"{self.cell}:{key.latent}").shuffle(order)
            texts = [heldout[j][0] for j in order]
            n = len(texts)
            shown, error = self._ask(
                predict_messages(label, texts), lambda reply: parse_scores(reply, n), spent
            )
            if shown is not None:
                scores = [0.0] * n
                for pos, j in enumerate(order):
                    scores[j] = shown[pos]
                f1 = f1_score([a > 0 for a in acts], [s >= FIRES_AT for s in scores])
                r = pearson(scores, acts)
        if error is not None:
            self._errors += 1
            result = LLMLabel(key.latent, None, None, None, spent[0], spent[1], False, error)
        else:
            result = LLMLabel(key.latent, label, f1, r, spent[0], spent[1], False, None)
            if self.cache is not None:
                self.cache.put(
                    key,
                    {
                        "label": label,
                        "f1": f1,
                        "pearson": r,
                        "prompt_tokens": spent[0],
                        "completion_tokens": spent[1],
                    },
                )
        self._log(result)
        return result

    def _ask(
        self,
        messages: list[dict[str, str]],
        parse: Callable[[ChatReply], Any],
        spent: list[int],
    ) -> tuple[Any, str | None]:
        """(parsed answer, None), or (None, the error to record); one retry when malformed."""
        problem = ""
        for attempt in range(2):
            asked = messages
            if attempt:
                note = RETRY_NOTE.format(problem=problem)
                asked = [
                    *messages[:-1],
                    {**messages[-1], "content": messages[-1]["content"] + note},
                ]
            reply = self.client.complete(asked)
            self._requests += 1
            spent[0] += reply.usage["prompt_tokens"]
            spent[1] += reply.usage["completion_tokens"]
            self._prompt_tokens += reply.usage["prompt_tokens"]
            self._completion_tokens += reply.usage["completion_tokens"]
            try:
                return parse(reply), None
            except RefusedAnswerError:
                return None, "refused"
            except MalformedAnswerError as exc:
                problem = str(exc)
        return None, f"malformed answer: {problem}"

    def _log(self, result: LLMLabel) -> None:
        log.debug(
            "%s latent %d: label=%r f1=%s pearson=%s tokens=%d/%d cached=%s error=%s",
            self.cell,
            result.latent,
            result.label,
            "-" if result.f1 is None else f"{result.f1:.3f}",
            "-" if result.pearson is None else f"{result.pearson:.3f}",
            result.prompt_tokens,
            result.completion_tokens,
            result.cached,
            result.error,
        )

    def totals(self) -> Totals:
        cost = None
        if self.price_in_per_mtok is not None and self.price_out_per_mtok is not None:
            cost = (
                self._prompt_tokens * self.price_in_per_mtok
                + self._completion_tokens * self.price_out_per_mtok
            ) / 1e6
        return Totals(
            prompt_tokens=self._prompt_tokens,
            completion_tokens=self._completion_tokens,
            requests=self._requests,
            cached=self._cached,
            features=self._features,
            errors=self._errors,
            cost=cost,
        )
