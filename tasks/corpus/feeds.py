"""arXiv's two XML feeds as pages of :class:`RawRecord`: the API's Atom and OAI-PMH ListRecords.

Parsing only, no HTTP (that is :mod:`tasks.corpus.harvest`). Both parsers go by namespace
and element name, never by position, prefix or whitespace, because arXiv serves the same
feed in more than one serialisation. Text is kept as found (hard wraps included):
normalising it is validation's job, and quarantine wants the original.
"""

from __future__ import annotations

import copy
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from tasks.corpus.records import RawRecord

ATOM_NS = "http://www.w3.org/2005/Atom"
OPENSEARCH_NS = "http://a9.com/-/spec/opensearch/1.1/"
ARXIV_ATOM_NS = "http://arxiv.org/schemas/atom"
OAI_NS = "http://www.openarchives.org/OAI/2.0/"
OAI_ARXIV_NS = "http://arxiv.org/OAI/arXiv/"
OAI_ARXIV_RAW_NS = "http://arxiv.org/OAI/arXivRaw/"

_API_ERROR_ID = re.compile(r"^https?://arxiv\.org/api/errors", re.IGNORECASE)
_VERSION_SUFFIX = re.compile(r"v(\d+)$")
_OAI_ID_PREFIX = "oai:arXiv.org:"
#: The one OAI "error" that means success: the window simply holds no records.
NO_RECORDS_MATCH = "noRecordsMatch"


class FeedError(ValueError):
    """The response is not a feed this module can read (malformed XML, wrong root element)."""


@dataclass(frozen=True)
class AtomPage:
    """One arXiv API response. ``error`` is set when arXiv answered with its error entry."""

    records: list[RawRecord]
    total_results: int | None
    start_index: int | None
    items_per_page: int | None
    error: str | None = None


@dataclass(frozen=True)
class OaiPage:
    """One OAI-PMH ListRecords response.

    ``resumption_token`` is None when the listing is complete (an empty token is reported
    as None). ``error_code`` is the OAI error code; ``error`` its message, left None for
    ``noRecordsMatch``, which is an empty result and not a failure.
    """

    records: list[RawRecord]
    resumption_token: str | None
    complete_list_size: int | None
    error_code: str | None = None
    error: str | None = None


def _q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


def _parse_xml(data: bytes, source: str, root_ns: str, root_name: str) -> ET.Element:
    # expat would expand internal entities (the "billion laughs"); arXiv never declares any.
    if b"<!ENTITY" in data:
        raise FeedError(f"{source}: refusing XML that declares entities")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise FeedError(f"{source}: malformed XML: {exc}") from exc
    if root.tag != _q(root_ns, root_name):
        raise FeedError(f"{source}: expected a {root_name} element in {root_ns}, got {root.tag}")
    return root


def _text(parent: ET.Element, ns: str, name: str) -> str | None:
    """All text inside the first ``ns:name`` child, or None when there is no such child."""
    el = parent.find(_q(ns, name))
    return None if el is None else "".join(el.itertext())


def _int(value: str | None, what: str, source: str) -> int | None:
    if value is None or not value.strip():
        return None
    try:
        return int(value.strip())
    except ValueError:
        raise FeedError(f"{source}: {what} is not an integer: {value.strip()!r}") from None


def _xml_text(el: ET.Element) -> str:
    """The element as XML text for quarantine, readable: no ``ns0:`` prefixes.

    ElementTree invents a prefix per namespace; instead each element whose namespace
    differs from its parent's declares it as the default, which is what arXiv does.
    """
    el = copy.deepcopy(el)
    el.tail = None
    _declare_defaults(el, parent_ns=None)
    return ET.tostring(el, encoding="unicode")


def _declare_defaults(el: ET.Element, parent_ns: str | None) -> None:
    ns, _, name = el.tag[1:].partition("}") if el.tag.startswith("{") else ("", "", el.tag)
    if ns != parent_ns:
        el.set("xmlns", ns)
    el.tag = name
    for child in el:
        _declare_defaults(child, ns)


def _version(arxiv_id: str | None) -> int | None:
    match = _VERSION_SUFFIX.search(arxiv_id or "")
    return int(match.group(1)) if match else None


# --- Atom (arXiv API) ---------------------------------------------------------------------


def parse_atom(data: bytes, source: str) -> AtomPage:
    """Read one arXiv API response; ``source`` (the request URL) goes into every record."""
    feed = _parse_xml(data, source, ATOM_NS, "feed")
    records: list[RawRecord] = []
    errors: list[str] = []
    for i, entry in enumerate(feed.findall(_q(ATOM_NS, "entry")), 1):
        entry_id = (_text(entry, ATOM_NS, "id") or "").strip()
        if _API_ERROR_ID.match(entry_id):
            summary = " ".join((_text(entry, ATOM_NS, "summary") or "").split())
            errors.append(f"arXiv API error: {summary or '(no message)'} ({entry_id})")
            continue
        fields = _atom_fields(entry, entry_id)
        records.append(RawRecord(source, f"entry {i}", fields, _xml_text(entry)))
    return AtomPage(
        records=records,
        total_results=_int(_text(feed, OPENSEARCH_NS, "totalResults"), "totalResults", source),
        start_index=_int(_text(feed, OPENSEARCH_NS, "startIndex"), "startIndex", source),
        items_per_page=_int(_text(feed, OPENSEARCH_NS, "itemsPerPage"), "itemsPerPage", source),
        error="; ".join(errors) or None,
    )


