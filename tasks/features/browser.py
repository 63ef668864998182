"""``browser.html``: one self-contained page over a ``features.json`` document.

:func:`render_browser` writes the document into the page as JSON (a
``<script type="application/json" id="features-data">`` block) beside inline CSS and plain
JS, and nothing else: the page makes no request at all (no CDN, fonts nor images), so it
works from a file and from MLflow's artifact viewer, which shows HTML in a sandboxed
iframe (scripts allowed, an opaque origin). Links to papers go to arxiv.org, built in JS.

The page's skeleton, style and script are package files beside this module:
``browser.html`` (with ``__TITLE__``, ``__CSS__``, ``__JS__`` and ``__DATA__`` in it),
``browser.css`` and ``browser.js`` (with ``__ARXIV__``). :func:`render_browser` inlines
them all, so what it writes is still the one file.

The page: a header with the cell and its summary; a search box (label terms, or ``#id``),
a "hide dead" switch, a family filter and an arXiv category filter (the features
over-represented in it) over a sortable table of the features, which shows 200 rows at a
time; and a card for the chosen feature (``#f{id}`` in the URL): its label and scores,
its over-represented categories, top and middle papers, decoder neighbours, co-occurring
features, and its family as a tree. With no card open, the cell's category probes.
"""

from __future__ import annotations

import functools
import html
import json
import math
import re
from importlib import resources
from typing import Any

#: Where a paper's link goes: the only address the page holds.
ARXIV_ABS = "https://arxiv.org/abs/"

#: A ``__NAME__`` in ``browser.html`` (or ``__ARXIV__`` in ``browser.js``): filled by Python.
_PLACEHOLDER = re.compile(r"__([A-Z]+)__")


def _finite(x: Any) -> Any:
    """``x`` with every NaN / infinity in it replaced by None (JSON has neither)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def embed_json(doc: dict) -> str:
    """``doc`` as JSON safe inside a ``<script>`` element: ``<``, ``>`` and ``&`` escaped.

    ``json.loads`` (and the page's ``JSON.parse``) read it back as ``doc``; no title can
    close the element (``</script>``) or open a comment in it (``<!--``).
    """
    try:
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:  # a NaN somewhere: null, as the document's writer means it
        text = json.dumps(_finite(doc), ensure_ascii=False, separators=(",", ":"))
    return (
        text.replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def render_browser(doc: dict) -> str:
    """The page (HTML text) over ``doc``, a ``features.json`` document."""
    title = html.escape(f"features · {doc.get('cell') or doc.get('model') or ''}".strip(" ·"))
    script = _fill(_asset("browser.js"), ARXIV=ARXIV_ABS)
    return _fill(
        _asset("browser.html"),
        TITLE=title,
        CSS=_asset("browser.css"),
        JS=script,
        DATA=embed_json(doc),
    )


@functools.cache
def _asset(name: str) -> str:
    """A file of the page beside this module (package data, so a wheel install has it too)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _fill(template: str, **values: str) -> str:
    """``template`` with each ``__NAME__`` replaced by ``values[NAME]``, in one pass.

    One pass, so a value is never searched in turn: a title or a document that holds
    ``__DATA__`` goes into the page as it is.
    """
    return _PLACEHOLDER.sub(lambda m: values[m[1]], template)
