"""A local stand-in for the arXiv API and OAI-PMH endpoints, so harvest tests never go online.

    with ArxivServer(api_entries=[Paper("2601.00001"), ...]) as server:
        server.fail(Reply.error(503, retry_after="1"))       # the next request gets this
        config = HarvestConfig(api_url=server.api_url, oai_url=server.oai_url, ...)
        ...
        server.requests                                     # what arrived, when

The API answers ``start``/``max_results`` slices of those ``api_entries`` filed under one
of the query's ``cat:`` terms, with ``totalResults`` set; OAI-PMH serves ``oai_pages``
one per request, chained by resumption tokens ``tok1``, ``tok2``, ... Replies queued with
:meth:`ArxivServer.fail` are served first, to the requests they match, which is how tests
inject 503s, cut-off XML, error entries and so on.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape, quoteattr

ATOM_TYPE = "application/atom+xml; charset=utf-8"
XML_TYPE = "text/xml; charset=utf-8"
#: A response cut off mid-element, as a dropped connection leaves it.
MALFORMED = b'<?xml version="1.0" encoding="UTF-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom">\n<entry><id>http://arxiv.org/abs/26'

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class Paper:
    """One canned paper. ``submitted`` is the v1 date; ``revised`` the last version's."""

    id: str
    title: str = "A canned title"
    abstract: str = "A canned abstract about sparse autoencoders."
    categories: tuple[str, ...] = ("cs.LG",)
    submitted: datetime = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    versions: int = 1
    revised: datetime | None = None

    @property
    def last_change(self) -> datetime:
        return self.revised or self.submitted


@dataclass(frozen=True)
class Reply:
    """What the server sends: a status, headers and a body, optionally late or cut."""

    status: int = 200
    body: bytes = b""
    content_type: str = XML_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    """Wait this long before answering."""
    chunk_delay_s: float = 0.0
    """Send the body in ``chunks`` pieces with this pause between them."""
    chunks: int = 10
    disconnect: bool = False
    """Close the connection without answering."""

    @classmethod
    def error(cls, status: int, *, retry_after: str | None = None, body: bytes = b"") -> Reply:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return cls(status, body or f"status {status}".encode(), "text/plain", headers)

    @classmethod
    def xml(cls, body: bytes, **kwargs) -> Reply:
        return cls(200, body, **kwargs)


@dataclass(frozen=True)
class Request:
    time: float
    """``time.monotonic()`` when the request arrived."""
    path: str
    query: dict[str, str]
    """The first value of each parameter, decoded."""
    headers: dict[str, str]


# --- bodies -----------------------------------------------------------------------------------


def rfc2822(when: datetime) -> str:
    """arXivRaw's date form, ``Mon, 5 Jan 2026 12:00:00 GMT`` (no locale involved)."""
    when = when.astimezone(UTC)
    day, month = _DAYS[when.weekday()], _MONTHS[when.month - 1]
    return f"{day}, {when.day} {month} {when.year} {when:%H:%M:%S} GMT"


def atom_entry(paper: Paper) -> str:
    versioned = f"http://arxiv.org/abs/{paper.id}v{paper.versions}"
    categories = "".join(
        f'<category term={quoteattr(c)} scheme="http://arxiv.org/schemas/atom"/>'
        for c in paper.categories
    )
    return (
        f"<entry><id>{versioned}</id><title>{escape(paper.title)}</title>"
        f"<updated>{paper.last_change:%Y-%m-%dT%H:%M:%SZ}</updated>"
        f'<link href="{versioned}" rel="alternate" type="text/html"/>'
        f"<summary>{escape(paper.abstract)}</summary>{categories}"
        f"<published>{paper.submitted:%Y-%m-%dT%H:%M:%SZ}</published>"
        f"<arxiv:primary_category term={quoteattr(paper.categories[0])}/>"
        "<author><name>A. Author</name></author></entry>"
    )


def atom_feed(entries: Iterable[str], *, total: int, start: int, per_page: int) -> bytes:
    """An API response in the current serialisation (namespaces declared on the root)."""
    return (
        "<?xml version='1.0' encoding='UTF-8'?>\n"
        '<feed xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/" '
        'xmlns:arxiv="http://arxiv.org/schemas/atom" xmlns="http://www.w3.org/2005/Atom">'
        "<id>https://arxiv.org/api/local</id><title>arXiv Query: local</title>"
        "<updated>2026-01-06T00:00:00Z</updated>"
        f"<opensearch:itemsPerPage>{per_page}</opensearch:itemsPerPage>"
        f"<opensearch:totalResults>{total}</opensearch:totalResults>"
        f"<opensearch:startIndex>{start}</opensearch:startIndex>" + "".join(entries) + "</feed>"
    ).encode()


