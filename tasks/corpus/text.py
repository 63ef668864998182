"""Pure helpers for arXiv ids, dates, category codes and abstract text.

Every function here takes one value and either returns its normal form or raises
``ValueError`` naming the value; none of them knows about records or files.
"""

from __future__ import annotations

import html
import re
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime

#: Every arXiv archive, current and retired: the part before the dot in a category code
#: (``astro-ph`` in ``astro-ph.GA``) and before the slash in an old-style id.
ARCHIVES = frozenset(
    {
        "acc-phys", "adap-org", "alg-geom", "ao-sci", "astro-ph", "atom-ph", "bayes-an",
        "chao-dyn", "chem-ph", "cmp-lg", "comp-gas", "cond-mat", "cs", "dg-ga", "econ",
        "eess", "funct-an", "gr-qc", "hep-ex", "hep-lat", "hep-ph", "hep-th", "math",
        "math-ph", "mtrl-th", "nlin", "nucl-ex", "nucl-th", "patt-sol", "physics",
        "plasm-ph", "q-alg", "q-bio", "q-fin", "quant-ph", "solv-int", "stat", "supr-con",
    }
)  # fmt: skip

_URL_PREFIX = re.compile(r"^https?://(?:export\.|www\.)?arxiv\.org/(?:abs|pdf)/", re.IGNORECASE)
_ARXIV_PREFIX = re.compile(r"^arxiv:", re.IGNORECASE)
# The astro-ph Hugging Face set appends this to every id.
_HF_SUFFIX = re.compile(r"_arxiv$", re.IGNORECASE)
_VERSION = re.compile(r"v(\d+)$")
_NEW_STYLE = re.compile(r"(\d{2})(\d{2})\.(\d{4,5})")
# The slash is optional because the astro-ph Hugging Face set drops it (astro-ph0001001).
_OLD_STYLE = re.compile(r"([a-z]+(?:-[a-z]+)?)(\.[A-Z]{2})?/?((\d{2})(\d{2})\d{3})")
# Subject classes are two capitals (cs.LG) or lower-case words (physics.plasm-ph).
_CATEGORY = re.compile(r"([a-z]+(?:-[a-z]+)?)(?:\.(?:[A-Z]{2}|[a-z]+(?:-[a-z]+)?))?")


def _strip_id(raw: str) -> str:
    text = _URL_PREFIX.sub("", raw.strip())
    return _HF_SUFFIX.sub("", _ARXIV_PREFIX.sub("", text))


def _year(yy: int) -> int:
    # Old-style ids started in 1991; new-style ids in 2007.
    return 1900 + yy if yy >= 91 else 2000 + yy


def normalise_id(raw: str) -> str:
    """``http://arxiv.org/abs/2401.01234v2`` -> ``2401.01234``; old-style ids keep their slash.

    Raises ValueError naming ``raw`` when it is not an arXiv identifier.
    """
    if not isinstance(raw, str):
        raise ValueError(f"arXiv id must be a string, got {type(raw).__name__}")
    text = _VERSION.sub("", _strip_id(raw))
    new = _NEW_STYLE.fullmatch(text)
    if new:
        yymm, digits = new.group(1) + new.group(2), new.group(3)
        # Four digits after the dot until 1412, five from 1501 on.
        if 1 <= int(new.group(2)) <= 12 and len(digits) == (4 if yymm < "1501" else 5):
            return text
    old = _OLD_STYLE.fullmatch(text)
    if old and old.group(1) in ARCHIVES and 1 <= int(old.group(5)) <= 12:
        return f"{old.group(1)}{old.group(2) or ''}/{old.group(3)}"
    raise ValueError(f"not an arXiv id: {raw!r}")


def id_version(raw: str) -> int | None:
    """The ``vN`` suffix of an id as an int, or None when there is none."""
    if not isinstance(raw, str):
        return None
    match = _VERSION.search(_strip_id(raw))
    return int(match.group(1)) if match else None


def date_from_id(arxiv_id: str) -> date:
    """The first day of the id's YYMM month: the best date a record without one can have."""
    text = normalise_id(arxiv_id)
    yymm = text.split("/")[1][:4] if "/" in text else text[:4]
    return date(_year(int(yymm[:2])), int(yymm[2:]), 1)


