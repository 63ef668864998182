"""What a search accepts, and its error: importable without torch, so that ``sae search``
can check its input and ask a running ``sae serve`` before deciding to load anything."""

from __future__ import annotations

#: Longer than any abstract; a query beyond it is a paste gone wrong.
MAX_QUERY_CHARS = 4000
#: What a feature's strength counts in: the page's hint, the CLI's help and the engine's
#: refusals all say it (:meth:`tasks.search.engine.SearchEngine.steer` does it).
STRENGTH_UNIT = (
    "1 is as strong as the query's strongest feature; 0 steers away from a feature the query has"
)
#: The slider's end, past where results leave the query's subject: on a 3,000-paper
#: cs.LG sweep (``python -m tasks.search.steer_bench``) a feature added at 8 already took
#: the top 10's mean cosine to the query below that of the query's 100th paper.
MAX_STRENGTH = 10.0
MAX_TOP = 100
#: Strength a feature gets when added without one (the page's "add", a bare --boost ID):
#: there it put ~5x more of the feature's arXiv category in the top 10, whose cosine to
#: the query stayed above that of the query's 30th paper.
ADD_STRENGTH = 4.0


class SearchInputError(ValueError):
    """Bad input to a search (the message names it); ``status`` is its HTTP code."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status