def atom_error(message: str) -> bytes:
    """The API's answer to a bad query: HTTP 200 and a single entry titled Error."""
    anchor = "http://arxiv.org/api/errors#" + message.replace(" ", "_")
    entry = (
        f"<entry><id>{escape(anchor)}</id><title>Error</title>"
        f"<summary>{escape(message)}</summary><updated>2026-01-06T00:00:00Z</updated>"
        f'<link href={quoteattr(anchor)} rel="alternate" type="text/html"/>'
        "<author><name>arXiv api core</name></author></entry>"
    )
    return atom_feed([entry], total=1, start=0, per_page=1)


def oai_raw_record(paper: Paper, *, sets: Sequence[str] = ("cs:cs:LG",)) -> str:
    """A ListRecords ``<record>`` in the arXivRaw format; its datestamp is the last change."""
    steps = max(paper.versions - 1, 1)
    span = paper.last_change - paper.submitted
    versions = "".join(
        f'<version version="v{n}"><date>{rfc2822(paper.submitted + span * (n - 1) / steps)}'
        f"</date><size>{100 + n}kb</size><source_type>D</source_type></version>"
        for n in range(1, paper.versions + 1)
    )
    set_specs = "".join(f"<setSpec>{escape(s)}</setSpec>" for s in sets)
    return (
        f"<record><header><identifier>oai:arXiv.org:{paper.id}</identifier>"
        f"<datestamp>{paper.last_change:%Y-%m-%d}</datestamp>{set_specs}</header>"
        '<metadata><arXivRaw xmlns="http://arxiv.org/OAI/arXivRaw/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation='
        '"http://arxiv.org/OAI/arXivRaw/ http://arxiv.org/OAI/arXivRaw.xsd">'
        f"<id>{paper.id}</id><submitter>A. Author</submitter>{versions}"
        f"<title>{escape(paper.title)}</title><authors>A. Author, B. Author</authors>"
        f"<categories>{' '.join(paper.categories)}</categories>"
        "<comments>10 pages</comments>"
        "<license>http://creativecommons.org/licenses/by/4.0/</license>"
        f"<abstract>{escape(paper.abstract)}</abstract></arXivRaw></metadata></record>"
    )


def oai_deleted(arxiv_id: str, datestamp: date) -> str:
    return (
        f'<record><header status="deleted"><identifier>oai:arXiv.org:{arxiv_id}</identifier>'
        f"<datestamp>{datestamp:%Y-%m-%d}</datestamp><setSpec>cs:cs:LG</setSpec></header>"
        "</record>"
    )


def _oai_envelope(inner: str, request: str = "") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<OAI-PMH xmlns="http://www.openarchives.org/OAI/2.0/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f"<responseDate>2026-01-06T05:54:30Z</responseDate>{request}{inner}</OAI-PMH>"
    ).encode()


def oai_list_records(
    records: Iterable[str],
    token: str | None,
    *,
    complete_list_size: int | None = None,
    cursor: int = 0,
) -> bytes:
    """A ListRecords page. ``token=None`` ends the listing with an empty token element."""
    attrs = f' cursor="{cursor}"'
    if complete_list_size is not None:
        attrs += f' completeListSize="{complete_list_size}"'
    resumption = f"<resumptionToken{attrs}>{escape(token or '')}</resumptionToken>"
    request = '<request verb="ListRecords">http://oaipmh.arxiv.org/oai</request>'
    return _oai_envelope(f"<ListRecords>{''.join(records)}{resumption}</ListRecords>", request)


def oai_error(code: str, message: str) -> bytes:
    return _oai_envelope(f"<error code={quoteattr(code)}>{escape(message)}</error>")