def parse_date(value: str | date) -> date:
    """YYYY-MM-DD, an ISO-8601 timestamp or an RFC-2822 one, as a (UTC) calendar date."""
    if isinstance(value, datetime):
        return _utc_date(value)
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        raise ValueError(f"date must be a string, got {type(value).__name__}: {value!r}")
    text = value.strip()
    try:
        return _utc_date(datetime.fromisoformat(text))
    except ValueError:
        pass
    try:
        return _utc_date(parsedate_to_datetime(text))
    except (TypeError, ValueError, IndexError):
        pass
    raise ValueError(f"unrecognised date {value!r} (expected YYYY-MM-DD, ISO 8601 or RFC 2822)")


def _utc_date(moment: datetime) -> date:
    return (moment.astimezone(UTC) if moment.tzinfo else moment).date()


def category_codes(tokens: list[str]) -> list[str]:
    """The tokens that are arXiv category codes, in order, without repeats.

    Scrapers sometimes pick up ACM (``I.2.6``) or MSC (``68T05``) classes; those go.
    """
    codes: list[str] = []
    for token in (t.strip() for t in tokens):
        match = _CATEGORY.fullmatch(token)
        if match and match.group(1) in ARCHIVES and token not in codes:
            codes.append(token)
    return codes


_MARKUP = "p|br|i|b|em|strong|sub|sup|a|span|div|font|tt|u"
_TAG = re.compile(rf"</?({_MARKUP})(?:\s+[^<>]*)?\s*/?>", re.IGNORECASE)
# "<p>" and "<b>" are also maths (expectations, bra-kets): only a closing tag, a <br> or
# attributes show that the text really is HTML.
_LOOKS_LIKE_HTML = re.compile(
    rf"</(?:{_MARKUP})\s*>|<br\s*/?>|<(?:{_MARKUP})\s+[a-z-]+\s*=", re.IGNORECASE
)
_BLOCK_TAGS = frozenset({"p", "br", "div"})
# Only entities with their semicolon: html.unescape alone would turn "&param" into "¶m".
_ENTITY = re.compile(r"&(?:#\d+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);")


def clean_text(text: str) -> str:
    """One line of plain text: markup tags removed, entities decoded, whitespace collapsed.

    Other angle-bracket text (``<think>``, ``<z>=0.7``) and LaTeX stay as they are.
    """
    if _LOOKS_LIKE_HTML.search(text):
        text = _TAG.sub(lambda m: " " if m.group(1).lower() in _BLOCK_TAGS else "", text)
    text = _ENTITY.sub(lambda m: html.unescape(m.group(0)), text)
    return " ".join(text.split())


# C0 and C1 control characters other than tab, newline, vertical tab, form feed and
# return; C1 ones are what cp1252 text read as latin-1 leaves behind.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")


def is_undecodable(text: str) -> bool:
    """True when the text carries replacement characters or stray control characters."""
    return "\ufffd" in text or _CONTROL.search(text) is not None


_WITHDRAWN_OPENING = re.compile(
    r"^\W*(?:(?:this|the)\s+(?:paper|article|manuscript|submission|preprint|work|version)"
    r"\s+(?:has\s+been|is|was|is\s+being)\s+(?:withdrawn|removed)"
    r"|(?:paper\s+|article\s+)?withdrawn\b)",
    re.IGNORECASE,
)
_WITHDRAWAL_WORD = re.compile(r"\bwithdr(?:aw|awn|ew|awing)\b", re.IGNORECASE)
# Long abstracts mention withdrawal for other reasons (drug withdrawal, withdrawn loans);
# only a short one that mentions it is a withdrawal notice.
_NOTICE_CHARS = 300


def is_withdrawn(abstract: str) -> bool:
    """True for withdrawal notices in place of an abstract ("This paper has been withdrawn ...")."""
    if _WITHDRAWN_OPENING.search(abstract):
        return True
    return len(abstract) < _NOTICE_CHARS and _WITHDRAWAL_WORD.search(abstract) is not None