def _atom_fields(entry: ET.Element, entry_id: str) -> dict[str, Any]:
    published = _text(entry, ATOM_NS, "published")
    return {
        "id": entry_id or None,
        "version": _version(entry_id),
        "title": _text(entry, ATOM_NS, "title"),
        "abstract": _text(entry, ATOM_NS, "summary"),
        "categories": _atom_categories(entry),
        "published": published.strip() if published else None,
    }


def _atom_categories(entry: ET.Element) -> list[str]:
    """The primary category first, then the others in feed order, each once."""
    primary = entry.find(_q(ARXIV_ATOM_NS, "primary_category"))
    terms = [primary.get("term")] if primary is not None else []
    terms += [c.get("term") for c in entry.findall(_q(ATOM_NS, "category"))]
    ordered: list[str] = []
    for term in terms:
        if term and term.strip() and term.strip() not in ordered:
            ordered.append(term.strip())
    return ordered


# --- OAI-PMH ListRecords (arXiv and arXivRaw formats) -------------------------------------


def parse_oai(data: bytes, source: str) -> OaiPage:
    """Read one ListRecords response in the ``arXiv`` or ``arXivRaw`` metadata format.

    ``published`` is the arXivRaw v1 date (the true submission date). In the ``arXiv``
    format it is ``<created>``, which is not reliable: arXiv has been seen to reset it
    years after submission, so it must not be used to tell new papers from revised ones.
    """
    root = _parse_xml(data, source, OAI_NS, "OAI-PMH")
    errors = root.findall(_q(OAI_NS, "error"))
    if errors:
        code = errors[0].get("code") or "unknown"
        message = "; ".join(" ".join("".join(e.itertext()).split()) for e in errors)
        return OaiPage(
            records=[],
            resumption_token=None,
            complete_list_size=None,
            error_code=code,
            error=None if code == NO_RECORDS_MATCH else f"OAI-PMH {code}: {message}",
        )
    listing = root.find(_q(OAI_NS, "ListRecords"))
    if listing is None:
        raise FeedError(f"{source}: OAI-PMH response has neither ListRecords nor error")
    records = [
        _oai_record(record, source, f"record {i}")
        for i, record in enumerate(listing.findall(_q(OAI_NS, "record")), 1)
    ]
    token_el = listing.find(_q(OAI_NS, "resumptionToken"))
    token = (token_el.text or "").strip() if token_el is not None else ""
    size = token_el.get("completeListSize") if token_el is not None else None
    return OaiPage(
        records=records,
        resumption_token=token or None,
        complete_list_size=_int(size, "completeListSize", source),
    )


def _oai_record(record: ET.Element, source: str, location: str) -> RawRecord:
    raw = _xml_text(record)
    header = record.find(_q(OAI_NS, "header"))
    identifier = _text(header, OAI_NS, "identifier") if header is not None else None
    arxiv_id = _strip_oai_prefix(identifier)
    if header is not None and header.get("status") == "deleted":
        return RawRecord(source, location, {"id": arxiv_id, "deleted": True}, raw)
    metadata = record.find(_q(OAI_NS, "metadata"))
    if metadata is None or len(metadata) == 0:
        return RawRecord(source, location, None, raw, error=f"record {arxiv_id} has no metadata")
    body = metadata[0]
    if body.tag == _q(OAI_ARXIV_RAW_NS, "arXivRaw"):
        return RawRecord(source, location, _arxiv_raw_fields(body), raw)
    if body.tag == _q(OAI_ARXIV_NS, "arXiv"):
        return RawRecord(source, location, _arxiv_fields(body), raw)
    return RawRecord(
        source, location, None, raw, error=f"record {arxiv_id}: unsupported metadata {body.tag}"
    )


def _strip_oai_prefix(identifier: str | None) -> str | None:
    if identifier is None:
        return None
    identifier = identifier.strip()
    if identifier.lower().startswith(_OAI_ID_PREFIX.lower()):
        return identifier[len(_OAI_ID_PREFIX) :]
    return identifier


def _stripped(value: str | None) -> str | None:
    return value.strip() if value is not None else None


def _arxiv_fields(body: ET.Element) -> dict[str, Any]:
    ns = OAI_ARXIV_NS
    return {
        "id": _stripped(_text(body, ns, "id")),
        "version": None,
        "title": _text(body, ns, "title"),
        "abstract": _text(body, ns, "abstract"),
        "categories": _stripped(_text(body, ns, "categories")),
        "published": _stripped(_text(body, ns, "created")),
    }


def _arxiv_raw_fields(body: ET.Element) -> dict[str, Any]:
    ns = OAI_ARXIV_RAW_NS
    dates: dict[int, str | None] = {}
    for version in body.findall(_q(ns, "version")):
        number = _version(version.get("version", ""))
        if number is not None:
            dates[number] = _stripped(_text(version, ns, "date"))
    return {
        "id": _stripped(_text(body, ns, "id")),
        "version": max(dates) if dates else None,
        "title": _text(body, ns, "title"),
        "abstract": _text(body, ns, "abstract"),
        "categories": _stripped(_text(body, ns, "categories")),
        "published": dates.get(1),
    }