def unused_url() -> str:
    """A URL on a local port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/query"


# --- server -----------------------------------------------------------------------------------


class ArxivServer:
    """Serves ``api_path`` and ``oai_path`` on 127.0.0.1 from a background thread."""

    api_path = "/api/query"
    oai_path = "/oai"

    def __init__(
        self,
        *,
        api_entries: Sequence[Paper] = (),
        api_total: int | None = None,
        oai_pages: Sequence[Sequence[str | Paper]] = (),
    ) -> None:
        self.api_entries = list(api_entries)
        self.api_total = api_total
        """``totalResults`` to announce; by default the number of ``api_entries``."""
        self.oai_pages = [list(page) for page in oai_pages]
        self.requests: list[Request] = []
        self._injected: list[tuple[Callable[[Request], bool], Reply]] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    def __enter__(self) -> ArxivServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> ArxivServer:
        httpd = _QuietServer(("127.0.0.1", 0), _Handler)
        httpd.owner = self
        self._httpd = httpd
        # A short poll interval makes stop() quick: shutdown() waits for the next poll.
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start the server first"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        return self.url + self.api_path

    @property
    def oai_url(self) -> str:
        return self.url + self.oai_path

    # scripting

    def fail(self, *replies: Reply, when: Callable[[Request], bool] | None = None) -> None:
        """Answer the next requests matching ``when`` (default: any) with ``replies``, in order."""
        match = when or (lambda _request: True)
        with self._lock:
            self._injected.extend((match, reply) for reply in replies)

    def requests_to(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    # answering

    def answer(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            for i, (match, reply) in enumerate(self._injected):
                if match(request):
                    del self._injected[i]
                    return reply
        if request.path == self.api_path:
            return self._api(request.query)
        if request.path == self.oai_path:
            return self._oai(request.query)
        return Reply.error(404)

    def _api(self, query: dict[str, str]) -> Reply:
        try:
            start = int(query.get("start", "0"))
            size = int(query.get("max_results", "10"))
        except ValueError:
            return Reply.error(400, body=b"start and max_results must be integers")
        if size > 2000 or start + size > 30000 or "search_query" not in query:
            return Reply.error(400, body=b"bad query")
        # As arXiv does: only the papers filed under one of the query's cat: terms.
        wanted = set(re.findall(r"cat:([A-Za-z.-]+)", query["search_query"]))
        matching = [p for p in self.api_entries if not wanted or wanted & set(p.categories)]
        entries = [atom_entry(p) for p in matching[start : start + size]]
        total = len(matching) if self.api_total is None else self.api_total
        return Reply.xml(
            atom_feed(entries, total=total, start=start, per_page=size), content_type=ATOM_TYPE
        )

    def _oai(self, query: dict[str, str]) -> Reply:
        if query.get("verb") != "ListRecords":
            return Reply.xml(oai_error("badVerb", "only ListRecords is served here"))
        token = query.get("resumptionToken")
        if token is not None:
            if set(query) != {"verb", "resumptionToken"}:
                return Reply.xml(oai_error("badArgument", "resumptionToken is exclusive"))
            index = _token_index(token, len(self.oai_pages))
            if index is None:
                return Reply.xml(oai_error("badResumptionToken", f"unknown token {token}"))
        elif not {"metadataPrefix", "from", "until"} <= set(query):
            return Reply.xml(oai_error("badArgument", "metadataPrefix, from, until required"))
        else:
            index = 0
        if not self.oai_pages or not any(self.oai_pages):
            return Reply.xml(oai_error("noRecordsMatch", "no records in this window"))
        return Reply.xml(self._oai_page(index))

    def _oai_page(self, index: int) -> bytes:
        page = [oai_raw_record(r) if isinstance(r, Paper) else r for r in self.oai_pages[index]]
        last = index == len(self.oai_pages) - 1
        size = sum(len(p) for p in self.oai_pages)
        cursor = sum(len(p) for p in self.oai_pages[:index])
        token = None if last else f"tok{index + 1}"
        return oai_list_records(page, token, complete_list_size=size, cursor=cursor)


def _token_index(token: str, pages: int) -> int | None:
    if token.startswith("tok") and token[3:].isdigit() and 0 < int(token[3:]) < pages:
        return int(token[3:])
    return None


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: ArxivServer

    def handle_error(self, request, client_address) -> None:
        # Clients that time out close their end; the late write failing is expected.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _QuietServer

    def do_GET(self) -> None:
        arrived = time.monotonic()
        split = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        request = Request(arrived, split.path, query, dict(self.headers.items()))
        reply = self.server.owner.answer(request)
        if reply.delay_s:
            time.sleep(reply.delay_s)
        if reply.disconnect:
            self.close_connection = True
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self._write_body(reply)

    def _write_body(self, reply: Reply) -> None:
        if not reply.chunk_delay_s:
            self.wfile.write(reply.body)
            return
        step = max(1, len(reply.body) // reply.chunks)
        for i in range(0, len(reply.body), step):
            self.wfile.write(reply.body[i : i + step])
            self.wfile.flush()
            time.sleep(reply.chunk_delay_s)

    def log_message(self, format: str, *args: object) -> None:
        pass
