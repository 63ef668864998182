"""What a search accepts, and its error: importable without torch, so that ``sae search``
can check its input and ask a running ``sae serve`` before deciding to load anything."""

from __future__ import annotations

#: Longer than any abstract; a query beyond it is a paste gone wrong.
MAX_QUERY_CHARS = 4000
#: Strengths above this are off the end of what the decoder was trained to produce.
MAX_STRENGTH = 20.0
MAX_TOP = 100
#: Strength a feature gets when added without one (the page's "add", a bare --boost ID).
ADD_STRENGTH = 3.0


class SearchInputError(ValueError):
    """Bad input to a search (the message names it); ``status`` is its HTTP code."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status
